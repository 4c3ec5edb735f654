"""Persistent connections (``persist``) across processes, against real sshd processes on
loopback addresses: a later process re-attaches to the masters an earlier one left, other
settings never share them, dead sockets are replaced, the control directory is checked, and
``cvs-core disconnect`` ends them.

Every test has its own control directory (short, under /tmp: a socket path must fit in
``sun_path``), and ends the masters it made.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import cvs_core

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cdir():
    d = tempfile.mkdtemp(prefix="cvp-", dir="/tmp")
    yield d
    cvs_core.disconnect_all(control_dir=d)
    shutil.rmtree(d, ignore_errors=True)


def masters_in(cdir: str) -> dict[int, str]:
    """Live ``ssh -M`` processes whose control socket is in `cdir`: PID -> host."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        args = [a.decode() for a in args if a]
        if state != "Z" and "-M" in args and any(a.startswith(cdir + "/") for a in args):
            found[int(entry.name)] = args[-1]
    return found


def child(code: str, env: dict[str, str] | None = None, **kw) -> dict:
    """Run `code` in a fresh Python process; it prints one JSON line last."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        **kw,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def connect_and_exit(sshd, cdir: str, extra: str = "", persist: str = "'5m'") -> dict:
    """A process that runs `hostname` everywhere with `persist` and exits (closing its cluster):
    its master PIDs by host, what the hosts answered, and the hosts it re-attached to (from its
    DEBUG log: no handshake was made for them)."""
    return child(
        f"""
        import json, logging, cvs_core
        lines = []
        class Keep(logging.Handler):
            def emit(self, record):
                lines.append(record.getMessage())
        logging.getLogger("cvs_core").addHandler(Keep())
        logging.getLogger("cvs_core").setLevel(logging.DEBUG)
        cl = cvs_core.Cluster({sshd.hosts!r}, ssh_config={str(sshd.ssh_config)!r},
                              persist={persist}, control_dir={cdir!r}{extra})
        res = cl.exec("hostname")
        out = {{"ok": res.ok, "stdout": [r.stdout for r in res], "pids": sorted(cl.master_pids()),
               "reattached": sorted(l.split(":")[0] for l in lines if l.endswith("(reattached)"))}}
        cl.close()
        print(json.dumps(out))
        """
    )


def test_a_second_process_reattaches_without_a_new_master(sshd, cdir) -> None:
    a = connect_and_exit(sshd, cdir)
    assert a["ok"], a
    assert len(a["pids"]) == len(sshd.hosts)
    # A closed its cluster and exited: its masters stay, one per host.
    assert sorted(masters_in(cdir)) == a["pids"]
    assert sorted(masters_in(cdir).values()) == sorted(sshd.hosts)
    b = connect_and_exit(sshd, cdir)
    assert b["ok"] and b["stdout"] == a["stdout"]
    assert b["pids"] == a["pids"], "B launched masters of its own"
    assert a["reattached"] == [] and b["reattached"] == sorted(sshd.hosts)
    assert sorted(masters_in(cdir)) == a["pids"], "a new ssh -M appeared"
    # Sockets are short hashes, each with its sidecar naming the host (never a secret).
    names = sorted(os.listdir(cdir))
    sockets = [n for n in names if "." not in n]
    assert len(sockets) == len(sshd.hosts)
    for s in sockets:
        assert s.startswith("p-") and len(s) == 18
        side = json.loads(Path(cdir, s + ".json").read_text())
        assert side["host"] in sshd.hosts
        assert stat.S_IMODE(os.stat(Path(cdir, s + ".json")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cdir).st_mode) == 0o700


def test_two_processes_connecting_at_once_share_one_master_per_host(sshd, cdir) -> None:
    """The per-socket lock: two processes started together never launch two masters on one
    socket (the loser's `ssh -M` would find it taken and linger as a plain connection)."""
    code = textwrap.dedent(
        f"""
        import json, sys, cvs_core
        sys.stdin.readline()  # both start connecting together
        cl = cvs_core.Cluster({sshd.hosts!r}, ssh_config={str(sshd.ssh_config)!r},
                              persist="5m", control_dir={cdir!r})
        ok = cl.exec("true").ok
        print(json.dumps({{"ok": ok, "pids": sorted(cl.master_pids())}}))
        cl.close()
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert all(o["ok"] for o in outs)
    assert outs[0]["pids"] == outs[1]["pids"]
    live = masters_in(cdir)
    assert sorted(live) == outs[0]["pids"] and len(live) == len(sshd.hosts)
    # No stray ssh of this test's hosts outside the masters (a lingering plain connection).
    strays = subprocess.run(["pgrep", "-f", "--", f"-S {cdir}/"], capture_output=True, text=True)
    assert sorted(int(x) for x in strays.stdout.split()) == outs[0]["pids"]


def test_other_settings_never_reuse_the_masters(sshd, cdir, tmp_path: Path) -> None:
    a = connect_and_exit(sshd, cdir)
    known = tmp_path / "known_hosts_copy"
    shutil.copy(sshd.known_hosts, known)
    key = tmp_path / "key_copy"
    shutil.copy(sshd.key, key)
    key.chmod(0o600)
    variants = {
        "known_hosts": f", known_hosts={str(known)!r}",
        "policy": ", host_key_policy='accept-new'",
        "key": f", key={str(key)!r}",
    }
    seen = set(a["pids"])
    for what, extra in variants.items():
        b = connect_and_exit(sshd, cdir, extra)
        assert b["ok"], (what, b)
        assert not set(b["pids"]) & seen, f"{what}: reused another configuration's master"
        seen |= set(b["pids"])
    # A's masters were left alone, and each configuration has its own.
    live = set(masters_in(cdir))
    assert set(a["pids"]) <= live
    assert len(live) == len(sshd.hosts) * (1 + len(variants))


def test_an_edited_key_file_is_another_connection(sshd, cdir, tmp_path: Path) -> None:
    key = tmp_path / "key"
    shutil.copy(sshd.key, key)
    key.chmod(0o600)
    a = connect_and_exit(sshd, cdir, f", key={str(key)!r}")
    os.utime(key, (time.time() + 5, time.time() + 5))  # rotated in place, same path
    b = connect_and_exit(sshd, cdir, f", key={str(key)!r}")
    assert b["ok"] and not set(a["pids"]) & set(b["pids"])


def test_a_killed_masters_socket_is_replaced(sshd, cdir) -> None:
    a = connect_and_exit(sshd, cdir)
    victim = a["pids"][0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while victim in masters_in(cdir) and time.monotonic() < deadline:
        time.sleep(0.05)
    b = connect_and_exit(sshd, cdir)
    assert b["ok"], b
    assert victim not in b["pids"]
    assert len(set(a["pids"]) & set(b["pids"])) == len(sshd.hosts) - 1
    assert sorted(masters_in(cdir)) == b["pids"]


def test_a_socket_recorded_for_another_configuration_is_never_used(sshd, cdir) -> None:
    a = connect_and_exit(sshd, cdir)
    # Tamper with one sidecar: the socket now claims another identity.
    side = next(p for p in Path(cdir).glob("p-*.json"))
    doc = json.loads(side.read_text())
    doc["known_hosts"] = "/elsewhere"
    side.write_text(json.dumps(doc))
    b = connect_and_exit(sshd, cdir)
    assert b["ok"]
    replaced = set(a["pids"]) - set(b["pids"])
    assert len(replaced) == 1, "the mismatched master was used (or more were replaced)"
    assert not replaced & set(masters_in(cdir)), "the mismatched master was left running"


def test_close_without_persist_is_unchanged(sshd, cdir) -> None:
    r = child(
        f"""
        import json, cvs_core
        cl = cvs_core.Cluster({sshd.hosts!r}, ssh_config={str(sshd.ssh_config)!r},
                              persist=False, control_dir={cdir!r})
        res = cl.exec("true")
        pids = cl.master_pids()
        cl.close()
        print(json.dumps({{"ok": res.ok, "pids": pids}}))
        """,
        env={"CVS_CORE_PERSIST": "10m"},  # persist=False wins over the environment
    )
    assert r["ok"] and len(r["pids"]) == len(sshd.hosts)
    assert os.listdir(cdir) == []
    for pid in r["pids"]:
        assert not Path(f"/proc/{pid}/cmdline").exists() or b"-M" not in Path(
            f"/proc/{pid}/cmdline"
        ).read_bytes().split(b"\0")


def test_environment_turns_it_on_for_compat(sshd, cdir) -> None:
    """CVS's own code (through cvs_core.compat) never passes persist: CVS_CORE_PERSIST does."""
    r = child(
        f"""
        import json
        from cvs_core.compat.parallel import Pssh
        p = Pssh(None, {sshd.hosts!r}, user={sshd.user!r}, pkey={str(sshd.key)!r})
        out = p.exec("hostname")
        p.destroy_clients()
        print(json.dumps({{"hosts": sorted(out)}}))
        """,
        env={
            "CVS_CORE_PERSIST": "5m",
            "CVS_CORE_CONTROL_DIR": cdir,
            "CVS_CORE_SSH_CONFIG": str(sshd.ssh_config),
            "CVS_CORE_KNOWN_HOSTS": str(sshd.known_hosts),
        },
    )
    assert r["hosts"] == sorted(sshd.hosts)
    assert sorted(masters_in(cdir).values()) == sorted(sshd.hosts)
    # A native process with the same settings finds them.
    b = connect_and_exit(
        sshd,
        cdir,
        f", user={sshd.user!r}, key={str(sshd.key)!r}, known_hosts={str(sshd.known_hosts)!r}"
        ", host_key_policy='accept-new'",  # compat's default, as CVS's AutoAddPolicy
    )
    assert b["ok"] and sorted(b["pids"]) == sorted(masters_in(cdir))


def test_bad_control_directories_are_refused(sshd, tmp_path: Path) -> None:
    def refused(d: str) -> str:
        with pytest.raises(cvs_core.CvsError) as exc:
            cvs_core.Cluster(sshd.hosts[:1], persist="1m", control_dir=d)
        return str(exc.value)

    base = tempfile.mkdtemp(prefix="cvb-", dir="/tmp")
    try:
        loose = os.path.join(base, "loose")
        os.mkdir(loose)
        os.chmod(loose, 0o755)
        assert "mode 0755" in refused(loose) and "chmod 700" in refused(loose)
        theirs = os.path.join(base, "theirs")
        os.mkdir(theirs, 0o700)
        os.chown(theirs, 65534, 65534)
        assert "owned by uid 65534" in refused(theirs)
        link = os.path.join(base, "link")
        ok = os.path.join(base, "ok")
        os.mkdir(ok, 0o700)
        os.symlink(ok, link)
        assert "not a directory" in refused(link)
        assert "too long" in refused("/tmp/" + "x" * 90)
        # Created when missing, 0700.
        fresh = os.path.join(base, "fresh")
        with cvs_core.Cluster(
            sshd.hosts[:1], ssh_config=sshd.ssh_config, persist="1m", control_dir=fresh
        ) as cl:
            assert cl.exec("true").ok
        assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700
        assert cvs_core.disconnect_all(control_dir=fresh) == sshd.hosts[:1]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_persist_values_are_checked(monkeypatch) -> None:
    for bad, words in [("1", "needs a unit"), ("10min", "is not"), (-5, "seconds"), ([1], "got")]:
        with pytest.raises(cvs_core.CvsError, match=words):
            cvs_core.Cluster(["h"], persist=bad)
    assert cvs_core._native.parse_persist_duration("2h") == 7200
    assert cvs_core._native.parse_persist_duration("off") is None
    monkeypatch.setenv("CVS_CORE_PERSIST", "soon")
    with pytest.raises(cvs_core.CvsError, match="CVS_CORE_PERSIST"):
        cvs_core.Cluster(["h"])


def test_cluster_file_persist(sshd, cdir, write_json) -> None:
    doc = {
        "node_dict": {h: {} for h in sshd.hosts[:2]},
        "username": sshd.user,
        "priv_key_file": str(sshd.key),
        "persist": "3m",
    }
    cfg = cvs_core.load_config(doc)
    assert cfg.persist == 180
    with pytest.raises(cvs_core.ConfigError, match="persist"):
        cvs_core.load_config({**doc, "persist": "3 minutes"})
    r = child(
        f"""
        import json, cvs_core
        cfg = cvs_core.load_config({doc!r})
        cl = cvs_core.Cluster.from_config(cfg, known_hosts={str(sshd.known_hosts)!r},
                                          control_dir={cdir!r})
        ok = cl.exec("true").ok
        cl.close()
        print(json.dumps({{"ok": ok}}))
        """
    )
    assert r["ok"]
    masters = masters_in(cdir)
    assert sorted(masters.values()) == sorted(sshd.hosts[:2])
    assert all(
        "ControlPersist=180" in Path(f"/proc/{p}/cmdline").read_bytes().decode() for p in masters
    )


def test_cli_persist_then_disconnect(sshd, cdir, write_json) -> None:
    cluster_file = write_json(
        "cluster.json",
        {
            "node_dict": {h: {} for h in sshd.hosts[:3]},
            "username": sshd.user,
            "priv_key_file": str(sshd.key),
        },
    )
    cli = [sys.executable, "-m", "cvs_core"]
    common = ["--ssh-config", str(sshd.ssh_config), "--control-dir", cdir, "-q", "--persist"]
    for _ in range(2):
        run = subprocess.run(
            [*cli, "exec", "--on-host", "--cluster-file", cluster_file, *common, "5m", "hostname"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
    masters = masters_in(cdir)
    assert sorted(masters.values()) == sorted(sshd.hosts[:3]), "one master per host, reused"
    bad = subprocess.run(
        [*cli, "exec", "--on-host", "--cluster-file", cluster_file, "--persist", "7", "true"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "needs a unit" in bad.stderr
    # Only the named hosts, then the rest.
    one = subprocess.run(
        [*cli, "disconnect", "--control-dir", cdir, "--hosts", sshd.hosts[0], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["ended"] == [sshd.hosts[0]]
    assert sorted(masters_in(cdir).values()) == sorted(sshd.hosts[1:3])
    rest = subprocess.run(
        [*cli, "disconnect", cluster_file, "--control-dir", cdir],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rest.returncode == 0, rest.stderr
    assert "ended 2 persistent connections" in rest.stdout
    deadline = time.monotonic() + 5
    while masters_in(cdir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert masters_in(cdir) == {}, "a master outlived disconnect"
    assert [n for n in os.listdir(cdir) if not n.endswith(".lock")] == []


def test_ctrl_c_in_b_kills_its_jobs_and_keeps_the_masters(sshd, cdir) -> None:
    a = connect_and_exit(sshd, cdir)
    marker = f"sleep 1000.{os.getpid() % 1000}7"
    script = textwrap.dedent(
        f"""
        import sys, cvs_core
        cl = cvs_core.Cluster({sshd.hosts!r}, ssh_config={str(sshd.ssh_config)!r},
                              persist="5m", control_dir={cdir!r})
        print("READY", sorted(cl.master_pids()) if cl.exec("true").ok else "FAILED", flush=True)
        try:
            cl.exec({marker!r})
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
            cl.close()
            sys.exit(0)
        print("NOT INTERRUPTED", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ready = proc.stdout.readline()
    assert ready.startswith("READY ["), proc.stderr.read()
    assert json.loads(ready.split(" ", 1)[1]) == a["pids"]

    def sleeping() -> int:
        # Anchored: only the remote command itself, not the process that names it.
        out = subprocess.run(["pgrep", "-fc", f"^{marker}$"], capture_output=True, text=True).stdout
        return int(out.strip() or 0)

    deadline = time.monotonic() + 20
    while sleeping() < len(sshd.hosts) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleeping() == len(sshd.hosts)
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "INTERRUPTED", proc.stderr.read()
    assert sleeping() == 0, "B's remote jobs survived Ctrl-C"
    assert proc.wait(20) == 0
    # The masters are still A's, and usable.
    assert sorted(masters_in(cdir)) == a["pids"]
    c = connect_and_exit(sshd, cdir)
    assert c["ok"] and c["pids"] == a["pids"]


def test_limits_are_checked_before_any_host_is_touched() -> None:
    """An explicit max_parallel beyond what RLIMIT_NOFILE can hold is a clear error (no host is
    contacted: these names do not resolve); within the hard limit the soft one is raised."""
    r = child(
        """
        import json, resource, cvs_core
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))
        hosts = [f"nohost-{i}.invalid" for i in range(400)]
        cvs_core.Cluster(hosts, max_parallel=300).close()
        raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        try:
            cvs_core.Cluster(hosts, max_parallel=300)
            err = ""
        except cvs_core.CvsError as e:
            err = str(e)
        default = cvs_core.Cluster(hosts)  # the default parallelism fits the soft limit
        default.close()
        print(json.dumps({"raised": raised, "err": err}))
        """
    )
    assert r["raised"] >= 300 * 8
    assert "RLIMIT_NOFILE" in r["err"] and "max_parallel=300" in r["err"], r["err"]


def test_a_client_killed_mid_connect_leaves_nothing_once_the_next_one_comes(
    sshd, cdir, tmp_path: Path
) -> None:
    """kill -9 of a process while its `ssh -M` is still connecting (a host that sends a banner
    and stalls): its launcher and ProxyCommand survive it, and the next process with the same
    settings ends them before it tries the host itself."""
    marker = f"sleep 1000.{os.getpid() % 1000}8"
    cfg = tmp_path / "stall_config"
    cfg.write_text(
        sshd.ssh_config.read_text()
        + f"\nHost stalling-host\n  ProxyCommand sh -c 'echo SSH-2.0-stall; exec {marker}'\n"
    )

    def running() -> int:
        out = subprocess.run(["pgrep", "-fc", f"^{marker}$"], capture_output=True, text=True)
        return int(out.stdout.strip() or 0)

    code = textwrap.dedent(
        f"""
        import cvs_core, sys
        cl = cvs_core.Cluster(["stalling-host"], ssh_config={str(cfg)!r}, persist="5m",
                              control_dir={cdir!r}, connect_timeout=float(sys.argv[1]))
        print(cl.exec("true")[0].status, flush=True)
        """
    )
    a = subprocess.Popen([sys.executable, "-c", code, "30"], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while running() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running() == 1, "A's launch never reached the host"
    a.kill()
    a.wait(10)
    time.sleep(0.5)
    assert running() == 1, "the stalled launch was expected to outlive A (SIGKILL)"
    b = subprocess.run(
        [sys.executable, "-c", code, "1"], capture_output=True, text=True, timeout=60
    )
    assert b.returncode == 0, b.stderr
    assert b.stdout.strip() == "unreachable"
    assert running() == 0, "A's (or B's) launcher and ProxyCommand are still there"
    assert [n for n in os.listdir(cdir) if n.endswith(".launcher")] == []
