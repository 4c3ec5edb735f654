"""Smoke tests of the multi-node Docker harness itself: if these fail, end-to-end container
tests built on it cannot be trusted."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest
from harness.docker_cluster import (
    IMAGE_NO_SSHD,
    IMAGE_WITH_SSHD,
    INSTALL_SSHD_IN_NODE,
    NODE_SHARE,
    ClusterBusy,
    DockerCluster,
)

pytestmark = pytest.mark.docker

# Explicit run arguments that work on the harness nodes (no GPU devices, no memlock=-1).
RUN = ["run", "--pull", "never", "--network", "host"]


def _name(tag: str) -> str:
    return f"e2e-{tag}-{uuid.uuid4().hex[:8]}"


def _ssh_until(cluster: DockerCluster, i: int, ok: bool, within: float) -> float:
    """Seconds until ssh to node i succeeds (ok=True) or fails (ok=False); fails the test if
    that does not happen within `within` seconds."""
    t0 = time.monotonic()
    while True:
        try:
            r = cluster.ssh(i, "hostname", options=("-o", "ConnectTimeout=2"), timeout=10)
            succeeded = r.returncode == 0
        except subprocess.TimeoutExpired:
            succeeded = False
        elapsed = time.monotonic() - t0
        if succeeded == ok:
            return elapsed
        if elapsed > within:
            state = "succeed" if ok else "fail"
            pytest.fail(f"ssh to {cluster.names[i]} did not {state} within {within}s")
        time.sleep(0.2)


def test_every_node_answers_ssh_with_its_own_hostname(docker_cluster: DockerCluster) -> None:
    seen = []
    for i, name in enumerate(docker_cluster.names):
        r = docker_cluster.ssh(i, 'echo "$(hostname) $CVS_NODE $(id -un)"', timeout=30)
        assert r.returncode == 0, r.stderr
        seen.append(r.stdout.split())
        assert r.stdout.split() == [name, name, "root"]
    assert len({s[0] for s in seen}) == docker_cluster.n


def test_host_keys_are_checked_strictly(docker_cluster: DockerCluster, tmp_path: Path) -> None:
    # The generated known_hosts is what makes the connection work: with an empty one, strict
    # checking refuses every node.
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    r = docker_cluster.ssh(0, "true", options=("-o", f"UserKnownHostsFile={empty}"), timeout=30)
    assert r.returncode == 255
    assert "host key" in r.stderr.lower()
    lines = docker_cluster.known_hosts.read_text().splitlines()
    for name, ip in zip(docker_cluster.names, docker_cluster.hosts):
        assert any(line.startswith(f"{name},{ip} ssh-ed25519 ") for line in lines)
    assert any(line.startswith("@cert-authority ") for line in lines)


def test_sudo_docker_works_over_ssh_on_every_node(docker_cluster: DockerCluster) -> None:
    for i, name in enumerate(docker_cluster.names):
        r = docker_cluster.ssh(
            i,
            "sudo -n true && sudo docker info --format '{{.Name}} {{.ServerVersion}}'",
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        daemon_name, version = r.stdout.split()
        assert daemon_name == name  # each node talks to its OWN engine
        assert version


def test_both_images_exist_on_every_node_with_the_same_ids(docker_cluster: DockerCluster) -> None:
    for tag in (IMAGE_WITH_SSHD, IMAGE_NO_SSHD):
        ids = {docker_cluster.image_id(i, tag) for i in range(docker_cluster.n)}
        assert len(ids) == 1, f"{tag} differs across nodes: {ids}"
        assert ids == {docker_cluster.image_ids[tag]}
        r = docker_cluster.ssh(1, f"sudo docker image inspect --format '{{{{.Id}}}}' {tag}")
        assert r.stdout.strip() in ids
    # only the with-sshd image has sshd
    for tag, has in ((IMAGE_WITH_SSHD, True), (IMAGE_NO_SSHD, False)):
        r = docker_cluster.docker(
            0, *RUN, "--rm", tag, "sh", "-c", "test -x /usr/sbin/sshd", check=False
        )
        assert (r.returncode == 0) == has, r.stderr


def test_privileged_host_network_container_is_only_on_its_node(
    docker_cluster: DockerCluster,
) -> None:
    name = _name("priv")
    docker_cluster.docker(
        1, *RUN, "-d", "--privileged", "--name", name, IMAGE_WITH_SSHD, "sleep", "infinity"
    )
    try:
        ps = docker_cluster.docker(1, "ps", "--format", "{{.Names}}").stdout.split()
        assert name in ps
        for other in (0, 2):
            assert (
                name
                not in docker_cluster.docker(
                    other, "ps", "-a", "--format", "{{.Names}}"
                ).stdout.split()
            )
        # visible through the node's own default socket over ssh as well
        r = docker_cluster.ssh(1, "sudo docker ps --format '{{.Names}}'")
        assert name in r.stdout.split()
        # --network host: the container is in the node's network namespace (and UTS)
        r = docker_cluster.docker(1, "exec", name, "sh", "-c", "hostname; ip -4 -o addr show")
        assert r.stdout.splitlines()[0] == docker_cluster.names[1]
        assert f" {docker_cluster.hosts[1]}/24 " in r.stdout
        # privileged really is privileged (capfilter only drops what the node lacks itself)
        r = docker_cluster.docker(
            1, "exec", name, "sh", "-c", "mkdir -p /tmp/m && mount -t tmpfs t /tmp/m && echo ok"
        )
        assert r.stdout.strip() == "ok"
    finally:
        docker_cluster.docker(1, "rm", "-f", name, check=False)


def test_memlock_unlimited_behaves_as_documented(docker_cluster: DockerCluster) -> None:
    """`--ulimit memlock=-1` needs CAP_SYS_RESOURCE, which this machine's kernel withholds;
    a bounded memlock within the node's hard limit works. (If the capability exists, -1 works.)"""
    bnd = int(
        next(
            line.split()[1]
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("CapBnd:")
        ),
        16,
    )
    has_sys_resource = bool(bnd & (1 << 24))
    r = docker_cluster.docker(
        0, *RUN, "--rm", "--ulimit", "memlock=-1", IMAGE_NO_SSHD, "true", check=False
    )
    assert (r.returncode == 0) == has_sys_resource, r.stderr
    if not has_sys_resource:
        assert "rlimit" in r.stderr
    r = docker_cluster.docker(
        0,
        *RUN,
        "--rm",
        "--ulimit",
        "memlock=1048576:1048576",
        IMAGE_NO_SSHD,
        "sh",
        "-c",
        "ulimit -l",
    )
    assert r.stdout.strip() == "1024"


def test_container_port_is_per_node(docker_cluster: DockerCluster) -> None:
    """Two --network host containers on different nodes both listen on 2224 without a clash,
    and host:2224 reaches the container on that host (host key vouched for by the harness CA,
    client key accepted through /run/cvs/ssh/authorized_keys)."""
    name = _name("port")
    started = []
    try:
        for i in (0, 1):
            docker_cluster.docker(
                i,
                *RUN,
                "-d",
                "--name",
                name,
                "-v",
                f"{NODE_SHARE}:{NODE_SHARE}:ro",
                IMAGE_WITH_SSHD,
                "sh",
                "-c",
                "/usr/sbin/sshd -p 2224 && exec sleep infinity",
            )
            started.append(i)
        for i in (0, 1):
            r = _retry_ssh(docker_cluster, i, 2224, "echo $(hostname) $(cat /proc/1/cmdline)")
            assert r.stdout.split()[0] == docker_cluster.names[i]
            assert "sleep" in r.stdout  # PID 1 of the container's PID namespace, not the node's
    finally:
        for i in started:
            docker_cluster.docker(i, "rm", "-f", name, check=False)


def _retry_ssh(cluster: DockerCluster, i: int, port: int, cmd: str, within: float = 10):
    deadline = time.monotonic() + within
    while True:
        r = cluster.ssh(i, cmd, options=("-p", str(port), "-o", "ConnectTimeout=2"), timeout=15)
        if r.returncode == 0 or time.monotonic() > deadline:
            assert r.returncode == 0, r.stderr
            return r
        time.sleep(0.2)


def test_partition_cuts_a_node_and_heal_restores_it(docker_cluster: DockerCluster) -> None:
    i = 2
    _ssh_until(docker_cluster, i, ok=True, within=5)
    docker_cluster.partition(i)
    try:
        t0 = time.monotonic()
        r = docker_cluster.ssh(i, "true", options=("-o", "ConnectTimeout=3"), timeout=20)
        assert r.returncode == 255
        assert time.monotonic() - t0 < 8
        # the other nodes are unaffected, and the partitioned engine is still reachable
        assert docker_cluster.ssh(0, "true", timeout=30).returncode == 0
        docker_cluster.docker(i, "version", "--format", "{{.Server.Version}}")
        # node-to-node too: node 0 cannot reach node i
        r = docker_cluster.ssh(
            0, f"ssh -o ConnectTimeout=2 {docker_cluster.names[i]} true", timeout=20
        )
        assert r.returncode == 255
    finally:
        docker_cluster.heal(i)
    assert _ssh_until(docker_cluster, i, ok=True, within=10) < 10


def test_stop_sshd_and_start_sshd(docker_cluster: DockerCluster) -> None:
    i = 0
    docker_cluster.stop_sshd(i)
    try:
        r = docker_cluster.ssh(i, "true", options=("-o", "ConnectTimeout=3"), timeout=20)
        assert r.returncode == 255
        assert "refused" in r.stderr.lower()
        # the node itself is up: its engine still answers
        docker_cluster.docker(i, "info", "--format", "{{.Name}}")
        docker_cluster.stop_sshd(i)  # idempotent
    finally:
        docker_cluster.start_sshd(i)
    _ssh_until(docker_cluster, i, ok=True, within=5)
    docker_cluster.start_sshd(i)  # no-op while it runs
    r = docker_cluster.ssh(i, "hostname", timeout=30)
    assert r.stdout.strip() == docker_cluster.names[i]


def test_sshd_bundle_installs_sshd_in_a_no_sshd_container(docker_cluster: DockerCluster) -> None:
    i, port = 1, 2299
    name = _name("bundle")
    assert docker_cluster.sshd_bundle.is_file()
    docker_cluster.docker(
        i,
        *RUN,
        "-d",
        "--name",
        name,
        "-v",
        f"{NODE_SHARE}:{NODE_SHARE}:ro",
        IMAGE_NO_SSHD,
        "sleep",
        "infinity",
    )
    try:
        r = docker_cluster.docker(
            i, "exec", name, "sh", "-c", "test ! -e /usr/sbin/sshd", check=False
        )
        assert r.returncode == 0, "the no-sshd image has sshd"
        r = docker_cluster.docker(i, "exec", name, "sh", INSTALL_SSHD_IN_NODE)
        assert "sshd installed" in r.stdout
        docker_cluster.docker(i, "exec", name, "/usr/sbin/sshd", "-p", str(port))
        r = _retry_ssh(docker_cluster, i, port, "test -x /usr/sbin/sshd && hostname")
        assert r.stdout.strip() == docker_cluster.names[i]
        # installing again changes nothing (never overwrites)
        r = docker_cluster.docker(i, "exec", name, "sh", INSTALL_SSHD_IN_NODE)
        assert "0 files added" in r.stdout
    finally:
        docker_cluster.docker(i, "rm", "-f", name, check=False)


def test_import_image_skews_one_node_and_reset_restores(docker_cluster: DockerCluster) -> None:
    i = 2
    original = docker_cluster.image_ids[IMAGE_WITH_SSHD]
    try:
        new_id = docker_cluster.import_image(i, docker_cluster.variant_tar, IMAGE_WITH_SSHD)
        assert new_id != original
        assert docker_cluster.image_id(i, IMAGE_WITH_SSHD) == new_id
        assert docker_cluster.image_id(0, IMAGE_WITH_SSHD) == original
        r = docker_cluster.docker(i, *RUN, "--rm", IMAGE_WITH_SSHD, "cat", "/etc/cvs-variant")
        assert "variant" in r.stdout
    finally:
        docker_cluster.reset_images(i)
    assert docker_cluster.image_id(i, IMAGE_WITH_SSHD) == original


def test_node_to_node_ssh_uses_the_nodes_own_config(docker_cluster: DockerCluster) -> None:
    r = docker_cluster.ssh(0, f"ssh {docker_cluster.names[1]} hostname", timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == docker_cluster.names[1]


def test_nodes_have_no_route_out(docker_cluster: DockerCluster) -> None:
    r = docker_cluster.ssh(0, "ip -4 route show default; ip -4 route get 1.1.1.1 2>&1 || true")
    assert r.returncode == 0
    assert "unreachable" in r.stdout.lower()
    assert "default" not in r.stdout


@pytest.mark.usefixtures("docker_harness_available")
def test_stop_removes_everything_and_is_idempotent(tmp_path: Path) -> None:
    """A second, one-node cluster on a free subnet: after stop() no namespace, bridge,
    process or cgroup of it is left, and stop() again is a no-op."""
    with DockerCluster(1, tmp_path / "c", subnet="auto", prefix="stoptest") as c:
        name = _name("stop")
        c.docker(0, *RUN, "-d", "--name", name, IMAGE_NO_SSHD, "sleep", "infinity")
        init = c.init_pid(0)
        assert c.ssh(0, "hostname").stdout.strip() == "stoptest1"
        cgroups = [p for p in Path("/sys/fs/cgroup").glob(f"*/{c.cgroups[0]}") if p.is_dir()]
        assert cgroups, "containers of the node are under its own cgroup parent"
        netns, bridge, veth = c.netns[0], c.bridge, c.veths[0]
        assert Path(f"/run/netns/{netns}").exists()
    assert not Path(f"/run/netns/{netns}").exists()
    assert not Path(f"/sys/class/net/{bridge}").exists()
    assert not Path(f"/sys/class/net/{veth}").exists()
    assert not Path(f"/proc/{init}").exists()
    assert not [p for p in cgroups if p.exists()]
    assert not (tmp_path / "c" / "state.json").exists()
    assert (tmp_path / "c" / "logs" / "stoptest1-dockerd.log").exists()
    c.stop()


@pytest.mark.usefixtures("docker_harness_available")
def test_a_busy_subnet_is_refused_and_auto_picks_another(
    docker_cluster: DockerCluster, tmp_path: Path
) -> None:
    """The session cluster is live (its owner, this process, runs): an explicit start on its
    subnet must refuse rather than take it over; 'auto' goes elsewhere."""
    other = DockerCluster(1, tmp_path / "busy", subnet=docker_cluster.subnet, prefix="busy")
    with pytest.raises(ClusterBusy):
        other.start()
    assert docker_cluster.ssh(0, "true", timeout=30).returncode == 0
    with DockerCluster(1, tmp_path / "auto", subnet="auto", prefix="node") as c:
        assert c.subnet != docker_cluster.subnet
        # same hostname as the session's node1, in its own UTS namespace
        assert c.ssh(0, "hostname").stdout.strip() == docker_cluster.names[0] == "node1"
    assert docker_cluster.ssh(0, "hostname", timeout=30).stdout.strip() == "node1"
