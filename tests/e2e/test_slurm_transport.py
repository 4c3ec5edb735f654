"""The Slurm transport against a real Slurm: slurmctld in the root namespace, one slurmd (and
munged) in every simulated node of the docker harness, the same nodes that run sshd and
dockerd. Every call is one srun step; these tests check per-host results, byte-exactness,
stdin, kills (looked for inside each node), dead, drained and partitioned nodes, allocations.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import cvs_core

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def slurm_client_env(slurm_cluster, monkeypatch):
    """srun, scontrol and scancel in this process talk to the harness's slurmctld."""
    for k, v in slurm_cluster.slurm_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CVS_CORE_TRANSPORT", raising=False)


def wait_until(pred, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def node_ready(dc, i: int) -> bool:
    state = dc.slurm_node_state(dc.slurm_nodes[i]).upper()
    return "IDLE" in state and not any(
        bad in state for bad in ("DOWN", "DRAIN", "NOT_RESPONDING", "*")
    )


def all_ready(dc) -> None:
    wait_until(lambda: all(node_ready(dc, i) for i in range(dc.n)), "every slurm node idle", 120)


def procs(dc, i: int, pattern: str) -> str:
    """The node's processes whose command line matches (inside its PID namespace)."""
    r = dc.nsenter(i, "pgrep", "-af", pattern, check=False)
    return r.stdout.decode() if isinstance(r.stdout, bytes) else (r.stdout or "")


def new_mark(tag: str) -> str:
    """A number no other process on the machine has in its command line: `sleep <mark>`."""
    return f"{time.time_ns() % 10**6}.{os.getpid()}{tag}"


def wait_running_everywhere(dc, mark: str) -> None:
    wait_until(
        lambda: all(f"sleep {mark}" in procs(dc, i, mark) for i in range(dc.n)),
        "the command on every node",
        20,
    )


def assert_gone_everywhere(dc, mark: str) -> None:
    for i in range(dc.n):
        assert f"sleep {mark}" not in procs(dc, i, mark), f"left running on {dc.names[i]}"


def wait_allocation_released(dc, pid: int) -> None:
    """cvs-core names its allocation `cvs-core-<pid>` after the process that made it."""
    wait_until(
        lambda: f"cvs-core-{pid}" not in dc.slurm("squeue", "-h", "-o", "%j").stdout.split(),
        "the allocation released",
        30,
    )


def cluster(dc, hosts=None, **kw) -> cvs_core.Cluster:
    kw.setdefault("connect_timeout", 5)
    return cvs_core.Cluster(hosts or list(dc.hosts), transport="slurm", **kw)


def test_per_host_results_with_exact_bytes(slurm_cluster) -> None:
    dc = slurm_cluster
    with cluster(dc) as c:
        assert c.transport == "slurm"
        # the host's own name, no trailing newline; stderr apart; exit code per host
        r = c.exec(
            'printf "%s" "$(hostname)"; printf "warn\\n" >&2; case $(hostname) in *2) exit 7;; esac'
        )
    assert [h.host for h in r] == list(dc.hosts)
    for i, h in enumerate(r):
        assert h.stdout == dc.names[i]  # IPs mapped to their Slurm nodes
        assert h.stderr == "warn\n"
        if i == 1:
            assert (h.status, h.exit_code) == ("exit_nonzero", 7)
        else:
            assert (h.status, h.exit_code) == ("ok", 0)


def test_binary_and_large_output_arrive_intact(slurm_cluster) -> None:
    dc = slurm_cluster
    # deterministic binary (gzip -n: no name, no timestamp), about 0.6 MB per host
    with cluster(dc) as c:
        r = c.exec("seq 1 300000 | gzip -1 -n")
        big = c.exec("head -c 4000000 /dev/zero | tr '\\0' '\\377'")
    want = b"".join(b"%d\n" % n for n in range(1, 300001))
    for h in r:
        assert h.ok, h.error
        assert gzip.decompress(h.stdout_bytes) == want
    for h in big:
        assert h.ok, h.error
        assert h.stdout_bytes == b"\xff" * 4_000_000


def test_large_raw_output_is_byte_exact(slurm_cluster, tmp_path: Path) -> None:
    """3 MB of binary stdout per host through download(): the bytes of a remote file."""
    dc = slurm_cluster
    data = os.urandom(3_000_000) + b"\x00no-newline"
    src = tmp_path / "payload.bin"
    src.write_bytes(data)
    remote = f"/tmp/cvs-slurm-{uuid.uuid4().hex[:8]}.bin"
    with cluster(dc) as c:
        up = c.upload(src, remote)
        assert all(h.ok for h in up), [h.error for h in up]
        # nodes have private /tmp: every host got its own copy over its own task
        sums = c.exec(f"sha256sum {remote}")
        paths = c.download(remote, tmp_path / "back")
        c.exec(f"rm -f {remote}")
    want = hashlib.sha256(data).hexdigest()
    assert all(h.stdout.split()[0] == want for h in sums)
    assert len(paths) == dc.n
    for p in paths.values():
        assert Path(p).read_bytes() == data


def test_stdin_is_broadcast_to_every_host(slurm_cluster) -> None:
    dc = slurm_cluster
    payload = os.urandom(1_500_000)
    with cluster(dc) as c:
        r = c.exec('sha256sum; echo "host=$(hostname)"', stdin=payload)
    want = hashlib.sha256(payload).hexdigest()
    for i, h in enumerate(r):
        assert h.ok, h.error
        assert h.stdout.split()[0] == want
        assert f"host={dc.names[i]}" in h.stdout


def test_timeout_kills_every_remote_process(slurm_cluster) -> None:
    dc = slurm_cluster
    mark = new_mark("1")
    with cluster(dc) as c:
        t0 = time.monotonic()
        r = c.exec(f"sleep {mark}1 & sleep {mark}2", timeout=2)
        took = time.monotonic() - t0
    assert took < 15, took
    for h in r:
        assert h.status == "timeout", (h.host, h.status, h.error)
        assert "remote processes killed" in h.error, h.error
    assert_gone_everywhere(dc, mark)


def test_interrupt_cancels_and_kills_every_remote_process(slurm_cluster) -> None:
    dc = slurm_cluster
    mark = new_mark("2")
    with cluster(dc) as c:
        # interrupt once the command runs on every node (not on a timer)
        timer = threading.Thread(target=lambda: (wait_running_everywhere(dc, mark), c.interrupt()))
        timer.start()
        r = c.exec(f"sleep {mark}")
        timer.join()
    for h in r:
        assert h.status == "cancelled", (h.host, h.status, h.error)
        assert "remote processes killed" in h.error, h.error
    assert_gone_everywhere(dc, mark)


def test_inactivity_timeout_is_per_host(slurm_cluster) -> None:
    dc = slurm_cluster
    with cluster(dc) as c:
        r = c.exec(
            "case $(hostname) in *1) echo first; sleep 30;; *) echo quick;; esac",
            inactivity_timeout=1.5,
        )
    assert r[0].status == "inactivity_timeout", r[0].error
    assert r[0].stdout == "first\n"
    assert "remote processes killed" in r[0].error
    assert [h.status for h in list(r)[1:]] == ["ok"] * (dc.n - 1)


def test_concurrent_calls_share_one_allocation(slurm_cluster) -> None:
    dc = slurm_cluster
    job = dc.salloc(f"--nodelist={','.join(dc.slurm_nodes)}")
    try:
        with cluster(dc, slurm={"job_id": job}) as c:
            out: list = [None] * 6

            def run(k: int) -> None:
                out[k] = c.exec(f'date +%s.%N; sleep 1; echo "$SLURM_JOB_ID {k}"; date +%s.%N')

            threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        spans = []
        for k, r in enumerate(out):
            assert all(h.ok for h in r), [h.error for h in r]
            lines = [h.stdout.split("\n") for h in r]
            assert [ln[1] for ln in lines] == [f"{job} {k}"] * dc.n
            spans.append((max(float(ln[0]) for ln in lines), min(float(ln[2]) for ln in lines)))
        # --overlap: the steps ran side by side in the one allocation (every step started
        # before another had ended), not one after another
        starts, ends = [a for a, _ in spans], [b for _, b in spans]
        assert max(starts) < min(ends), spans
    finally:
        dc.scancel(job)


def test_auto_inside_an_allocation_uses_it(slurm_cluster, monkeypatch) -> None:
    dc = slurm_cluster
    job = dc.salloc(f"--nodelist={','.join(dc.slurm_nodes)}")
    try:
        monkeypatch.setenv("SLURM_JOB_ID", job)
        with cvs_core.Cluster(list(dc.hosts), transport="auto") as c:
            assert c.transport == "slurm"
            r = c.exec('echo "$SLURM_JOB_ID"')
        assert [h.stdout for h in r] == [f"{job}\n"] * dc.n
        monkeypatch.delenv("SLURM_JOB_ID")
        assert cvs_core.Cluster(list(dc.hosts), transport="auto").transport == "ssh"
        monkeypatch.setenv("CVS_CORE_TRANSPORT", "slurm")
        assert cvs_core.Cluster(list(dc.hosts)).transport == "slurm"
    finally:
        dc.scancel(job)


def test_a_host_slurm_does_not_know_is_reported_not_guessed(slurm_cluster) -> None:
    dc = slurm_cluster
    stranger = f"{dc.subnet}.250"
    with cluster(dc, [dc.hosts[0], stranger]) as c:
        r = c.exec("true")
    assert r[0].ok
    assert r[1].status == "unreachable"
    assert "knows no node" in r[1].error and stranger in r[1].error


def test_drained_node_is_unreachable_with_slurms_reason(slurm_cluster) -> None:
    dc = slurm_cluster
    node = dc.slurm_nodes[2]
    dc.slurm("scontrol", "update", f"nodename={node}", "state=drain", "reason=cvs-core-test")
    try:
        with cluster(dc) as c:
            r = c.exec("hostname")
        assert [h.status for h in list(r)[:2]] == ["ok", "ok"]
        assert r[2].status == "unreachable"
        assert "DRAIN" in r[2].error and "cvs-core-test" in r[2].error, r[2].error
    finally:
        dc.slurm("scontrol", "update", f"nodename={node}", "state=resume")
        all_ready(dc)


def test_stopped_slurmd_before_the_call_is_unreachable_in_time(slurm_cluster) -> None:
    dc = slurm_cluster
    dc.stop_slurmd(1)
    try:
        with cluster(dc, connect_timeout=4) as c:
            t0 = time.monotonic()
            r = c.exec("hostname")
            took = time.monotonic() - t0
        assert took < 4 + 4, took
        assert r[1].status == "unreachable", (r[1].status, r[1].error)
        assert dc.slurm_nodes[1] in r[1].error
        assert [h.stdout for h in (r[0], r[2])] == [f"{dc.names[0]}\n", f"{dc.names[2]}\n"]
    finally:
        dc.start_slurmd(1)
        all_ready(dc)


def test_node_dying_during_the_call_is_unreachable_in_time(slurm_cluster) -> None:
    dc = slurm_cluster
    try:
        with cluster(dc, connect_timeout=4) as c:
            result: list = []
            t = threading.Thread(target=lambda: result.append(c.exec("sleep 3; echo done")))
            t.start()
            wait_until(lambda: "sleep 3" in procs(dc, 1, "sleep 3"), "the task on node 2", 20)
            t0 = time.monotonic()
            # the node dies: its slurmd and the step's slurmstepd with it
            dc.stop_slurmd(1)
            dc.nsenter(1, "pkill", "-KILL", "slurmstepd", check=False)
            t.join(30)
            took = time.monotonic() - t0
        r = result[0]
        assert r[1].status == "unreachable", (r[1].status, r[1].error)
        assert took < 4 + 5, took
        assert [h.stdout for h in (r[0], r[2])] == ["done\n", "done\n"]
    finally:
        dc.start_slurmd(1)
        all_ready(dc)


def test_partitioned_node_is_unreachable_in_time(slurm_cluster) -> None:
    dc = slurm_cluster
    try:
        with cluster(dc, connect_timeout=4) as c:
            result: list = []
            t = threading.Thread(target=lambda: result.append(c.exec("sleep 3; echo done")))
            t.start()
            wait_until(lambda: "sleep 3" in procs(dc, 2, "sleep 3"), "the task on node 3", 20)
            t0 = time.monotonic()
            dc.partition(2)
            t.join(30)
            took = time.monotonic() - t0
            r = result[0]
            assert r[2].status == "unreachable", (r[2].status, r[2].error)
            assert "lost contact" in r[2].error
            assert took < 4 + 5, took
            assert [h.stdout for h in list(r)[:2]] == ["done\n", "done\n"]
            # before a call: the task never starts there
            t0 = time.monotonic()
            r = c.exec("hostname")
            assert r[2].status == "unreachable", (r[2].status, r[2].error)
            assert time.monotonic() - t0 < 4 + 5
            assert [h.ok for h in list(r)[:2]] == [True, True]
    finally:
        dc.heal(2)
        all_ready(dc)


def test_ctrl_c_in_python_kills_every_remote_process(slurm_cluster, tmp_path: Path) -> None:
    """SIGINT to a Python process blocked in exec: KeyboardInterrupt once the tasks' kills are
    done, and nothing of the command is left on any node."""
    dc = slurm_cluster
    mark = new_mark("7")
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, cvs_core\n"
        f"c = cvs_core.Cluster({list(dc.hosts)!r}, transport='slurm', connect_timeout=5)\n"
        "def progress(host, phase):\n"
        "    if phase == 'running':\n"
        "        print('running', flush=True)\n"
        "try:\n"
        f"    c.exec('sleep {mark}', progress=progress)\n"
        "except KeyboardInterrupt as e:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(130)\n"
    )
    env = {**os.environ, **dc.slurm_env()}
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "running"
        wait_running_everywhere(dc, mark)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 130, out
    assert "interrupted" in out
    assert_gone_everywhere(dc, mark)
    # the allocation cvs-core made for that process is gone with it
    wait_allocation_released(dc, p.pid)


def test_close_cancels_running_calls(slurm_cluster) -> None:
    dc = slurm_cluster
    mark = new_mark("9")
    c = cluster(dc)
    result: list = []
    t = threading.Thread(target=lambda: result.append(c.exec(f"sleep {mark}")))
    t.start()
    wait_running_everywhere(dc, mark)
    c.close()
    t.join(30)
    assert [h.status for h in result[0]] == ["cancelled"] * dc.n, [h.error for h in result[0]]
    assert all("remote processes killed" in h.error for h in result[0])
    assert_gone_everywhere(dc, mark)
    after = c.exec("true")
    assert [h.status for h in after] == ["error"] * dc.n


def test_an_allocation_ended_under_the_cluster_is_replaced(slurm_cluster) -> None:
    """cvs-core's own allocation cancelled by someone else (or by a time limit): the next call
    makes a new one instead of sending steps to a job that is gone."""
    dc = slurm_cluster
    with cluster(dc) as c:
        first = c.exec('echo "$SLURM_JOB_ID"')
        assert first.ok, [h.error for h in first]
        job = first[0].stdout.strip()
        dc.scancel(job)
        wait_until(
            lambda: job not in dc.slurm("squeue", "-h", "-o", "%i").stdout.split(),
            "the allocation gone",
            30,
        )
        again = c.exec('echo "$SLURM_JOB_ID"')
        assert again.ok, [h.error for h in again]
        assert {h.stdout.strip() for h in again} != {job}
        assert len({h.stdout.strip() for h in again}) == 1


def test_kill_9_of_the_client_ends_its_remote_work(slurm_cluster, tmp_path: Path) -> None:
    """SIGKILL to a process in the middle of a call: nothing of it can run any more, yet its
    allocation goes (salloc's `cat` sees its stdin close) and with it every step: no process of
    the command is left on any node, no task directory, no allocation."""
    dc = slurm_cluster
    mark = new_mark("3")
    script = tmp_path / "run.py"
    script.write_text(
        "import cvs_core\n"
        f"c = cvs_core.Cluster({list(dc.hosts)!r}, transport='slurm', connect_timeout=5)\n"
        "def progress(host, phase):\n"
        "    if phase == 'running':\n"
        "        print('running', flush=True)\n"
        f"c.exec('sleep {mark}', progress=progress)\n"
    )
    env = {**os.environ, **dc.slurm_env()}
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "running"
        wait_running_everywhere(dc, mark)
        p.kill()
        p.wait(10)
    finally:
        p.kill()
    wait_allocation_released(dc, p.pid)
    wait_until(
        lambda: all(f"sleep {mark}" not in procs(dc, i, mark) for i in range(dc.n)),
        "the command gone from every node",
        30,
    )
    # The wrapper removes its directory on the TERM that ends the step, but Slurm follows that
    # TERM with a KILL after a short grace, which a loaded node can miss: such a directory is
    # removed by the next task on the node, so after one more call none is left.
    with cluster(dc) as c:
        assert c.exec("true").ok
    for i in range(dc.n):
        assert task_dirs(dc, i) == "", f"task directories left on {dc.names[i]}"


def task_dirs(dc, i: int) -> str:
    left = dc.nsenter(i, "sh", "-c", "ls -d /tmp/cvs-core-task-* 2>/dev/null", check=False)
    return (left.stdout.decode() if isinstance(left.stdout, bytes) else (left.stdout or "")).strip()


def test_a_killed_tasks_directory_is_removed_by_the_next_task(slurm_cluster) -> None:
    """A directory whose wrapper is gone (its pid file names a dead process) goes with the next
    task on that node; one whose wrapper lives, or that has no pid file yet, stays."""
    dc = slurm_cluster
    stale, live, fresh = (f"/tmp/cvs-core-task-{w}-{os.getpid()}" for w in ("dead", "live", "new"))
    for i in range(dc.n):
        dead_pid = dc.nsenter(i, "sh", "-c", "echo $$", check=False).stdout
        dead_pid = (dead_pid.decode() if isinstance(dead_pid, bytes) else dead_pid).strip()
        make = f"mkdir -p {stale} {live} {fresh} && echo {dead_pid} > {stale}/pid"
        dc.nsenter(i, "sh", "-c", f"{make} && echo 1 > {live}/pid", check=False)
    try:
        with cluster(dc) as c:
            assert c.exec("true").ok
        for i in range(dc.n):
            left = task_dirs(dc, i).split()
            assert stale not in left, f"{dc.names[i]}: a dead task's directory stayed"
            assert live in left and fresh in left, f"{dc.names[i]}: a live directory went: {left}"
    finally:
        for i in range(dc.n):
            dc.nsenter(i, "rm", "-rf", stale, live, fresh, check=False)
