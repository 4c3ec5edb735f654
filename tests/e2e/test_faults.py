"""Interruptions and faults on real Docker engines (one dockerd per simulated node): a killed
run, Ctrl-C and SIGTERM (CLI and Python), in-container timeouts, a dockerd that dies or hangs, a
partitioned node, another container's sshd on the port. Each test checks the state left on the
nodes (containers, records, processes inside and outside the containers), not only the report.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from tests.e2e.test_lifecycle import (
    PROVISION_LOG,
    cli,
    containers,
    in_container,
    inspect,
    make_config,
    report,
    write_script,
)

pytestmark = pytest.mark.docker

STATE_FILE = "/var/lib/cvs-core/state"


def wait_until(pred, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def gated_script(dc, tmp_path: Path) -> tuple[Path, Path]:
    """A setup script that marks its start, then waits while a gate file exists (the nodes see
    the harness workdir at /run/cvs), then provisions. Returns (script, gate on this host)."""
    gate_name = f"prov-{uuid.uuid4().hex[:8]}"
    gate = dc.workdir / "gates" / gate_name
    gate.parent.mkdir(exist_ok=True)
    gate.touch()
    script = write_script(
        tmp_path / "gated.sh",
        "touch /var/tmp/started\n"
        f"while [ -e {dc.node_share}/gates/{gate_name} ]; do sleep 0.1; done\n"
        f"echo provisioned >> {PROVISION_LOG}\n",
    )
    return script, gate


def cvs_core_bg(dc, cfg: Path, *args: str) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "cvs_core", args[0], "--cluster-file", str(cfg),
        "--ssh-config", str(dc.ssh_config), "--json", *args[1:],
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def exist_everywhere(dc, name: str) -> bool:
    return all(containers(dc, i, name) for i in range(len(dc.hosts)))


def started_everywhere(dc, name: str) -> bool:
    return all(
        in_container(dc, i, name, "test -e /var/tmp/started && echo y") == "y\n"
        for i in range(len(dc.hosts))
    )


def close_launch_gates(dc, when: str) -> None:
    """For an interruption "during launch": every `docker run` will wait mid-start."""
    if when in ("launch", "after_launch"):
        for i in range(len(dc.hosts)):
            dc.gate_launch(i)


def reach(dc, name: str, when: str) -> None:
    """Wait until the run is mid-launch (containers created, not started) or provisioning
    (the setup script started everywhere)."""
    if when in ("launch", "after_launch"):
        wait_until(lambda: exist_everywhere(dc, name), "docker run to be mid-launch")
    else:
        wait_until(lambda: started_everywhere(dc, name), "the setup script to start")


def open_launch_gates(dc, when: str, interrupted: bool = False) -> None:
    """Let dockerd finish the held starts (a cleanup's `docker rm` waits for them). After an
    interruption, first wait until the interrupted `docker run` clients are killed, so the
    cleanup is what removes the containers, not a race with their start."""
    if when in ("launch", "after_launch"):
        if interrupted:
            wait_until(
                lambda: not any(node_procs(dc, i, "docker run -d") for i in range(len(dc.hosts))),
                "the interrupted docker run clients to be killed",
            )
        for i in range(len(dc.hosts)):
            dc.gate_launch(i, closed=False)


def live_procs_in(dc, i: int, name: str, pattern: str) -> list[str]:
    """Non-zombie processes in the container whose command line contains `pattern`."""
    out = in_container(dc, i, name, "ps -eo stat=,args=")
    return [line for line in out.splitlines() if pattern in line and not line.startswith("Z")]


def node_procs(dc, i: int, pattern: str) -> list[str]:
    """Processes on node i (outside its containers too) whose command line has `pattern`; the
    first character is bracketed so the search does not find itself."""
    bracketed = f"[{pattern[0]}]{pattern[1:]}"
    r = dc.ssh(i, f"pgrep -af {json.dumps(bracketed)}")
    return [line for line in r.stdout.splitlines() if line.strip()]


def record_of(dc, i: int, name: str) -> str:
    return in_container(dc, i, name, f"cat {STATE_FILE} 2>/dev/null")


def control_dirs_of(pid: int) -> list[str]:
    bases = {"/tmp", os.environ.get("XDG_RUNTIME_DIR") or "/tmp"}
    return [d for b in bases for d in glob.glob(f"{b}/cvs-core-{pid}-*")]


def processes_naming(text: str) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if text.encode() in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                pass
    return found


def assert_recovered(dc, cfg: Path, name: str, before: list[str]) -> None:
    """A later `up` replaces what the interrupted run left, with no manual docker command:
    one fresh, provisioned, recorded container per node."""
    up = cli(dc, cfg, "up", "--pull", "never", "--connect-timeout", "5")
    assert up.returncode == 0, up.stdout + up.stderr
    setup = report(up)[0]
    assert setup["kind"] == "launch", setup
    for i in range(len(dc.hosts)):
        assert len(containers(dc, i, name)) == 1
        info = inspect(dc, i, name)
        assert info["State"]["Running"]
        assert info["Id"] not in before
        assert record_of(dc, i, name).startswith("provisioned "), record_of(dc, i, name)
        assert in_container(dc, i, name, f"cat {PROVISION_LOG}") == "provisioned\n"


@pytest.fixture
def gates(docker_cluster):
    """Launch gates closed by a test are always opened again."""
    yield docker_cluster
    for i in range(len(docker_cluster.hosts)):
        docker_cluster.gate_launch(i, closed=False)


# -- a killed run -------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["after_launch", "during_provisioning"])
def test_killed_cold_start_is_recognised_and_replaced(gates, tmp_path, config_name, when) -> None:
    dc = gates
    script, gate = gated_script(dc, tmp_path)
    cfg = make_config(dc, tmp_path, "persistent", script=script)
    name = (tmp_path / "name").read_text()
    close_launch_gates(dc, when)
    proc = cvs_core_bg(dc, cfg, "up", "--pull", "never")
    reach(dc, name, when)
    proc.kill()  # SIGKILL: no cleanup of any kind can run
    proc.wait(30)
    open_launch_gates(dc, when)  # the orphaned `docker run`s complete on the nodes
    if when == "after_launch":
        wait_until(
            lambda: all(inspect(dc, i, name)["State"]["Running"] for i in range(len(dc.hosts))),
            "the containers to run",
        )
    before = [inspect(dc, i, name)["Id"] for i in range(len(dc.hosts))]
    for i in range(len(dc.hosts)):
        assert record_of(dc, i, name) == ""  # provisioning never recorded
    status = report(cli(dc, cfg, "status"))
    assert not status["ok"]
    assert all(h["unfinished"] for h in status["hosts"]), status
    assert all("never completed" in h["detail"] for h in status["hosts"])
    plan = report(cli(dc, cfg, "plan"))
    assert plan["kind"] == "launch", plan["message"]
    assert [h["action"] for h in plan["hosts"]] == ["recreate"] * len(dc.hosts)
    gate.unlink()  # the next run's provisioning goes straight through
    assert_recovered(dc, cfg, name, before)
    # Nothing of the killed process is left on this machine: its control directory and its
    # ssh masters were swept by the next run.
    assert control_dirs_of(proc.pid) == []
    assert processes_naming(f"cvs-core-{proc.pid}-") == []


def test_killed_record_round_is_attached_and_restored(docker_cluster, tmp_path, config_name):
    """The record is written only after the setup script succeeded on every host: one host
    without it next to hosts of the same run that have it completed provisioning."""
    dc = docker_cluster
    cfg = make_config(dc, tmp_path, "persistent")
    name = (tmp_path / "name").read_text()
    up = cli(dc, cfg, "up", "--pull", "never")
    assert up.returncode == 0, up.stdout + up.stderr
    before = [inspect(dc, i, name)["Id"] for i in range(len(dc.hosts))]
    in_container(dc, 1, name, f"rm {STATE_FILE}")
    plan = report(cli(dc, cfg, "plan"))
    assert plan["kind"] == "attach", plan
    assert "record is restored" in plan["hosts"][1]["detail"]
    again = cli(dc, cfg, "up", "--pull", "never")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [inspect(dc, i, name)["Id"] for i in range(len(dc.hosts))] == before
    assert record_of(dc, 1, name) == record_of(dc, 0, name) != ""


# -- Ctrl-C and SIGTERM ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "lifetime,when,sig",
    [
        ("per_run", "launch", signal.SIGINT),
        ("persistent", "provisioning", signal.SIGINT),
        ("persistent", "provisioning", signal.SIGTERM),
    ],
)
def test_cli_interrupt_stops_remote_work_and_removes_what_the_run_created(
    gates, tmp_path, config_name, lifetime, when, sig
) -> None:
    dc = gates
    script, gate = gated_script(dc, tmp_path)
    cfg = make_config(dc, tmp_path, lifetime, script=script)
    name = (tmp_path / "name").read_text()
    close_launch_gates(dc, when)
    proc = cvs_core_bg(dc, cfg, "up", "--pull", "never")
    reach(dc, name, when)
    if when == "launch":
        assert all(node_procs(dc, i, "docker run -d") for i in range(len(dc.hosts)))
    proc.send_signal(sig)
    open_launch_gates(dc, when, interrupted=True)  # dockerd finishes the start; cleanup removes it
    rc, out, err = finish(proc)
    assert rc == (130 if sig == signal.SIGINT else 143), out + err
    (setup,) = json.loads(out)
    assert setup["kind"] == "cancelled", setup
    assert f"during {when}" in setup["message"]
    assert "removed the 3 container(s) this run created" in setup["message"], setup["message"]
    if when == "provisioning":
        assert "remote work stopped on every host" in setup["message"]
        assert gate.exists()  # the script never got past its gate: it was stopped, not done
    for i in range(len(dc.hosts)):
        assert containers(dc, i, name) == []
        assert node_procs(dc, i, "docker exec") == []
        assert node_procs(dc, i, "docker run -d") == []
    assert control_dirs_of(proc.pid) == []


@pytest.mark.parametrize("when", ["launch", "provisioning"])
def test_python_keyboard_interrupt_returns_after_cleanup(gates, tmp_path, config_name, when):
    dc = gates
    script, _gate = gated_script(dc, tmp_path)
    cfg = make_config(dc, tmp_path, "persistent", script=script)
    name = (tmp_path / "name").read_text()
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            import cvs_core
            cfg = cvs_core.load_config({str(cfg)!r})
            lc = cvs_core.ContainerLifecycle(cfg, ssh_config={str(dc.ssh_config)!r},
                                             pull="never")
            try:
                rep = lc.setup()
                print(json.dumps({{"returned": rep.to_dict()}}), flush=True)
            except KeyboardInterrupt as exc:
                print(json.dumps({{"interrupted": exc.report.to_dict()}}), flush=True)
            finally:
                lc.cluster.close()
            """
        )
    )
    close_launch_gates(dc, when)
    proc = subprocess.Popen(
        [sys.executable, str(driver)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    reach(dc, name, when)
    proc.send_signal(signal.SIGINT)
    open_launch_gates(dc, when, interrupted=True)
    rc, out, err = finish(proc)
    assert rc == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert "interrupted" in got, got
    rep = got["interrupted"]
    assert rep["kind"] == "cancelled" and f"during {when}" in rep["message"], rep
    # When KeyboardInterrupt reached the caller, the work had stopped and nothing carries on.
    for i in range(len(dc.hosts)):
        assert containers(dc, i, name) == []
    time.sleep(2)
    for i in range(len(dc.hosts)):
        assert containers(dc, i, name) == []
        assert node_procs(dc, i, "docker exec") == []


# -- in-container timeouts and Ctrl-C --------------------------------------------------------


@pytest.fixture
def running(docker_cluster, tmp_path, config_name):
    dc = docker_cluster
    cfg = make_config(dc, tmp_path, "persistent")
    up = cli(dc, cfg, "up", "--pull", "never")
    assert up.returncode == 0, up.stdout + up.stderr
    return cfg, (tmp_path / "name").read_text()


def test_exec_timeout_kills_inside_the_container(docker_cluster, running) -> None:
    dc = docker_cluster
    cfg, name = running
    ex = cli(dc, cfg, "exec", "--timeout", "3", "sleep 120.5 & sleep 120.75; wait")
    assert ex.returncode == 1
    results = json.loads(ex.stdout)
    assert [r["status"] for r in results] == ["timeout"] * len(dc.hosts)
    assert all("remote processes killed" in r["error"] for r in results), results
    for i in range(len(dc.hosts)):
        assert live_procs_in(dc, i, name, "sleep 120.") == []
        assert node_procs(dc, i, "docker exec") == []


def test_exec_ctrl_c_kills_inside_the_container(docker_cluster, running) -> None:
    dc = docker_cluster
    cfg, name = running
    proc = cvs_core_bg(dc, cfg, "exec", "sleep 121.5")
    wait_until(
        lambda: all(live_procs_in(dc, i, name, "sleep 121.5") for i in range(len(dc.hosts))),
        "the command to run in every container",
    )
    proc.send_signal(signal.SIGINT)
    rc, _out, err = finish(proc, 60)
    assert rc == 130, err
    for i in range(len(dc.hosts)):
        assert live_procs_in(dc, i, name, "sleep 121.5") == []


def test_unreachable_kill_is_not_claimed(docker_cluster, running) -> None:
    dc = docker_cluster
    cfg, name = running
    proc = cvs_core_bg(dc, cfg, "exec", "--timeout", "4", "sleep 122.5")
    wait_until(
        lambda: all(live_procs_in(dc, i, name, "sleep 122.5") for i in range(len(dc.hosts))),
        "the command to run in every container",
    )
    dc.partition(2)
    try:
        rc, out, _err = finish(proc, 120)
        # Indeed not killed (checked through the node's engine, before the network heals and
        # anything queued could still arrive): the report did not claim what did not happen.
        still = live_procs_in(dc, 2, name, "sleep 122.5")
    finally:
        dc.heal(2)
        in_container(dc, 2, name, "pkill -f 'sleep 122.5'")
    assert rc == 1
    results = {r["host"]: r for r in json.loads(out)}
    cut = results[dc.hosts[2]]
    assert "kill not confirmed" in (cut["error"] or ""), cut
    assert "remote processes killed" not in (cut["error"] or "")
    assert still
    for i in range(2):
        assert "remote processes killed" in results[dc.hosts[i]]["error"]
        assert live_procs_in(dc, i, name, "sleep 122.5") == []


# -- a node lost mid-provisioning -------------------------------------------------------------


@pytest.mark.parametrize("fault", ["dockerd_killed", "partitioned"])
def test_node_lost_mid_provisioning_is_reported_and_recovered(
    docker_cluster, tmp_path, config_name, fault
) -> None:
    dc = docker_cluster
    script, gate = gated_script(dc, tmp_path)
    cfg = make_config(dc, tmp_path, "persistent", script=script)
    name = (tmp_path / "name").read_text()
    proc = cvs_core_bg(
        dc, cfg, "up", "--pull", "never", "--keepalive", "1", "--connect-timeout", "3"
    )
    wait_until(lambda: started_everywhere(dc, name), "the setup script to start")
    lost = 2
    before = [inspect(dc, i, name)["Id"] for i in range(len(dc.hosts))]
    try:
        if fault == "dockerd_killed":
            dc.kill_dockerd(lost)
        else:
            dc.partition(lost)
        gate.unlink()  # the healthy nodes finish their script
        rc, out, err = finish(proc)
        assert rc == 1, out + err
        (setup,) = json.loads(out)
        assert setup["kind"] == "provision_failed", setup
        assert "could not remove them on" in setup["message"], setup["message"]
        assert dc.hosts[lost] in setup["message"]
        bad = setup["hosts"][lost]
        assert not bad["ok"] and "could not remove the container this run created" in bad["detail"]
        for i in range(len(dc.hosts)):
            if i != lost:
                assert "removed the container this run created" in setup["hosts"][i]["detail"]
                assert containers(dc, i, name) == []
    finally:
        if fault == "dockerd_killed":
            dc.start_dockerd(lost)
        else:
            dc.heal(lost)
    # The lost node still holds the container this run could not remove: recorded unfinished.
    assert containers(dc, lost, name)
    status = report(cli(dc, cfg, "status"))
    assert status["hosts"][lost]["unfinished"], status
    assert_recovered(dc, cfg, name, before)


# -- the sshd port -------------------------------------------------------------------------


def login(dc, host: str, port: int, cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-F", str(dc.ssh_config), "-p", str(port), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", host, cmd],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_another_containers_sshd_is_not_taken_for_ours(docker_cluster, running, tmp_path):
    dc = docker_cluster
    _cfg1, first = running
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    cfg2 = make_config(dc, second_dir, "persistent")
    second = (second_dir / "name").read_text()
    try:
        for i in range(len(dc.hosts)):
            in_container(dc, i, first, "echo first > /var/tmp/who")
        up = cli(dc, cfg2, "up", "--pull", "never")
        assert up.returncode == 1, up.stdout
        setup, sshd = report(up)
        assert setup["ok"] and sshd["kind"] == "sshd_failed"
        for i, h in enumerate(sshd["hosts"]):
            holder = inspect(dc, i, first)["Id"][:12]
            assert not h["ok"]
            assert f"in container {holder}" in h["detail"], h["detail"]
            assert f"not by container '{second}'" in h["detail"]
        # The port still leads into the first user's container, untouched.
        for h in dc.hosts:
            assert login(dc, h, 2224, "cat /var/tmp/who").stdout == "first\n"
        # A port of its own (the sshd port is part of the configuration: recreate opts in).
        up = cli(dc, cfg2, "up", "--pull", "never", "--sshd-port", "2235", "--recreate")
        assert up.returncode == 0, up.stdout + up.stderr
        for i, h in enumerate(dc.hosts):
            in_container(dc, i, second, "echo second > /var/tmp/who")
            assert login(dc, h, 2235, "cat /var/tmp/who").stdout == "second\n"
            assert login(dc, h, 2224, "cat /var/tmp/who").stdout == "first\n"
    finally:
        for i in range(len(dc.hosts)):
            dc.docker(i, "rm", "-f", second, check=False)


# -- a hung dockerd ---------------------------------------------------------------------------


def test_hung_dockerd_is_reported_within_bounds(docker_cluster, running) -> None:
    dc = docker_cluster
    cfg, name = running
    for i in range(len(dc.hosts)):
        in_container(dc, i, name, "echo kept > /var/tmp/marker")
    dc.pause_dockerd(1)
    try:
        started = time.monotonic()
        up = cli(dc, cfg, "up", "--pull", "never")
        elapsed = time.monotonic() - started
        status = report(cli(dc, cfg, "status"))
    finally:
        dc.resume_dockerd(1)
    assert up.returncode == 1
    setup = report(up)[0]
    assert setup["kind"] == "refuse_probe_failed", setup
    assert dc.hosts[1] in setup["message"]
    assert "did not answer within 20s" in setup["hosts"][1]["detail"], setup["hosts"][1]
    assert elapsed < 60
    assert "did not answer within 20s" in status["hosts"][1]["detail"]
    for i in range(len(dc.hosts)):
        assert in_container(dc, i, name, "cat /var/tmp/marker") == "kept\n"
