"""cvs_core.compat.parallel against real sshd processes (harness/sshd_cluster.py): CVS's result
strings, pruning, stop_on_errors, files, threads, session hygiene, and 64 hosts in one process.

The harness's known_hosts and ssh_config reach the compat classes the way a CVS user's would:
through CVS_CORE_KNOWN_HOSTS and CVS_CORE_SSH_CONFIG (CVS's constructors have no such argument).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from harness.sshd_cluster import SshdCluster

from cvs_core.compat.parallel import MultiProcessPssh, Pssh, scp
from cvs_core.compat.parallel import pssh as pssh_mod
from cvs_core.compat.parallel.config import ParallelConfig
from cvs_core.compat.parallel.exceptions import (
    AuthenticationError,
    HostKeyError,
    SCPError,
    Timeout,
)

pytestmark = pytest.mark.live

ABORT_UNREACHABLE = "\nABORT: Host Unreachable Error"


def use_cluster(monkeypatch: pytest.MonkeyPatch, cluster) -> None:
    monkeypatch.setenv(pssh_mod.ENV_KNOWN_HOSTS, str(cluster.known_hosts))
    monkeypatch.setenv(pssh_mod.ENV_SSH_CONFIG, str(cluster.ssh_config))
    monkeypatch.delenv(pssh_mod.ENV_HOST_KEY_POLICY, raising=False)
    monkeypatch.delenv("CVS_HOSTS_PER_SHARD", raising=False)


@pytest.fixture
def make(sshd, monkeypatch):
    """Build compat handles on the session's sshd hosts; every handle is destroyed after."""
    use_cluster(monkeypatch, sshd)
    made: list = []

    def build(hosts=None, cls=Pssh, **kw):
        kw.setdefault("user", sshd.user)
        kw.setdefault("pkey", str(sshd.key))
        handle = cls(None, list(sshd.hosts if hosts is None else hosts), **kw)
        made.append(handle)
        return handle

    yield build
    for handle in made:
        handle.destroy_clients()


def names(sshd, hosts) -> dict[str, str]:
    by_dest = {h.destination: h.name for h in sshd.host_list}
    return {h: by_dest[h] for h in hosts}


def remote_procs(pattern: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def our_masters() -> set[int]:
    """PIDs of live OpenSSH masters started by this process's cvs_core clusters."""
    tag = f"cvs-core-{os.getpid()}-".encode()
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"-M" in args and any(tag in a for a in args):
            found.add(int(pid))
    return found


def settle(predicate, wait: float = 3.0) -> bool:
    deadline = time.monotonic() + wait
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- results -------------------------------------------------------------------------------------


def test_string_and_detailed_shapes_stdout_then_stderr(make, sshd) -> None:
    hosts = sshd.hosts[:3]
    p = make(hosts)
    cmd = "echo $CVS_HOST_NAME; printf 'a\\tb\\n' >&2; printf 'c\\td\\n'; exit 3"
    got = p.exec(cmd)
    assert list(got) == hosts
    for h, name in names(sshd, hosts).items():
        # all stdout lines, then all stderr lines; tabs as three spaces; a final newline
        assert got[h] == f"{name}\nc   d\na   b\n\n"
    detailed = p.exec(cmd, detailed=True)
    assert {h: v["exit_code"] for h, v in detailed.items()} == dict.fromkeys(hosts, 3)
    assert detailed[hosts[0]]["output"] == got[hosts[0]]
    assert p.exec("true", detailed=True)[hosts[1]] == {"output": "\n", "exit_code": 0}
    r = p.exec("no_such_command_xyz", detailed=True)[hosts[2]]
    assert r["exit_code"] == 127 and "not found" in r["output"]


def test_env_vars_are_exported_on_the_host(make, sshd) -> None:
    p = make(sshd.hosts[:2], env_vars={"PATH": "/opt/cvs bin:$PATH", "GREET": "hi there", "N": 3})
    got = p.exec('echo "$GREET"; echo $N; echo "$PATH" | cut -d: -f1; command -v ls')
    for out in got.values():
        lines = out.splitlines()
        assert lines[:3] == ["hi there", "3", "/opt/cvs bin"]
        assert lines[3].endswith("/ls")  # the original PATH is kept after the prefix


def test_timeout_marks_only_the_slow_host(make, sshd) -> None:
    hosts = sshd.hosts[:4]
    slow = hosts[1]
    p = make(hosts, stop_on_errors=False)
    marker = "sleep 1000.31"
    cmd = f'[ "$CVS_HOST_NAME" = {names(sshd, [slow])[slow]} ] && {marker}; echo done'
    # 5 s: the fast hosts must finish well within it even on a loaded 2-core machine
    got = p.exec(cmd, timeout=5, detailed=True)
    assert list(got) == hosts
    assert got[slow] == {
        "output": (
            f"timed out after 5.0s; remote processes killed\nABORT: Timeout Error in Host: {slow}\n"
        ),
        "exit_code": -1,
    }
    for h in hosts:
        if h != slow:  # CVS marked every host read after the slow one as timed out
            assert got[h] == {"output": "done\n\n", "exit_code": 0}
    assert remote_procs(marker) == []
    assert p.unreachable_hosts == []  # re-probed, it answers: not pruned
    p.stop_on_errors = True
    with pytest.raises(Timeout):
        p.exec(cmd, timeout=1)


def test_inactivity_timeout_keeps_partial_output(make, sshd) -> None:
    p = make(sshd.hosts[:1], stop_on_errors=False)
    got = p.exec("echo started; sleep 1000.32", inactivity_timeout=1)
    h = sshd.hosts[0]
    assert got[h] == (
        f"started\nno output for 1.0s; remote processes killed\nABORT: Timeout Error in Host: {h}\n"
    )


@pytest.mark.parametrize("size", [100_000, 300_000])
def test_no_command_size_cap(make, sshd, size: int) -> None:
    p = make(sshd.hosts[:2])
    got = p.exec(f"echo {'x' * size} | wc -c")
    assert list(got.values()) == [f"{size + 1}\n\n"] * 2


# -- unreachable hosts and stop_on_errors ----------------------------------------------------------


def test_unreachable_host_is_pruned_and_reported_on_every_call(make, sshd) -> None:
    dead = sshd.dead.destination
    noauth = sshd.extra["noauth"].destination
    live = sshd.hosts[:2]
    hosts = [*live[:1], dead, *live[1:], noauth]
    p = make(hosts, stop_on_errors=False)
    first = p.exec("echo up")
    assert list(first) == hosts
    assert first[dead].startswith(f"Error connecting to host '{dead}' - ")
    assert "Connection refused" in first[dead]
    assert first[dead].endswith("\n\nABORT: Host Unreachable Error")
    assert first[noauth].startswith(f"Authentication error while connecting to host '{noauth}'")
    assert "ABORT" not in first[noauth]  # auth errors never prune (CVS)
    assert p.reachable_hosts == [live[0], live[1], noauth]
    assert p.unreachable_hosts == [dead]
    for _ in range(2):
        got = p.exec("echo up")
        assert list(got) == [*live, noauth, dead]  # same host set, the pruned host last
        assert got[dead] == ABORT_UNREACHABLE
        assert got[live[0]] == "up\n\n" and got[live[1]] == "up\n\n"
        detailed = p.exec("echo up", detailed=True)
        assert detailed[dead] == {"output": ABORT_UNREACHABLE, "exit_code": -1}
        assert detailed[noauth]["exit_code"] == -1
    # exec_cmd_list after pruning: a list for the original hosts is re-aligned
    got = p.exec_cmd_list([f"echo {i}" for i in range(len(hosts))])
    assert got[live[0]] == "0\n\n" and got[live[1]] == "2\n\n" and got[dead] == ABORT_UNREACHABLE
    got = p.exec_cmd_list(["echo a", "echo b", "echo c"])  # ... and one for the reachable hosts
    assert got[live[1]] == "b\n\n"


def test_silent_host_is_pruned_after_the_connect_timeout(make, sshd) -> None:
    silent = sshd.silent.destination
    p = make([sshd.hosts[0], silent], stop_on_errors=False, timeout=2)
    got = p.exec("echo up")
    assert got[sshd.hosts[0]] == "up\n\n"
    assert got[silent].endswith("\n\nABORT: Host Unreachable Error")
    assert p.unreachable_hosts == [silent]
    assert p.exec("echo up")[silent] == ABORT_UNREACHABLE


@pytest.mark.parametrize(
    ("which", "kind"),
    [
        ("dead", ConnectionError),
        ("noauth", AuthenticationError),
        ("wrongkey", HostKeyError),
    ],
)
def test_stop_on_errors_raises(make, sshd, which, kind) -> None:
    bad = sshd.dead.destination if which == "dead" else sshd.extra[which].destination
    p = make([sshd.hosts[0], bad])  # CVS's default stop_on_errors=True
    with pytest.raises(kind) as info:
        p.exec("echo up")
    assert info.value.host == bad
    assert p.unreachable_hosts == []


def test_host_key_policy_from_the_environment(make, sshd, monkeypatch) -> None:
    wrong = sshd.extra["wrongkey"].destination
    monkeypatch.setenv(pssh_mod.ENV_HOST_KEY_POLICY, "off")  # CVS's own behaviour, opt-in
    assert make([wrong]).exec("echo in")[wrong] == "in\n\n"


# -- files ---------------------------------------------------------------------------------------


def test_upload_and_download_shapes(make, sshd, tmp_path: Path) -> None:
    hosts = sshd.hosts[:2]
    p = make(hosts)
    src = tmp_path / "payload.bin"
    data = os.urandom(3 * 1024 * 1024)
    src.write_bytes(data)
    remote = tmp_path / "remote" / "new dir" / "copy.bin"  # the parent is created, as SFTP did
    assert p.upload_file(str(src), str(remote)) is None
    assert remote.read_bytes() == data
    assert p.scp_file(str(src), str(remote)) is None
    local = tmp_path / "local" / "got.bin"
    got = p.download_file(str(remote), str(local))
    assert got == {h: f"{local}_{h}" for h in hosts}
    assert all(Path(path).read_bytes() == data for path in got.values())
    got = p.download_file(str(remote), str(local), suffix_separator="@", hosts=hosts[1:])
    assert got == {hosts[1]: f"{local}@{hosts[1]}"}


def test_transfer_failures_raise_cvs_ioerrors(make, sshd, tmp_path: Path) -> None:
    hosts = sshd.hosts[:2]
    p = make(hosts)
    missing = tmp_path / "absent.txt"
    local = tmp_path / "dl"
    with pytest.raises(OSError) as info:
        p.download_file(str(missing), str(local))
    msg = str(info.value)
    assert msg.startswith(f"download_file '{missing}' -> '{local}' failed on 2/2 hosts: ")
    assert f"('{hosts[0]}', SFTPIOError(" in msg and "No such file or directory" in msg
    src = tmp_path / "src.txt"
    src.write_text("x")
    with pytest.raises(OSError) as info:
        p.upload_file(str(src), "/proc/no/such/dir/f")
    assert str(info.value).startswith(
        f"upload_file '{src}' -> '/proc/no/such/dir/f' failed on 2/2 hosts: "
    )
    with pytest.raises(ValueError, match=r"SFTP download requested unreachable host\(s\)"):
        p.download_file(str(src), str(local), hosts=["10.255.255.1"])


def test_upload_file_list_and_directories(make, sshd, tmp_path: Path) -> None:
    hosts = sshd.hosts[:3]
    p = make(hosts)
    files = {}
    for i, h in enumerate(hosts[:2]):  # a subset of the hosts (CVS: HostArgumentError)
        f = tmp_path / f"in{i}"
        f.write_text(f"payload {i}\n")
        files[h] = (str(f), str(tmp_path / f"out{i}"))
    files[hosts[0]] = (str(tmp_path / "in0"), str(tmp_path / "out0"))
    got = p.upload_file_list(files)
    assert got == {h: f"{h}: SUCCESS" for h in hosts[:2]}
    assert (tmp_path / "out1").read_text() == "payload 1\n"
    bad = p.upload_file_list({hosts[2]: (str(tmp_path / "in0"), "/proc/nope/x")})
    assert bad[hosts[2]].startswith(f"{hosts[2]}: FAILED - ")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("A")
    (tree / "sub" / "b.txt").write_text("B")
    # The loopback hosts share one file system: three tar extractions into one directory race
    # ("Cannot open: File exists"), so each host gets its own destination.
    copies = [tmp_path / f"host{i}" / "tree-copy" for i in range(len(hosts))]
    for host, copy in zip(hosts, copies):
        make([host]).upload_file(str(tree), str(copy), recurse=True)
        assert (copy / "sub" / "b.txt").read_text() == "B"
    # Reading one path from every host at once is safe; each lands in its own local copy.
    got = p.download_file(str(copies[0]), str(tmp_path / "back"), recurse=True)
    assert list(got) == hosts
    for path in got.values():
        assert (Path(path) / "a.txt").read_text() == "A"
        assert (Path(path) / "sub" / "b.txt").read_text() == "B"


# -- threads, sessions, logging -------------------------------------------------------------


def test_one_pssh_from_many_threads_while_pruning(make, sshd) -> None:
    dead = sshd.dead.destination
    hosts = [*sshd.hosts, dead]
    p = make(hosts, stop_on_errors=False)
    errors: list[str] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                got = p.exec(f"echo {n}-{i}", print_console=False)
                if set(got) != set(hosts) or not got[dead].endswith(ABORT_UNREACHABLE):
                    errors.append(f"{n}-{i}: {got}")
                for h in sshd.hosts:
                    if got[h] != f"{n}-{i}\n\n":
                        errors.append(f"{n}-{i} {h}: {got[h]!r}")
                got = p.exec_cmd_list([f"echo {h}" for h in hosts], print_console=False)
                if any(got[h] != f"{h}\n\n" for h in sshd.hosts):
                    errors.append(f"list {n}-{i}: {got}")
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert p.unreachable_hosts == [dead]


def test_sessions_never_leak(make, sshd) -> None:
    baseline = our_masters()
    dead = sshd.dead.destination
    p = make([*sshd.hosts[:3], dead], stop_on_errors=False)
    p.exec("true")  # connects 3 masters, probes the dead host, prunes it, rebuilds the client
    p.exec("true")  # the rebuilt client connects its own masters; the first set is closed
    assert settle(lambda: len(our_masters() - baseline) == 3), our_masters() - baseline
    current = set(p.client.master_pids())
    assert our_masters() - baseline == current
    p.destroy_clients()
    assert settle(lambda: not (our_masters() - baseline))
    assert not hasattr(p, "client")  # CVS: del self.client; a later call raises AttributeError


def test_cvs_log_lines_on_the_root_logger(make, sshd, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    h = sshd.hosts[0]
    p = make([h])
    p.exec("echo logged")
    root = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "root"]
    info = [m for lvl, m in root if lvl == logging.INFO]
    assert "cmd = echo logged" in info
    i = info.index(f"Host == {h} ==")
    assert info[i - 1] == info[i + 1] == "#" + "-" * 58 + "#"
    assert info[i + 2] == "logged"
    assert (logging.DEBUG, f"Command completed on {h}: echo logged") in root
    # CVS's three construction lines (seams §4.1; the key path is CVS's own line)
    assert info[:3] == [
        f"Connecting to hosts: ['{h}']",
        f"User: {sshd.user}",
        f"Private key: {sshd.key}",
    ]


# -- scp -----------------------------------------------------------------------------------------


def test_scp_put_get_and_remote_to_remote(sshd, monkeypatch, tmp_path: Path) -> None:
    use_cluster(monkeypatch, sshd)
    h1, h2 = sshd.hosts[:2]
    src = tmp_path / "scp-src.txt"
    src.write_text("over scp\n")
    assert scp(str(src), f"{h1}:{tmp_path}/put.txt", sshd.user, None) is None
    assert (tmp_path / "put.txt").read_text() == "over scp\n"
    scp(f"{h1}:{tmp_path}/put.txt", str(tmp_path / "got.txt"), sshd.user, None)
    assert (tmp_path / "got.txt").read_text() == "over scp\n"
    scp(f"{h1}:{tmp_path}/put.txt", f"{h2}:{tmp_path}/r2r.txt", sshd.user, None, sshd.user)
    assert (tmp_path / "r2r.txt").read_text() == "over scp\n"
    with pytest.raises(SCPError, match="failed"):
        scp(f"{h1}:{tmp_path}/absent", str(tmp_path / "x"), sshd.user, None)


# -- 64 hosts in one process -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd64(tmp_path_factory: pytest.TempPathFactory):
    from harness.sshd_cluster import prerequisites_missing

    why = prerequisites_missing()
    if why:
        pytest.skip(why)
    cluster = SshdCluster(64, tmp_path_factory.mktemp("sshd64")).start()
    yield cluster
    cluster.stop()


def python_children() -> list[int]:
    me = str(os.getpid())
    kids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if fields[1] == me and "python" in os.path.basename(exe):
            kids.append(int(pid))
    return kids


def test_64_hosts_in_one_process_with_multiprocess_pssh(sshd64, monkeypatch) -> None:
    use_cluster(monkeypatch, sshd64)
    dead = sshd64.dead.destination
    hosts = [*sshd64.hosts, dead]
    h = MultiProcessPssh(None, hosts, user=sshd64.user, pkey=str(sshd64.key), stop_on_errors=False)
    try:
        assert h.pssh is None and h.client is None and h.sharder is not None  # "sharded" surface
        # detailed=True with print_console=True crashed CVS's sharded path
        got = h.exec("echo $CVS_HOST_NAME", detailed=True, print_console=True)
        assert list(got) == hosts
        expected = {x.destination: f"{x.name}\n\n" for x in sshd64.host_list}
        assert {k: v["output"] for k, v in got.items() if k != dead} == expected
        assert got[dead]["output"].endswith("\n\nABORT: Host Unreachable Error")
        assert python_children() == [] and multiprocessing.active_children() == []
        for _ in range(2):
            got = h.exec("echo $CVS_HOST_NAME")
            # CVS's sharded path dropped previously pruned hosts: here they are reported
            assert list(got) == hosts and got[dead] == ABORT_UNREACHABLE
            assert {k: v for k, v in got.items() if k != dead} == expected
        got = h.exec_cmd_list([f"echo {i}" for i in range(len(hosts))])
        assert got[sshd64.hosts[63]] == "63\n\n" and got[dead] == ABORT_UNREACHABLE
        assert h.reachable_hosts == sshd64.hosts and h.unreachable_hosts == [dead]
        assert python_children() == []
    finally:
        h.destroy_clients()


# -- Ctrl-C in the sharded path -------------------------------------------------------------------


def test_cluster_interrupt_from_another_thread_kills_remote_work(ssh_cluster) -> None:
    marker = "sleep 1000.78"
    got: list = []
    t = threading.Thread(
        target=lambda: got.append(ssh_cluster.exec(marker, hosts=ssh_cluster.hosts[:2]))
    )
    t.start()
    assert settle(lambda: len(remote_procs(marker)) >= 2, wait=10)
    ssh_cluster.interrupt()
    t.join(30)
    assert not t.is_alive()
    assert [r.status for r in got[0]] == ["cancelled", "cancelled"]
    assert settle(lambda: remote_procs(marker) == [], wait=5)
    assert ssh_cluster.exec("echo again")[0].status == "ok"  # later calls are not affected


def test_ctrl_c_during_a_sharded_call_kills_every_shard(make, sshd) -> None:
    import signal

    marker = "sleep 1000.79"
    h = make(sshd.hosts[:3], cls=MultiProcessPssh, config=ParallelConfig(hosts_per_shard=1))
    assert h.pssh is None
    main = threading.main_thread().ident
    timer = threading.Timer(
        0,
        lambda: (
            settle(lambda: len(remote_procs(marker)) >= 3, wait=15)
            and signal.pthread_kill(main, signal.SIGINT)
        ),
    )
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        h.exec(marker, timeout=40, print_console=False)  # without the interrupt: 40 s
    timer.join()
    assert time.monotonic() - started < 25
    assert settle(lambda: remote_procs(marker) == [], wait=5)


def test_compat_parallel_ssh_client_round_trips(sshd, tmp_path: Path) -> None:
    """cvs-core's own ParallelSSHClient, driven directly as CVS's Pssh drives it: run_command
    output items, copy_file and copy_remote_file greenlet-like objects, pool.join()."""
    from cvs_core.compat.parallel.client import ParallelSSHClient

    hosts = sshd.hosts[:3]
    client = ParallelSSHClient(
        hosts,
        user=sshd.user,
        pkey=str(sshd.key),
        ssh_config=sshd.ssh_config,
        known_hosts=sshd.known_hosts,
        keepalive_seconds=30,
    )
    try:
        out = client.run_command("printf 'a\\tb\\nc'; echo err >&2; exit 3", stop_on_errors=False)
        assert [o.host for o in out] == hosts
        for o in out:
            assert list(o.stdout) == ["a\tb", "c"] and list(o.stderr) == ["err"]
            assert o.exit_code == 3 and o.exception is None
        args = [{"n": str(i)} for i in range(len(hosts))]
        per_host = client.run_command("echo %(n)s", host_args=args)
        assert [list(o.stdout) for o in per_host] == [["0"], ["1"], ["2"]]
        src = tmp_path / "payload.bin"
        src.write_bytes(bytes(range(256)) * 4000)
        remote = {h: tmp_path / f"remote-{h}" / "payload.bin" for h in hosts}
        copy_args = [{"local_file": str(src), "remote_file": str(remote[h])} for h in hosts]
        sent = client.copy_file("%(local_file)s", "%(remote_file)s", copy_args=copy_args)
        client.pool.join()
        for t in sent:
            assert t.get() is None
        for h in hosts:
            assert remote[h].read_bytes() == src.read_bytes()
        local = tmp_path / "back"
        got = client.copy_remote_file(str(remote[hosts[0]]), str(local), suffix_separator="@")
        client.pool.join()
        for t in got:
            assert t.get() is None
        for h in hosts:
            assert Path(f"{local}@{h}").read_bytes() == src.read_bytes()
        missing = client.copy_remote_file(str(tmp_path / "nope"), str(tmp_path / "x"))
        client.pool.join()
        with pytest.raises(Exception):  # noqa: B017 - parallel-ssh raises its own SFTP errors
            missing[0].get()
    finally:
        client.close()
