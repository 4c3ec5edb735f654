"""The container lifecycle end to end on real Docker engines (one dockerd per simulated node).

Each "separate invocation" of the seed's plan is a separate `cvs-core` process here.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import cvs_core

pytestmark = pytest.mark.docker

PROVISION_LOG = "/var/tmp/cvs-provisioned"


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\nset -euo pipefail\n" + body)
    path.chmod(0o755)
    return path


def make_config(dc, tmp_path: Path, lifetime: str, *, image=None, script=None, env=None) -> Path:
    name_file = tmp_path / "name"
    if not name_file.exists():
        name_file.write_text(f"e2e_{uuid.uuid4().hex[:8]}")
    container = {
        "image": image or dc.IMAGE_WITH_SSHD,
        "name": name_file.read_text(),
        "lifetime": lifetime,
        "setup_script": str(
            script or write_script(tmp_path / "setup.sh", f"echo provisioned >> {PROVISION_LOG}\n")
        ),
        "runtime": {
            "defaults": False,
            "args": {"network": "host", "volumes": [f"{dc.node_share}:{dc.node_share}"]},
        },
    }
    if env:
        container["env"] = env
    cfg = {
        "node_dict": {h: {} for h in dc.hosts},
        "username": dc.user,
        "priv_key_file": str(dc.key),
        "orchestrator": "container",
        "container": container,
    }
    path = tmp_path / f"cluster-{lifetime}.json"
    path.write_text(json.dumps(cfg))
    return path


def cli(dc, cfg: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """One separate `cvs-core` invocation."""
    cmd = [
        sys.executable, "-m", "cvs_core", args[0], "--cluster-file", str(cfg),
        "--ssh-config", str(dc.ssh_config), "--json", *args[1:],
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def report(proc: subprocess.CompletedProcess):
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON from cvs-core: {proc.stdout}\n{proc.stderr}") from None


def containers(dc, i: int, name: str) -> list[str]:
    out = dc.docker(i, "ps", "-a", "--filter", f"name=^{name}$", "--format", "{{.ID}} {{.State}}")
    return out.stdout.split("\n")[:-1] if out.stdout else []


def inspect(dc, i: int, name: str) -> dict:
    out = dc.docker(i, "inspect", name)
    return json.loads(out.stdout)[0]


def in_container(dc, i: int, name: str, cmd: str) -> str:
    return dc.docker(i, "exec", name, "sh", "-c", cmd, check=False).stdout


def banner(host: str, port: int = 2224) -> bytes:
    with socket.create_connection((host, port), timeout=3) as s:
        s.settimeout(3)
        return s.recv(8)


def test_per_run_up_exec_down(docker_cluster, tmp_path, config_name) -> None:
    dc = docker_cluster
    cfg = make_config(dc, tmp_path, "per_run")
    name = (tmp_path / "name").read_text()
    up = cli(dc, cfg, "up", "--pull", "never")
    assert up.returncode == 0, up.stdout + up.stderr
    setup, sshd = report(up)
    assert setup["kind"] == "launch" and setup["ok"]
    assert [h["action"] for h in setup["hosts"]] == ["launch"] * len(dc.hosts)
    assert sshd["ok"]
    for i, h in enumerate(dc.hosts):
        labels = inspect(dc, i, name)["Config"]["Labels"]
        assert labels["cvs.lifetime"] == "per_run"
        assert labels["cvs.config-hash"] == setup["hosts"][i]["config_hash"]
        assert in_container(dc, i, name, f"cat {PROVISION_LOG}") == "provisioned\n"
        assert banner(h).startswith(b"SSH-2.0")
    # A second per_run up replaces the containers (a fresh environment every run).
    again = cli(dc, cfg, "up", "--pull", "never", "--inline-provision")
    assert again.returncode == 0, again.stdout + again.stderr
    setup2 = report(again)[0]
    assert [h["action"] for h in setup2["hosts"]] == ["recreate"] * len(dc.hosts)
    for i, h in enumerate(setup2["hosts"]):
        assert h["container_id"] != setup["hosts"][i]["container_id"]
        # base64-inline delivery (CVS's form) provisioned the fresh container too
        assert in_container(dc, i, name, f"cat {PROVISION_LOG}") == "provisioned\n"
    ex = cli(dc, cfg, "exec", "hostname")
    assert ex.returncode == 0, ex.stderr
    assert sorted(r["stdout"].strip() for r in json.loads(ex.stdout)) == [
        f"node{i + 1}" for i in range(len(dc.hosts))
    ]
    down = cli(dc, cfg, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    for i in range(len(dc.hosts)):
        assert containers(dc, i, name) == []


def test_per_run_provisioning_failure_names_the_node(docker_cluster, tmp_path, config_name) -> None:
    dc = docker_cluster
    script = write_script(
        tmp_path / "fail.sh",
        'if [ "$(hostname)" = node2 ]; then echo "no disk on $(hostname)" >&2; exit 3; fi\n',
    )
    cfg = make_config(dc, tmp_path, "per_run", script=script)
    name = (tmp_path / "name").read_text()
    up = cli(dc, cfg, "up", "--pull", "never")
    assert up.returncode == 1
    (setup,) = report(up)
    assert setup["kind"] == "provision_failed"
    assert dc.hosts[1] in setup["message"]
    bad = setup["hosts"][1]
    assert not bad["ok"] and "no disk on node2" in bad["output"]
    assert "exit code 3" in bad["detail"]
    assert all(h["ok"] for i, h in enumerate(setup["hosts"]) if i != 1)
    for i in range(len(dc.hosts)):
        assert containers(dc, i, name) == []  # what this run created is removed


def test_persistent_cold_start_without_sshd_then_attach(docker_cluster, tmp_path, config_name):
    dc = docker_cluster
    script = write_script(
        tmp_path / "install-sshd.sh",
        f"echo provisioned >> {PROVISION_LOG}\n"
        f"bash {dc.node_share}/install_sshd_from_bundle.sh {dc.sshd_bundle_in_node}\n",
    )
    cfg = make_config(dc, tmp_path, "persistent", image=dc.IMAGE_NO_SSHD, script=script)
    name = (tmp_path / "name").read_text()
    up = cli(dc, cfg, "up", "--pull", "never")
    assert up.returncode == 0, up.stdout + up.stderr
    setup, sshd = report(up)
    assert setup["kind"] == "launch"
    assert [h["action"] for h in sshd["hosts"]] == ["start"] * len(dc.hosts)
    first = {}
    for i, h in enumerate(dc.hosts):
        assert banner(h).startswith(b"SSH-2.0")
        info = inspect(dc, i, name)
        first[h] = (info["Id"], info["State"]["StartedAt"])
        in_container(dc, i, name, "echo kept > /var/tmp/marker")
    sshd_pids = [in_container(dc, i, name, "pgrep -of '[s]shd -p 2224'") for i in range(3)]
    # The SSH user's own keys were copied in: log in to the container's sshd on :2224.
    for h in dc.hosts:
        login = subprocess.run(
            ["ssh", "-F", str(dc.ssh_config), "-p", "2224", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", h, f"cat {PROVISION_LOG}"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert login.stdout == "provisioned\n", login.stderr

    again = cli(dc, cfg, "up", "--pull", "never")
    assert again.returncode == 0, again.stdout + again.stderr
    setup2, sshd2 = report(again)
    assert setup2["kind"] == "attach"
    assert [h["action"] for h in setup2["hosts"]] == ["attach"] * len(dc.hosts)
    assert [h["action"] for h in sshd2["hosts"]] == ["skip"] * len(dc.hosts)
    for i, h in enumerate(dc.hosts):
        info = inspect(dc, i, name)
        assert (info["Id"], info["State"]["StartedAt"]) == first[h]
        assert in_container(dc, i, name, f"cat {PROVISION_LOG}") == "provisioned\n"
        assert in_container(dc, i, name, "cat /var/tmp/marker") == "kept\n"
    assert [in_container(dc, i, name, "pgrep -of '[s]shd -p 2224'") for i in range(3)] == sshd_pids

    down = cli(dc, cfg, "down")
    assert down.returncode == 0 and report(down)["kind"] == "kept"
    for i in range(len(dc.hosts)):
        assert containers(dc, i, name)[0].endswith("running")


def test_no_launch_verifies_and_never_removes(docker_cluster, tmp_path, config_name) -> None:
    dc = docker_cluster
    cfg = make_config(dc, tmp_path, "no_launch")
    name = (tmp_path / "name").read_text()
    up = cli(dc, cfg, "up", "--pull", "never")
    assert up.returncode == 1
    setup = report(up)[0]
    assert setup["kind"] == "verify_failed"
    for h in dc.hosts:
        assert h in setup["message"]
    for i in range(len(dc.hosts)):
        assert containers(dc, i, name) == []
    for i in range(len(dc.hosts)):
        dc.docker(i, "run", "-d", "--pull", "never", "--network", "host", "--name", name,
                  dc.IMAGE_WITH_SSHD, "sleep", "infinity")  # fmt: skip
    up = cli(dc, cfg, "up", "--pull", "never")
    assert report(up)[0]["kind"] == "verify_ok", up.stdout
    down = cli(dc, cfg, "down")
    assert report(down)["kind"] == "kept"
    for i in range(len(dc.hosts)):
        assert containers(dc, i, name)[0].endswith("running")


@pytest.fixture
def persistent(docker_cluster, tmp_path, config_name):
    """A persistent container running on every node, with a marker in each overlay."""
    dc = docker_cluster
    cfg = make_config(dc, tmp_path, "persistent")
    name = (tmp_path / "name").read_text()
    up = cli(dc, cfg, "up", "--pull", "never")
    assert up.returncode == 0, up.stdout + up.stderr
    for i in range(len(dc.hosts)):
        in_container(dc, i, name, "echo kept > /var/tmp/marker")
    return cfg, name


def assert_intact(dc, name: str, skip: int | None = None) -> None:
    for i in range(len(dc.hosts)):
        if i != skip:
            assert in_container(dc, i, name, "cat /var/tmp/marker") == "kept\n"


def test_partial_is_refused_and_nothing_removed(docker_cluster, persistent) -> None:
    dc = docker_cluster
    cfg, name = persistent
    dc.docker(2, "rm", "-f", name)
    up = cli(dc, cfg, "up", "--pull", "never")
    assert up.returncode == 1
    setup = report(up)[0]
    assert setup["kind"] == "refuse_partial"
    assert dc.hosts[2] in setup["message"]
    assert_intact(dc, name, skip=2)
    assert containers(dc, 2, name) == []


def test_probe_failure_is_refused_and_nothing_removed(docker_cluster, persistent) -> None:
    dc = docker_cluster
    cfg, name = persistent
    dc.stop_sshd(1)
    try:
        up = cli(dc, cfg, "up", "--pull", "never", "--connect-timeout", "3")
        assert up.returncode == 1
        setup = report(up)[0]
        assert setup["kind"] in ("refuse_probe_failed", "lock_failed")
        assert dc.hosts[1] in setup["message"]
    finally:
        dc.start_sshd(1)
    assert_intact(dc, name)


def test_drift_is_refused_unless_recreate(docker_cluster, persistent, tmp_path) -> None:
    dc = docker_cluster
    cfg_path, name = persistent
    cfg = json.loads(cfg_path.read_text())
    cfg["container"]["env"] = {"CHANGED": "1"}
    cfg_path.write_text(json.dumps(cfg))
    up = cli(dc, cfg_path, "up", "--pull", "never")
    assert up.returncode == 1
    setup = report(up)[0]
    assert setup["kind"] == "refuse_drift"
    assert all("config hash" in h["detail"] for h in setup["hosts"])
    assert_intact(dc, name)
    up = cli(dc, cfg_path, "up", "--pull", "never", "--recreate")
    assert up.returncode == 0, up.stdout + up.stderr
    assert [h["action"] for h in report(up)[0]["hosts"]] == ["recreate"] * len(dc.hosts)
    assert in_container(dc, 0, name, "echo $CHANGED") == "1\n"


def test_image_skew_before_cold_start_is_refused(docker_cluster, tmp_path, config_name) -> None:
    dc = docker_cluster
    tag = f"cvs-test/skew:{uuid.uuid4().hex[:6]}"
    for i in range(len(dc.hosts)):
        src = dc.IMAGE_NO_SSHD if i == 1 else dc.IMAGE_WITH_SSHD
        dc.docker(i, "tag", src, tag)
    try:
        cfg = make_config(dc, tmp_path, "persistent", image=tag)
        up = cli(dc, cfg, "up", "--pull", "never")
        assert up.returncode == 1
        setup = report(up)[0]
        assert setup["kind"] == "refuse_image_skew"
        name = (tmp_path / "name").read_text()
        for i in range(len(dc.hosts)):
            assert containers(dc, i, name) == []
    finally:
        for i in range(len(dc.hosts)):
            dc.docker(i, "rmi", tag, check=False)


def test_concurrent_up_makes_one_container_per_node(docker_cluster, persistent) -> None:
    dc = docker_cluster
    cfg, name = persistent
    results: list[subprocess.CompletedProcess] = []

    def run() -> None:
        results.append(cli(dc, cfg, "up", "--pull", "never"))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0], [r.stdout for r in results]
    for i in range(len(dc.hosts)):
        assert len(containers(dc, i, name)) == 1
    assert_intact(dc, name)


def test_concurrent_cold_start_is_serialized(docker_cluster, tmp_path, config_name) -> None:
    dc = docker_cluster
    cfg = make_config(dc, tmp_path, "persistent")
    name = (tmp_path / "name").read_text()
    results: list[subprocess.CompletedProcess] = []
    threads = [
        threading.Thread(target=lambda: results.append(cli(dc, cfg, "up", "--pull", "never")))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.returncode for r in results) == [0, 0], [r.stdout for r in results]
    kinds = sorted(report(r)[0]["kind"] for r in results)
    assert kinds == ["attach", "launch"]
    for i in range(len(dc.hosts)):
        assert len(containers(dc, i, name)) == 1
        assert in_container(dc, i, name, f"cat {PROVISION_LOG}") == "provisioned\n"


def test_partitioned_node_is_named_within_the_connect_timeout(
    docker_cluster, tmp_path, config_name
) -> None:
    dc = docker_cluster
    cfg = make_config(dc, tmp_path, "per_run")
    dc.partition(2)
    try:
        started = time.monotonic()
        up = cli(dc, cfg, "up", "--pull", "never", "--connect-timeout", "3")
        elapsed = time.monotonic() - started
    finally:
        dc.heal(2)
    assert up.returncode == 1
    setup = report(up)[0]
    assert dc.hosts[2] in setup["message"]
    assert elapsed < 30


def test_status_and_plan_change_nothing(docker_cluster, persistent) -> None:
    dc = docker_cluster
    cfg, name = persistent
    before = [inspect(dc, i, name)["Id"] for i in range(len(dc.hosts))]
    plan = report(cli(dc, cfg, "plan"))
    assert plan["kind"] == "attach" and plan["ok"]
    assert all(h["action"] == "attach" for h in plan["hosts"])
    status = report(cli(dc, cfg, "status"))
    assert status["ok"]
    for i, h in enumerate(status["hosts"]):
        assert h["running"] and h["container_id"] == before[i]
        assert h["started_at"] and h["sshd_up"]
    assert [inspect(dc, i, name)["Id"] for i in range(len(dc.hosts))] == before


def test_one_set_of_persistent_connections_serves_every_command(
    docker_cluster, tmp_path, config_name
) -> None:
    """With --persist, `up`, `exec`, `status` and `down` (four processes; `up` holds the
    per-node lock over its connection) share one master per node; `disconnect` ends them."""
    import shutil
    import tempfile

    dc = docker_cluster
    cfg = make_config(dc, tmp_path, "per_run")
    cdir = tempfile.mkdtemp(prefix="cve-", dir="/tmp")
    persist = ["--persist", "5m", "--control-dir", cdir]

    def masters() -> list[int]:
        out = subprocess.run(["pgrep", "-f", "--", f"-M .*-S {cdir}/"], capture_output=True)
        return sorted(int(p) for p in out.stdout.split())

    try:
        up = cli(dc, cfg, "up", "--pull", "never", *persist)
        assert up.returncode == 0, up.stdout + up.stderr
        first = masters()
        assert len(first) == len(dc.hosts)
        ex = cli(dc, cfg, "exec", "hostname", *persist)
        assert ex.returncode == 0, ex.stderr
        assert len(json.loads(ex.stdout)) == len(dc.hosts)
        assert report(cli(dc, cfg, "status", *persist))["ok"]
        down = cli(dc, cfg, "down", *persist)
        assert down.returncode == 0, down.stdout + down.stderr
        assert masters() == first, "a command made connections of its own"
        gone = subprocess.run(
            [sys.executable, "-m", "cvs_core", "disconnect", str(cfg), "--control-dir", cdir],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert gone.returncode == 0, gone.stderr
        assert f"ended {len(dc.hosts)} persistent connections" in gone.stdout
        deadline = time.monotonic() + 5
        while masters() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert masters() == []
    finally:
        cvs_core.disconnect_all(control_dir=cdir)
        shutil.rmtree(cdir, ignore_errors=True)


def test_python_api_drives_the_same_lifecycle(docker_cluster, tmp_path, config_name) -> None:
    dc = docker_cluster
    cfg = cvs_core.load_config(str(make_config(dc, tmp_path, "per_run")))
    seen: list[tuple[str, str]] = []
    lc = cvs_core.ContainerLifecycle(cfg, ssh_config=dc.ssh_config, pull="never")
    try:
        rep = lc.setup(progress=lambda h, p: seen.append((h, p)))
        assert rep.ok and rep.kind == "launch"
        assert {p for _, p in seen} >= {"lock", "launch", "provision"}  # lock carries the probe
        res = lc.exec("cat /proc/1/cmdline | tr '\\0' ' '")
        assert res.ok and all(r.stdout.startswith("sleep infinity") for r in res)
        assert lc.teardown().ok
    finally:
        lc.cluster.close()


def test_down_orphans_removes_crashed_per_run_containers_only(
    docker_cluster, tmp_path, config_name
) -> None:
    dc = docker_cluster
    keep = make_config(dc, tmp_path, "persistent")
    kept = (tmp_path / "name").read_text()
    assert cli(dc, keep, "up", "--pull", "never").returncode == 0
    crashed = []
    for k in range(2):
        d = tmp_path / f"crashed{k}"
        d.mkdir()
        cfg = make_config(dc, d, "per_run")
        # Each run's sshd needs its own port: all of them share the nodes' network (host).
        up = cli(dc, cfg, "up", "--pull", "never", "--sshd-port", str(2231 + k))
        assert up.returncode == 0, up.stdout + up.stderr  # and never `down`
        crashed.append((d / "name").read_text())
    for i in range(len(dc.hosts)):
        for name in crashed:
            assert containers(dc, i, name)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    down = cli(dc, make_config(dc, fresh, "per_run"), "down", "--orphans")
    assert down.returncode == 0, down.stdout + down.stderr
    assert all("orphan" in h["detail"] for h in report(down)["hosts"])
    for i in range(len(dc.hosts)):
        for name in crashed:
            assert containers(dc, i, name) == []
        assert containers(dc, i, kept)[0].endswith("running")


def test_explicit_device_must_exist_on_every_host(docker_cluster, tmp_path, config_name) -> None:
    dc = docker_cluster
    cfg_path = make_config(dc, tmp_path, "per_run")
    cfg = json.loads(cfg_path.read_text())
    cfg["container"]["runtime"]["args"]["devices"] = ["/dev/cvs-no-such-gpu"]
    cfg_path.write_text(json.dumps(cfg))
    up = cli(dc, cfg_path, "up", "--pull", "never")
    assert up.returncode == 1
    setup = report(up)[0]
    assert "/dev/cvs-no-such-gpu" in setup["message"]
    assert dc.hosts[0] in setup["message"]
    name = (tmp_path / "name").read_text()
    for i in range(len(dc.hosts)):
        assert containers(dc, i, name) == []


def test_image_tar_is_loaded_where_the_image_is_missing(
    docker_cluster, tmp_path, config_name
) -> None:
    dc = docker_cluster
    tag = f"cvs-test/from-tar:{uuid.uuid4().hex[:6]}"
    tar_name = f"img-{uuid.uuid4().hex[:6]}.tar"
    dc.docker(0, "tag", dc.IMAGE_WITH_SSHD, tag)
    dc.docker(0, "save", "-o", str(dc.workdir / tar_name), tag)
    try:
        cfg_path = make_config(dc, tmp_path, "per_run", image=tag)
        cfg = json.loads(cfg_path.read_text())
        cfg["container"]["image_tar"] = f"{dc.node_share}/{tar_name}"
        cfg_path.write_text(json.dumps(cfg))
        up = cli(dc, cfg_path, "up", "--pull", "never")
        assert up.returncode == 0, up.stdout + up.stderr
        ids = {dc.image_id(i, tag) for i in range(len(dc.hosts))}
        assert len(ids) == 1 and "" not in ids
        assert cli(dc, cfg_path, "down").returncode == 0
    finally:
        (dc.workdir / tar_name).unlink(missing_ok=True)
        for i in range(len(dc.hosts)):
            dc.docker(i, "rmi", "-f", tag, check=False)


def test_running_image_skew_is_refused_and_nothing_removed(docker_cluster, persistent) -> None:
    dc = docker_cluster
    cfg, name = persistent
    # Node 3's container now runs another image under the same tag (re-created by hand).
    try:
        dc.docker(2, "rm", "-f", name)
        dc.docker(2, "tag", dc.IMAGE_NO_SSHD, dc.IMAGE_WITH_SSHD)
        dc.docker(2, "run", "-d", "--pull", "never", "--network", "host", "--name", name,
                  dc.IMAGE_WITH_SSHD, "sleep", "infinity")  # fmt: skip
        in_container(dc, 2, name, "echo kept > /var/tmp/marker")
        up = cli(dc, cfg, "up", "--pull", "never")
        assert up.returncode == 1
        setup = report(up)[0]
        assert setup["kind"] == "refuse_image_skew", setup["message"]
        assert "different images" in setup["message"]
        assert_intact(dc, name)
    finally:
        dc.docker(2, "rm", "-f", name, check=False)
        dc.reset_images(2)


def test_stopped_persistent_container_is_started_not_called_running(
    docker_cluster, persistent
) -> None:
    dc = docker_cluster
    cfg, name = persistent
    ids = [inspect(dc, i, name)["Id"] for i in range(len(dc.hosts))]
    for i in range(len(dc.hosts)):
        dc.docker(i, "stop", "-t", "1", name)
    up = cli(dc, cfg, "up", "--pull", "never")
    assert up.returncode == 0, up.stdout + up.stderr
    setup, sshd = report(up)
    assert setup["kind"] == "attach"
    assert "running on all" not in setup["message"], setup["message"]
    assert "starting it on" in setup["message"]
    assert [h["action"] for h in setup["hosts"]] == ["start"] * len(dc.hosts)
    # The report names each container by its ID (not by the name `docker start` prints).
    assert [h["container_id"] for h in setup["hosts"]] == ids
    assert sshd["ok"]
    assert_intact(dc, name)
