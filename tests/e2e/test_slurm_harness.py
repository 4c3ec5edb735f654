"""Tests of the docker harness's Slurm mode (slurmctld in the root namespace, one slurmd per
node): if these fail, the Slurm transport's end-to-end tests built on it cannot be trusted.

Every test leaves the shared cluster as it found it: all nodes idle, no job left."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.docker_cluster import DockerCluster

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]


def _wait_until(cond: Callable[[], bool], within: float, what: str) -> float:
    """Seconds until cond() holds; fails the test when it does not within `within` s."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > within:
            pytest.fail(f"not within {within}s: {what}")
        time.sleep(0.1)
    return time.monotonic() - t0


def _popen_srun(cluster: DockerCluster, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(cluster.slurm_env())
    return subprocess.Popen(
        ["srun", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _node_pids(cluster: DockerCluster, i: int, pattern: str) -> list[str]:
    """PIDs (in node i's own PID namespace) of processes whose command line has `pattern`."""
    return cluster.nsenter(i, "pgrep", "-f", pattern, check=False).stdout.split()


@pytest.fixture
def idle_after(slurm_cluster: DockerCluster):
    """The cluster, checked idle before the test and waited for (bounded) after it."""
    slurm_cluster.wait_slurm_idle(120)
    yield slurm_cluster
    slurm_cluster.wait_slurm_idle(120)
    assert slurm_cluster.slurm("squeue", "-h", check=True).stdout.strip() == ""


def test_every_node_is_idle_in_the_cvs_partition(slurm_cluster: DockerCluster) -> None:
    assert slurm_cluster.slurm_nodes == slurm_cluster.names == ["node1", "node2", "node3"]
    r = slurm_cluster.slurm("sinfo", "-h", "-N", "-o", "%N %P %t %c", check=True)
    rows = sorted(line.split() for line in r.stdout.splitlines())
    cpus = str(min(len(os.sched_getaffinity(0)), os.cpu_count() or 1))
    assert rows == [[n, "cvs*", "idle", cpus] for n in slurm_cluster.slurm_nodes]
    for name, ip in zip(slurm_cluster.slurm_nodes, slurm_cluster.hosts):
        info = slurm_cluster.slurm_nodes_info()[name]
        assert info["State"] == slurm_cluster.slurm_node_state(name) == "IDLE"
        assert info["NodeAddr"] == ip
    # the controller is ours: the conf's port, not another Slurm on this machine
    r = slurm_cluster.slurm("scontrol", "show", "config", check=True)
    assert f"SlurmctldPort           = {slurm_cluster.slurmctld_port}\n" in r.stdout
    assert slurm_cluster.munge_socket in r.stdout


def test_srun_runs_one_task_on_each_named_node(idle_after: DockerCluster) -> None:
    c = idle_after
    nodes = ",".join(c.slurm_nodes)
    t0 = time.monotonic()
    r = c.slurm("srun", "-N3", "-w", nodes, "--chdir", "/", "hostname", timeout=60)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == c.slurm_nodes
    assert elapsed < 10, f"a 3-node step took {elapsed:.1f}s"


def test_srun_label_prefixes_each_task_and_runs_in_the_working_dir(
    idle_after: DockerCluster,
) -> None:
    c = idle_after
    # no --chdir: slurm_env()'s SLURM_WORKING_DIR (/tmp, which every node has)
    r = c.slurm("srun", "-N3", "--label", "sh", "-c", 'echo "$SLURMD_NODENAME $(pwd)"', timeout=60)
    assert r.returncode == 0, r.stderr
    lines = sorted(r.stdout.splitlines())
    assert lines == [f"{k}: {name} /tmp" for k, name in enumerate(c.slurm_nodes)]


def test_stop_slurmd_fails_steps_on_that_node_and_start_slurmd_restores_it(
    idle_after: DockerCluster,
) -> None:
    c = idle_after
    i = 1
    name = c.slurm_nodes[i]
    others = [n for n in c.slurm_nodes if n != name]
    c.stop_slurmd(i)
    try:
        assert _node_pids(c, i, "^slurmd ") == []
        c.stop_slurmd(i)  # idempotent
        # slurmctld does not know yet (it pings every SlurmdTimeout/3 s): the step is placed
        # on the node and its launch fails once the connection attempt times out
        t0 = time.monotonic()
        r = c.slurm("srun", "-N1", "-w", name, "--immediate=10", "hostname", timeout=90)
        elapsed = time.monotonic() - t0
        assert r.returncode != 0
        assert f"failed on node {name}: Communication connection failure" in r.stderr
        assert elapsed < 30, f"the launch failure took {elapsed:.1f}s"
        # the other nodes are unaffected
        r = c.slurm("srun", "-N2", "-w", ",".join(others), "hostname", timeout=60)
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.split()) == others
    finally:
        c.start_slurmd(i)
    assert len(_node_pids(c, i, "^slurmd ")) == 1
    c.start_slurmd(i)  # idempotent: it runs
    assert len(_node_pids(c, i, "^slurmd ")) == 1
    # the failed job is cleaned up once the new slurmd registers
    c.wait_slurm_idle(60)
    r = c.slurm("srun", "-N1", "-w", name, "hostname", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == name


@pytest.mark.parametrize(
    "nodes", [2, "node1,node2", ["node1", "node2"], "-N 2 --nodelist=node1,node2"], ids=repr
)
def test_salloc_allocates_and_scancel_releases(idle_after: DockerCluster, nodes) -> None:
    c = idle_after
    job = c.salloc(nodes)
    try:
        assert job.isdigit()
        r = c.slurm("squeue", "-h", "-j", job, "-o", "%T %D %N", check=True)
        assert r.stdout.split() == ["RUNNING", "2", "node[1-2]"]
        assert c.slurm_node_state("node1") in ("MIXED", "ALLOCATED")
    finally:
        c.scancel(job)
    # scancel returned once squeue stopped listing the job
    assert c.slurm("squeue", "-h", "-j", job, check=False).stdout.strip() == ""
    c.scancel(job)  # an ended job is not an error


def test_two_overlapping_steps_run_concurrently_in_one_allocation(
    idle_after: DockerCluster,
) -> None:
    c = idle_after
    flag = f"/tmp/cvs-overlap-{uuid.uuid4().hex[:8]}"
    job = c.salloc(f"--nodelist={','.join(c.slurm_nodes)}")
    try:
        r = c.slurm("squeue", "-h", "-j", job, "-o", "%T %D %N", check=True)
        assert r.stdout.split() == ["RUNNING", "3", "node[1-3]"]
        # step A only finishes once step B has run on its node: were the steps serialised,
        # A would time out (10 s) and fail
        wait_flag = (
            f"for k in $(seq 100); do [ -e {flag} ] && break; sleep 0.1; done; [ -e {flag} ]"
        )
        a = _popen_srun(
            c, "--jobid", job, "--overlap", "-N3", "sh", "-c", f"{wait_flag} && hostname"
        )
        b = _popen_srun(
            c, "--jobid", job, "--overlap", "-N3", "sh", "-c", f"touch {flag}; hostname"
        )
        out_b, err_b = b.communicate(timeout=60)
        out_a, err_a = a.communicate(timeout=60)
        assert b.returncode == 0, err_b
        assert a.returncode == 0, err_a
        assert sorted(out_a.split()) == sorted(out_b.split()) == c.slurm_nodes
    finally:
        c.scancel(job)
        for i in range(c.n):
            c.nsenter(i, "rm", "-f", flag, check=False)


def test_scancel_of_a_step_kills_its_processes_on_every_node(idle_after: DockerCluster) -> None:
    c = idle_after
    marker = f"cvs-step-{uuid.uuid4().hex[:8]}"
    job = c.salloc(c.slurm_nodes[:2])
    srun = None
    try:
        # a task with a background child in the same process group (proctrack/pgid)
        script = f"(exec -a {marker}-child sleep 300) & exec -a {marker}-main sleep 300"
        srun = _popen_srun(c, "--jobid", job, "--overlap", "-N2", "bash", "-c", script)
        for i in (0, 1):
            _wait_until(lambda i=i: len(_node_pids(c, i, marker)) == 2, 30, f"{marker} on {i}")
        steps = c.slurm("squeue", "-h", "-s", "-j", job, "-o", "%i", check=True).stdout.split()
        assert len(steps) == 1 and steps[0].startswith(f"{job}."), steps
        c.scancel(steps[0])
        for i in (0, 1):
            _wait_until(lambda i=i: not _node_pids(c, i, marker), 15, f"{marker} gone on {i}")
        srun.wait(30)
        assert srun.returncode != 0
        # only the step ended: the allocation is still there and runs new steps
        r = c.slurm("squeue", "-h", "-j", job, "-o", "%T", check=True)
        assert r.stdout.strip() == "RUNNING"
        r = c.slurm("srun", "--jobid", job, "--overlap", "-N2", "hostname", timeout=60)
        assert sorted(r.stdout.split()) == c.slurm_nodes[:2], r.stderr
    finally:
        c.scancel(job)
        if srun is not None and srun.poll() is None:
            srun.kill()
            srun.wait(10)


def test_partition_fails_steps_on_that_node_and_heal_restores_it(
    idle_after: DockerCluster,
) -> None:
    c = idle_after
    i = 2
    name = c.slurm_nodes[i]
    others = [n for n in c.slurm_nodes if n != name]
    c.partition(i)
    try:
        # as with a dead slurmd: slurmctld still thinks the node is idle, places the step
        # there, and the launch fails when the connection to its slurmd times out
        t0 = time.monotonic()
        r = c.slurm("srun", "-N1", "-w", name, "--immediate=10", "hostname", timeout=90)
        elapsed = time.monotonic() - t0
        assert r.returncode != 0
        assert f"failed on node {name}: Communication connection failure" in r.stderr
        assert elapsed < 30, f"the launch failure took {elapsed:.1f}s"
        r = c.slurm("srun", "-N2", "-w", ",".join(others), "hostname", timeout=60)
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.split()) == others
        # its slurmd survives the partition: nothing on the node itself changed
        assert len(_node_pids(c, i, "^slurmd ")) == 1
    finally:
        c.heal(i)
    # the node answers pings again at once; the failed job's node-side cleanup needs
    # slurmctld's TERMINATE_JOB to get through: at once when healed this soon, else at its
    # periodic resend (~50 s after the job ended): bounded wait
    c.wait_slurm_idle(150)
    r = c.slurm("srun", "-N1", "-w", name, "hostname", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == name


def test_a_second_slurm_cluster_gets_its_own_port_and_socket_and_down_removes_it(
    slurm_cluster: DockerCluster, tmp_path: Path
) -> None:
    """A one-node Slurm cluster beside the session one (its own subnet, slurmctld port and
    munge socket; both answer), stopped by `down` from another process as after a crash: no
    process, socket directory or listener of it is left; the session cluster is unaffected."""
    wd = tmp_path / "second"
    c = DockerCluster(1, wd, subnet="auto", prefix="stest", load_images=False, slurm=True)
    try:
        c.start()
        assert c.subnet != slurm_cluster.subnet
        assert c.slurmctld_port != slurm_cluster.slurmctld_port
        assert c.munge_socket != slurm_cluster.munge_socket
        r = c.slurm("srun", "-N1", "hostname", timeout=60)
        assert r.stdout.strip() == "stest1", r.stderr
        r = slurm_cluster.slurm("srun", "-N1", "-w", "node1", "hostname", timeout=60)
        assert r.stdout.strip() == "node1", r.stderr
        state = c._state["slurm"]
        port = c.slurmctld_port
        root_pids = [state["munged"][0], state["slurmctld"][0]]
        node_pids = [c._state["nodes"][0]["slurm"][d][0] for d in ("munged", "slurmd")]
        assert all(Path(f"/proc/{p}").exists() for p in root_pids + node_pids)
        down = subprocess.run(
            [sys.executable, str(REPO / "harness" / "docker_cluster.py"), "down", str(wd)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert down.returncode == 0, down.stderr
        c.stop()  # reaps our children (their parent is this process); nothing left to stop
        for p in root_pids + node_pids:
            assert not Path(f"/proc/{p}").exists(), f"pid {p} survived down"
        assert not Path(state["munge_dir"]).exists()
        assert not (wd / "slurm").exists()
        assert (wd / "logs" / "slurm-slurmctld.log").exists()
        assert (wd / "logs" / "stest1-slurmd.log").exists()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # nothing listens on slurmctld's port any more (raises if something does);
            # SO_REUSEADDR: its closed connections may linger in TIME_WAIT
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen()
    finally:
        c.stop()
    slurm_cluster.wait_slurm_idle(30)
