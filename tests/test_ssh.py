"""The fan-out engine against real sshd processes on loopback addresses (harness/sshd_cluster)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import cvs_core

pytestmark = pytest.mark.live


def remote_procs(pattern: str) -> list[str]:
    """Processes matching `pattern` on the (loopback) hosts, i.e. on this machine."""
    out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def alive(pids: list[int], wait: float = 3.0) -> list[int]:
    """The PIDs still running (zombies awaiting their reaper count as gone) after up to `wait`."""

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + wait
    while True:
        left = [p for p in pids if running(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def sshd_sessions(sshd) -> int:
    """Live per-channel sshd processes under the simulated hosts' daemons."""
    total = 0
    for h in sshd.host_list:
        if h.proc is None:
            continue
        out = subprocess.run(
            ["pgrep", "-P", str(h.proc.pid)], capture_output=True, text=True
        ).stdout
        total += len(out.split())
    return total


# -- results ---------------------------------------------------------------------------------


def test_results_are_typed_per_host_in_requested_order(ssh_cluster, sshd) -> None:
    hosts = list(reversed(sshd.hosts))
    res = ssh_cluster.exec("echo $CVS_HOST_NAME; echo oops >&2; exit 3", hosts=hosts)
    assert isinstance(res, cvs_core.Results)
    assert res.hosts == hosts
    assert len(res) == len(hosts)
    for r, h in zip(res, hosts):
        assert isinstance(r, cvs_core.HostResult)
        assert r.host == h
        assert r.status == "exit_nonzero"
        assert r.exit_code == 3
        assert r.stdout.startswith("host") and r.stdout.endswith("\n")
        assert r.stderr == "oops\n"
        assert r.duration_s > 0
        assert r.ok is False
    assert res[hosts[0]].host == hosts[0]
    assert res[-1].host == hosts[-1]
    assert hosts[2] in res
    assert res.ok is False
    assert res.failed_hosts == hosts
    with pytest.raises(KeyError):
        res["nope"]


def test_ok_and_fold_groups_identical_output(ssh_cluster, sshd) -> None:
    res = ssh_cluster.exec("echo same")
    assert res.ok and res.failed_hosts == []
    groups = res.fold()
    assert len(groups) == 1
    assert groups[0].hosts == sshd.hosts
    assert (groups[0].status, groups[0].exit_code, groups[0].stdout) == ("ok", 0, "same\n")
    res = ssh_cluster.exec('[ "$CVS_HOST_NAME" = host1 ] && echo one || echo other')
    assert [g.hosts for g in res.fold()] == [sshd.hosts[:1], sshd.hosts[1:]]
    doc = json.loads(res.to_json())
    assert [row["host"] for row in doc] == sshd.hosts
    assert doc[0]["stdout"] == "one\n" and doc[0]["status"] == "ok"
    assert res.summary().startswith(f"{len(sshd.hosts)} hosts in ")


def test_exec_per_host_runs_each_its_command(ssh_cluster, sshd) -> None:
    cmds = {sshd.hosts[3]: "echo three", sshd.hosts[0]: "exit 7"}
    res = ssh_cluster.exec_per_host(cmds)
    assert res.hosts == [sshd.hosts[3], sshd.hosts[0]]
    assert res[sshd.hosts[3]].stdout == "three\n"
    assert res[sshd.hosts[0]].exit_code == 7


def test_unknown_or_repeated_hosts_are_caller_errors(ssh_cluster, sshd) -> None:
    with pytest.raises(cvs_core.CvsError, match="not in this cluster"):
        ssh_cluster.exec("true", hosts=["10.255.255.1"])
    with pytest.raises(cvs_core.CvsError, match="requested twice"):
        ssh_cluster.exec("true", hosts=[sshd.hosts[0], sshd.hosts[0]])
    with pytest.raises(cvs_core.CvsError, match="listed twice"):
        cvs_core.Cluster([sshd.hosts[0], sshd.hosts[0]])
    with pytest.raises(cvs_core.CvsError, match="invalid host"):
        cvs_core.Cluster(["-oProxyCommand=touch /tmp/pwned"])


def test_exit_127_signal_and_binary_output(ssh_cluster, sshd) -> None:
    h = sshd.hosts[:1]
    r = ssh_cluster.exec("no_such_command_xyz", hosts=h)[0]
    assert (r.status, r.exit_code) == ("exit_nonzero", 127)
    r = ssh_cluster.exec("kill -9 $$", hosts=h)[0]
    assert r.status == "signal" and r.exit_code == -1
    r = ssh_cluster.exec(r"printf 'ok\377\376\000end'", hosts=h)[0]
    assert r.stdout_bytes == b"ok\xff\xfe\x00end"
    assert r.stdout == "ok\ufffd\ufffd\x00end"


def test_large_stdin_and_output(ssh_cluster, sshd) -> None:
    payload = os.urandom(10 * 1024 * 1024)
    res = ssh_cluster.exec("sha256sum", hosts=sshd.hosts[:2], stdin=payload)
    want = hashlib.sha256(payload).hexdigest()
    assert [r.stdout.split()[0] for r in res] == [want, want]
    r = ssh_cluster.exec("head -c 50000000 /dev/zero | tr '\\0' a", hosts=sshd.hosts[:1])[0]
    assert r.ok and len(r.stdout_bytes) == 50_000_000
    assert r.stdout_bytes[:3] == b"aaa" and r.stdout_bytes[-1:] == b"a"


@pytest.mark.parametrize("size", [100_000, 1_000_000])
def test_command_size_has_no_30kb_cap(ssh_cluster, sshd, size: int) -> None:
    # Past the kernel's 128 KiB single-argument limit the command travels on stdin.
    body = "x" * size
    cmd = f"echo {body} | wc -c; read -r line || echo no-stdin"
    res = ssh_cluster.exec(cmd, hosts=sshd.hosts[:2])
    assert [r.stdout.split() for r in res] == [[str(size + 1), "no-stdin"]] * 2


def test_huge_command_with_stdin_is_refused(ssh_cluster) -> None:
    with pytest.raises(cvs_core.CvsError, match="cannot travel on the command line"):
        ssh_cluster.exec("echo " + "x" * 200_000, stdin=b"data")


# -- timeouts and cancellation ----------------------------------------------------------------


def test_timeout_kills_the_remote_process_group(ssh_cluster, sshd) -> None:
    marker = "sleep 1000.25"
    res = ssh_cluster.exec(f"({marker}) & {marker}; wait", hosts=sshd.hosts[:2], timeout=1)
    assert [r.status for r in res] == ["timeout", "timeout"]
    assert all("killed" in r.error for r in res)
    assert remote_procs(marker) == []


def test_inactivity_timeout_keeps_partial_output(ssh_cluster, sshd) -> None:
    r = ssh_cluster.exec("echo started; sleep 1000.5", hosts=sshd.hosts[:1], inactivity_timeout=1)[
        0
    ]
    assert r.status == "inactivity_timeout"
    assert r.stdout == "started\n"
    assert remote_procs("sleep 1000.5") == []
    # Output that keeps flowing is not inactivity, even past the inactivity limit in total.
    r = ssh_cluster.exec(
        "for i in 1 2 3 4; do echo $i; sleep 0.4; done", hosts=sshd.hosts[:1], inactivity_timeout=1
    )[0]
    assert r.ok and r.stdout.split() == ["1", "2", "3", "4"]


def test_one_slow_host_never_delays_or_mislabels_the_others(ssh_cluster, sshd) -> None:
    slow = sshd.hosts[0]
    cmds = {h: "echo fast" for h in sshd.hosts}
    cmds[slow] = "sleep 1000.75"
    res = ssh_cluster.exec_per_host(cmds, timeout=2)
    assert res[slow].status == "timeout"
    for h in sshd.hosts[1:]:
        assert res[h].status == "ok" and res[h].stdout == "fast\n"
        assert res[h].duration_s < res[slow].duration_s


def test_ctrl_c_stops_remote_work_before_it_raises(sshd, tmp_path: Path) -> None:
    """KeyboardInterrupt reaches the caller once the remote processes are gone (the kills are
    awaited, bounded), so a program that exits right after it leaves nothing running."""
    script = tmp_path / "ctrlc.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            import cvs_core
            cl = cvs_core.Cluster({sshd.hosts[:3]!r}, ssh_config={str(sshd.ssh_config)!r})
            cl.exec("true")
            print("READY", flush=True)
            try:
                cl.exec("sleep 1000.125")
            except KeyboardInterrupt:
                print("INTERRUPTED", time.monotonic(), flush=True)
                sys.stdin.readline()  # the test checks the hosts while this process lives
                sys.exit(0)
            print("NOT INTERRUPTED", flush=True)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "READY"
    deadline = time.monotonic() + 10
    while not remote_procs("sleep 1000.125") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(remote_procs("sleep 1000.125")) == 3
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    line = proc.stdout.readline().split()
    assert line[0] == "INTERRUPTED", proc.stderr.read()
    assert remote_procs("sleep 1000.125") == []  # already gone when the exception was raised
    assert float(line[1]) - sent < 10
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(10) == 0


# -- transport failures ------------------------------------------------------------------------


def test_failure_classes(sshd) -> None:
    bad = {
        sshd.extra["wrongkey"].destination: "host_key_mismatch",
        sshd.extra["noauth"].destination: "auth_failed",
        sshd.dead.destination: "unreachable",
        sshd.silent.destination: "unreachable",
    }
    with cvs_core.Cluster(
        [sshd.hosts[0], *bad], ssh_config=sshd.ssh_config, connect_timeout=2
    ) as cl:
        res = cl.exec("echo hi")
        assert res[sshd.hosts[0]].stdout == "hi\n"
        for host, status in bad.items():
            assert res[host].status == status, res[host].error
            assert res[host].exit_code == -1
            assert res[host].error
        assert res.failed_hosts == list(bad)


def test_host_key_policies(sshd, tmp_path: Path) -> None:
    wrong = sshd.extra["wrongkey"].destination
    common = {"user": sshd.user, "key": sshd.key, "connect_timeout": 3}
    with cvs_core.Cluster([wrong], known_hosts=sshd.known_hosts, **common) as cl:
        assert cl.exec("true")[0].status == "host_key_mismatch"
    with cvs_core.Cluster(
        [wrong], known_hosts=sshd.known_hosts, host_key_policy="off", **common
    ) as cl:
        assert cl.exec("true")[0].status == "ok"
    fresh = tmp_path / "known_hosts"
    fresh.write_text("")
    with cvs_core.Cluster(
        sshd.hosts[:2], known_hosts=fresh, host_key_policy="accept-new", **common
    ) as cl:
        assert cl.exec("true").ok
    assert len(fresh.read_text().splitlines()) == 2
    with cvs_core.Cluster(sshd.hosts[:1], known_hosts=tmp_path / "empty", **common) as cl:
        assert cl.exec("true")[0].status == "host_key_mismatch"
    with pytest.raises(cvs_core.CvsError, match="host_key_policy"):
        cvs_core.Cluster(sshd.hosts, host_key_policy="yolo")


def test_a_password_never_prompts_on_a_key_only_host(sshd) -> None:
    # Accepted (password auth: tests/compat/test_password_live.py); a host that refuses
    # passwords and the key fails as auth_failed, never hangs at a prompt.
    with cvs_core.Cluster(
        [sshd.extra["noauth"].destination], password="secret", ssh_config=sshd.ssh_config
    ) as cl:
        assert cl.exec("true", timeout=20)[0].status == "auth_failed"


def test_crashed_host_is_unreachable_and_others_unaffected(sshd, tmp_path: Path) -> None:
    victim = type(sshd)(2, tmp_path / "victim").start()
    try:
        with cvs_core.Cluster(
            victim.hosts,
            user=victim.user,
            key=victim.key,
            known_hosts=victim.known_hosts,
            connect_timeout=2,
        ) as cl:
            assert cl.exec("true").ok
            victim.crash_host(0)
            time.sleep(0.3)
            res = cl.exec("echo alive")
            assert res[victim.hosts[0]].status == "unreachable", res[victim.hosts[0]].error
            assert res[victim.hosts[1]].stdout == "alive\n"
    finally:
        victim.stop()


# -- connection reuse ---------------------------------------------------------------------------


def test_connections_are_reused_and_closed(ssh_cluster, sshd) -> None:
    ssh_cluster.exec("true")
    pids = ssh_cluster.master_pids()
    assert len(pids) == len(sshd.hosts)
    for _ in range(5):
        assert ssh_cluster.exec("true").ok
    assert ssh_cluster.master_pids() == pids
    ssh_cluster.close()
    assert alive(pids) == []
    assert ssh_cluster.exec("true", hosts=sshd.hosts[:1])[0].status == "error"


def test_dead_master_is_replaced_once_without_rerunning(ssh_cluster, sshd, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    h = sshd.hosts[:1]
    assert ssh_cluster.exec(f"echo run >> {log}", hosts=h).ok
    (pid,) = ssh_cluster.master_pids()[:1]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert ssh_cluster.exec(f"echo run >> {log}", hosts=h).ok
    assert log.read_text().splitlines() == ["run", "run"]
    assert ssh_cluster.master_pids()[0] != pid


def test_master_survives_idle_expiry_transparently(sshd) -> None:
    with cvs_core.Cluster(sshd.hosts[:2], ssh_config=sshd.ssh_config, idle_timeout=1) as cl:
        assert cl.exec("true").ok
        first = cl.master_pids()
        time.sleep(1.5)  # ControlPersist=1: the masters exit while idle
        assert alive(first) == []
        assert cl.exec("echo back").ok
        assert set(cl.master_pids()).isdisjoint(first)


def test_no_fd_or_session_leak_over_1000_calls(ssh_cluster, sshd) -> None:
    hosts = sshd.hosts[:2]
    for _ in range(20):
        ssh_cluster.exec("true", hosts=hosts)
    fds_before = len(os.listdir("/proc/self/fd"))
    sessions_before = sshd_sessions(sshd)
    master_fds_before = sum(len(os.listdir(f"/proc/{p}/fd")) for p in ssh_cluster.master_pids())
    for i in range(1000):
        res = ssh_cluster.exec("true", hosts=hosts, timeout=5 if i % 2 else None)
        assert res.ok
    time.sleep(0.2)
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2
    assert sshd_sessions(sshd) <= sessions_before
    master_fds = sum(len(os.listdir(f"/proc/{p}/fd")) for p in ssh_cluster.master_pids())
    assert master_fds <= master_fds_before


def test_bounded_concurrency(sshd, tmp_path: Path) -> None:
    spot = tmp_path / "running"
    spot.mkdir()
    cmd = f"touch {spot}/$CVS_HOST_NAME; ls {spot} | wc -l; sleep 0.3; rm {spot}/$CVS_HOST_NAME"
    with cvs_core.Cluster(sshd.hosts, ssh_config=sshd.ssh_config, max_parallel=2) as cl:
        cl.exec("true")
        res = cl.exec(cmd)
        assert res.ok
        assert max(int(r.stdout) for r in res) <= 2
    with cvs_core.Cluster(sshd.hosts, ssh_config=sshd.ssh_config) as cl:
        cl.exec("true")
        assert max(int(r.stdout) for r in cl.exec(cmd)) > 2


def test_a_connect_given_up_on_leaves_no_process(sshd, tmp_path: Path) -> None:
    """A host that sends a banner and then stalls: ssh's ConnectTimeout no longer applies, so
    cvs-core's own guard (3 x connect_timeout + 5 s) gives up; the launcher and the
    ProxyCommand it started are gone afterwards, and no master is left on the socket."""
    marker = f"sleep 1000.{os.getpid() % 1000}9"
    cfg = tmp_path / "stall_config"
    cfg.write_text(
        sshd.ssh_config.read_text()
        + f"\nHost stalling-host\n  ProxyCommand sh -c 'echo SSH-2.0-stall; exec {marker}'\n"
    )
    with cvs_core.Cluster(["stalling-host"], ssh_config=cfg, connect_timeout=1) as cl:
        r = cl.exec("true")[0]
        assert r.status == "unreachable"
        assert "did not finish connecting within 8s" in r.error
        assert cl.master_pids() == []
    assert remote_procs(marker) == [], "the ProxyCommand outlived the launch"
    assert remote_procs("stalling-host") == [], "an ssh of the launch outlived it"


def test_bounded_concurrent_connects_with_progress(sshd) -> None:
    """max_connect bounds the hosts in their handshake at once (a connect storm on a
    thousand hosts), and progress shows each host connecting, then connected."""

    def peak(max_connect: int | None) -> int:
        seen: list[tuple[str, str]] = []
        kw = {} if max_connect is None else {"max_connect": max_connect}
        with cvs_core.Cluster(sshd.hosts, ssh_config=sshd.ssh_config, **kw) as cl:
            assert cl.exec("true", progress=lambda h, p: seen.append((h, p))).ok
        connecting, top = set(), 0
        for host, phase in seen:
            if phase == "connecting":
                connecting.add(host)
                top = max(top, len(connecting))
            elif phase in ("connected", "done"):
                connecting.discard(host)
        assert {h for h, p in seen if p == "connected"} == set(sshd.hosts)
        return top

    assert peak(2) == 2
    assert peak(1) == 1
    assert peak(None) > 2  # the default (64) lets all six connect together
    with pytest.raises(cvs_core.CvsError, match="max_connect"):
        cvs_core.Cluster(sshd.hosts, max_connect=0)


def test_thread_safe_from_many_python_threads(ssh_cluster, sshd) -> None:
    errors: list[str] = []

    def worker(n: int) -> None:
        for i in range(25):
            res = ssh_cluster.exec(f"echo {n}-{i}")
            if not res.ok or {r.stdout for r in res} != {f"{n}-{i}\n"}:
                errors.append(f"{n}-{i}: {res}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- configuration, jump host, kex ----------------------------------------------------------------


def test_explicit_user_key_known_hosts_without_ssh_config(sshd) -> None:
    with cvs_core.Cluster(
        sshd.hosts[:2], user=sshd.user, key=sshd.key, known_hosts=sshd.known_hosts
    ) as cl:
        assert cl.exec("id -un").fold()[0].stdout.strip() == sshd.user
        # No user config chose a key exchange: the master proposes curve25519 first.
        args = Path(f"/proc/{cl.master_pids()[0]}/cmdline").read_bytes().split(b"\0")
        assert b"KexAlgorithms=curve25519-sha256," in b" ".join(args)
    with cvs_core.Cluster(sshd.hosts[:1], ssh_config=sshd.ssh_config) as cl:
        cl.exec("true")
        args = Path(f"/proc/{cl.master_pids()[0]}/cmdline").read_bytes()
        assert b"KexAlgorithms" not in args  # the ssh_config chose; it is respected


def test_jump_host(sshd) -> None:
    target = sshd.hosts[1]
    with cvs_core.Cluster([target], ssh_config=sshd.ssh_config, jump_host=sshd.hosts[0]) as cl:
        r = cl.exec("echo $CVS_HOST_NAME")[0]
        assert r.ok, r.error
        assert r.stdout == "host2\n"
        # The master reaches host2 through an `ssh -W host2:22 host1` hop (ProxyJump).
        hops = []
        for pid in os.listdir("/proc"):
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args[0].endswith(b"ssh") and b"-W" in args:
                hops.append(args)
        assert any(
            sshd.hosts[0].encode() in a and any(target.encode() in w for w in a) for a in hops
        ), hops


def test_from_config(sshd, write_json) -> None:
    cfg = cvs_core.load_config(
        {
            "node_dict": {h: {} for h in sshd.hosts[:2]},
            "username": sshd.user,
            "priv_key_file": str(sshd.key),
        }
    )
    with cvs_core.Cluster.from_config(cfg, known_hosts=sshd.known_hosts) as cl:
        assert cl.hosts == sshd.hosts[:2]
        assert cl.exec("true").ok


# -- progress and logging -----------------------------------------------------------------------


def test_progress_callback_and_logging(sshd, caplog) -> None:
    seen: list[tuple[str, str]] = []
    caplog.set_level(logging.DEBUG, logger="cvs_core")
    with cvs_core.Cluster(sshd.hosts[:2], ssh_config=sshd.ssh_config) as cl:
        cl.exec("true", progress=lambda host, phase: seen.append((host, phase)))
    for h in sshd.hosts[:2]:
        phases = [p for host, p in seen if host == h]
        assert phases == ["connecting", "connected", "running", "done"]
    text = caplog.text
    assert f"{sshd.hosts[0]}: connected in" in text
    assert f"{sshd.hosts[0]}: ok in" in text
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("2 hosts in" in m and "2 ok" in m for m in infos)
    assert str(sshd.key) not in text and "PRIVATE KEY" not in text


def test_progress_callback_exception_cancels_the_call(sshd) -> None:
    def boom(host: str, phase: str) -> None:
        if phase == "running":
            raise RuntimeError("stop now")

    with cvs_core.Cluster(sshd.hosts[:1], ssh_config=sshd.ssh_config) as cl:
        with pytest.raises(RuntimeError, match="stop now"):
            cl.exec("sleep 1000.375", progress=boom)
        deadline = time.monotonic() + 5
        while remote_procs("sleep 1000.375") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert remote_procs("sleep 1000.375") == []


# -- file transfer --------------------------------------------------------------------------------


def test_upload_and_download_any_size(ssh_cluster, sshd, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    data = os.urandom(20 * 1024 * 1024 + 7)
    src.write_bytes(data)
    remote = tmp_path / "remote-copy-$(whoami).bin"  # a name the shell must not expand
    res = ssh_cluster.upload(src, str(remote), hosts=sshd.hosts[:2])
    assert res.ok and [r.path for r in res] == [str(remote)] * 2
    assert remote.read_bytes() == data
    out = ssh_cluster.download(str(remote), tmp_path / "down", hosts=sshd.hosts[:2])
    assert list(out) == sshd.hosts[:2]
    for h, p in out.items():
        assert p == str(tmp_path / "down" / h / remote.name)
        assert hashlib.sha256(Path(p).read_bytes()).digest() == hashlib.sha256(data).digest()


def test_upload_per_host_and_failed_download(ssh_cluster, sshd, tmp_path: Path) -> None:
    files = {}
    for i, h in enumerate(sshd.hosts[:3]):
        p = tmp_path / f"in{i}"
        p.write_text(f"payload {i}\n")
        files[h] = (p, str(tmp_path / f"out{i}"))
    assert ssh_cluster.upload_per_host(files).ok
    assert [(tmp_path / f"out{i}").read_text() for i in range(3)] == [
        f"payload {i}\n" for i in range(3)
    ]
    with pytest.raises(cvs_core.TransferError) as info:
        ssh_cluster.download(str(tmp_path / "absent"), tmp_path / "dl", hosts=sshd.hosts[:2])
    assert info.value.paths == {}
    assert [r.status for r in info.value.results] == ["exit_nonzero", "exit_nonzero"]
    assert not (tmp_path / "dl" / sshd.hosts[0] / "absent").exists()
    got = ssh_cluster.download(str(tmp_path / "out0"), tmp_path / "dl2", check=False)
    assert list(got) == sshd.hosts  # the file exists on the shared filesystem for every host
    with pytest.raises(cvs_core.CvsError, match="does not exist"):
        ssh_cluster.upload(tmp_path / "missing", "/tmp/x")
