"""cvs_core.compat.parallel without SSH: result strings, pruning, env prefix, exception mapping,
attribute sets. The engine is replaced at its one seam (``pssh.Cluster``) by a fake returning
Results-like objects; live behaviour is in test_parallel_live.py."""

from __future__ import annotations

import builtins
import importlib
import logging
import multiprocessing
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import pytest

from cvs_core.compat import parallel
from cvs_core.compat.parallel import client as client_mod
from cvs_core.compat.parallel import exceptions as exc_mod
from cvs_core.compat.parallel import multiprocess_pssh as mp_mod
from cvs_core.compat.parallel import pssh as pssh_mod
from cvs_core.compat.parallel import pssh_sharder as sharder_mod
from cvs_core.compat.parallel.config import ParallelConfig
from cvs_core.compat.parallel.exceptions import (
    AuthenticationError,
    HostArgumentError,
    HostKeyError,
    PKeyFileError,
    SessionError,
    Timeout,
)
from cvs_core.compat.parallel.multiprocess_pssh import MultiProcessPssh
from cvs_core.compat.parallel.pssh import BANNER, HostOutput, Pssh, build_env_prefix, split_lines

# The package's `scp` is the function (as in CVS), which shadows the submodule attribute.
scp_mod = importlib.import_module("cvs_core.compat.parallel.scp")

# -- the fake engine ----------------------------------------------------------------------------


@dataclass
class FakeResult:
    host: str
    status: str = "ok"
    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    error: str | None = None

    @property
    def stdout_bytes(self) -> bytes:
        return self.stdout.encode()


Script = Callable[[str, str], FakeResult]


class FakeCluster:
    """Records constructions, calls and closes; answers through ``script(host, cmd)``."""

    instances: ClassVar[list[FakeCluster]] = []
    script: Script = staticmethod(lambda host, cmd: FakeResult(host, stdout=f"{host}\n"))
    gate: threading.Event | None = None

    def __init__(self, hosts, user=None, key=None, **opts) -> None:
        self.hosts = list(hosts)
        self.user = user
        self.key = key
        self.opts = opts
        self.calls: list[tuple[str, Any]] = []
        self.closed = False
        FakeCluster.instances.append(self)

    def _answer(self, pairs) -> list[FakeResult]:
        if FakeCluster.gate is not None:
            FakeCluster.gate.wait(5)
        out = []
        for host, cmd in pairs:
            if self.closed:
                out.append(FakeResult(host, "error", -1, error="the cluster is closed"))
            else:
                out.append(FakeCluster.script(host, cmd))
        return out

    def exec(self, cmd, hosts=None, timeout=None, inactivity_timeout=None, stdin=None):
        self.calls.append(("exec", cmd, hosts, timeout, inactivity_timeout, stdin))
        return self._answer((h, cmd) for h in (hosts or self.hosts))

    def exec_per_host(self, commands, timeout=None, inactivity_timeout=None, stdin=None):
        self.calls.append(("exec_per_host", dict(commands), timeout, inactivity_timeout, stdin))
        return self._answer(commands.items())

    def upload_per_host(self, files):
        self.calls.append(("upload_per_host", dict(files)))
        return self._answer((h, f"upload {r}") for h, (_, r) in files.items())

    def download(self, remote, local_dir, hosts=None, check=True):
        self.calls.append(("download", remote, hosts))
        paths = {}
        for h in hosts or self.hosts:
            d = Path(local_dir) / h
            d.mkdir(parents=True, exist_ok=True)
            p = d / Path(remote).name
            p.write_text(f"from {h}\n")
            paths[h] = str(p)
        return paths

    def master_pids(self):
        return []

    def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def fake_engine(monkeypatch: pytest.MonkeyPatch):
    FakeCluster.instances = []
    FakeCluster.script = staticmethod(lambda host, cmd: FakeResult(host, stdout=f"{host}\n"))
    FakeCluster.gate = None
    monkeypatch.setattr(client_mod, "Cluster", FakeCluster)
    for var in (
        client_mod.ENV_HOST_KEY_POLICY,
        client_mod.ENV_KNOWN_HOSTS,
        client_mod.ENV_SSH_CONFIG,
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("CVS_HOSTS_PER_SHARD", raising=False)
    return FakeCluster


def scripted(table: dict[str, FakeResult | Callable[[str], FakeResult]]) -> None:
    """Per-host answers; hosts not in the table answer ok with their name."""

    def answer(host: str, cmd: str) -> FakeResult:
        if cmd == "echo 1":  # the connectivity probe: answers for the listed failures only
            got = table.get(host)
            got = got(cmd) if callable(got) else got
            if got is not None and got.status in ("unreachable", "host_key_mismatch"):
                return got
            return FakeResult(host, stdout="1\n")
        got = table.get(host)
        if got is None:
            return FakeResult(host, stdout=f"{host}\n")
        return got(cmd) if callable(got) else got

    FakeCluster.script = staticmethod(answer)


HOSTS = ["h1", "h2", "h3"]


def make(hosts=HOSTS, **kw) -> Pssh:
    kw.setdefault("pkey", None)
    return Pssh(None, hosts, user="u", **kw)


# -- env prefix ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "want"),
    [
        (None, ""),
        ({}, ""),
        ({"A": "1"}, "export A=1"),
        ({"A": "x y", "B": "2"}, "export A='x y' ; export B=2"),
        ({"PATH": "/opt/bin:$PATH"}, "export PATH=/opt/bin:$PATH"),
        ({"PATH": "/my dir:$PATH"}, "export PATH='/my dir':$PATH"),
        ({"LD": "$LD:/lib 64"}, "export LD=$LD:'/lib 64'"),
        ({"A": "$OTHER:/x"}, "export A='$OTHER:/x'"),
        ({"A": "$(id)"}, "export A='$(id)'"),
        ({"A": "${HOME}"}, "export A='${HOME}'"),
        ({"N": 5}, "export N=5"),  # CVS raised AttributeError here; fixed
    ],
)
def test_build_env_prefix(env, want) -> None:
    assert build_env_prefix(env) == want


def test_env_prefix_is_sent_before_every_command() -> None:
    p = make(env_vars={"A": "x y"})
    p.exec("echo hi")
    assert FakeCluster.instances[0].calls[-1][1] == "export A='x y' ; echo hi"
    p.exec_cmd_list(["c1", "c2", "c3"])
    cmds = FakeCluster.instances[0].calls[-1][1]
    assert cmds == {h: f"export A='x y' ; c{i}" for i, h in enumerate(HOSTS, 1)}
    p2 = make()
    p2.exec("echo hi")
    assert FakeCluster.instances[-1].calls[-1][1] == "echo hi"


# -- output formatting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("", []),
        ("a", ["a"]),
        ("a\n", ["a"]),
        ("a\n\n", ["a", ""]),
        ("a\r\nb\n", ["a", "b"]),
        ("10%\r50%\rdone\n", ["10%\r50%\rdone"]),
    ],
)
def test_split_lines_like_parallel_ssh(text, lines) -> None:
    assert split_lines(text) == lines


def test_process_output_stdout_then_stderr_tabs_and_exit_codes() -> None:
    p = make()
    out = [
        HostOutput("h1", ["a\tb", "c"], ["e\t1"], 0),
        HostOutput("h2", [], [], None),
        HostOutput("h3", ["partial"], [], None, Timeout()),
    ]
    got = p._process_output(out, cmd="x")
    assert got == {
        "h1": "a   b\nc\ne   1\n\n",
        "h2": "\n",
        "h3": "partial\nTimeout()\nABORT: Timeout Error in Host: h3\n",
    }
    detailed = p._process_output(out, cmd="x", include_exit_codes=True)
    assert [v["exit_code"] for v in detailed.values()] == [0, -1, -1]
    assert detailed["h1"]["output"] == got["h1"]
    conn = HostOutput("h4", [], [], None, builtins.ConnectionError("Connection\tfailed"))
    assert p._process_output([conn]) == {"h4": "Connection   failed\n"}


def test_engine_statuses_become_cvs_outcomes() -> None:
    scripted(
        {
            "ok": FakeResult("ok", stdout="fine\n", stderr="warn\n"),
            "bad": FakeResult("bad", "exit_nonzero", 3, "x\n", "oops\n"),
            "sig": FakeResult("sig", "signal", -1, "", "", "terminated by a signal"),
            "slow": FakeResult("slow", "timeout", -1, "started\n", "err\n", "timed out after 2.0s"),
            "idle": FakeResult("idle", "inactivity_timeout", -1, "", "", "no output for 1.0s"),
            "auth": FakeResult("auth", "auth_failed", -1, error="Permission denied (publickey)."),
            "lost": FakeResult("lost", "error", -1, error="the connection was lost"),
        }
    )
    hosts = ["ok", "bad", "sig", "slow", "idle", "auth", "lost"]
    p = make(hosts, stop_on_errors=False)
    p.check_connectivity = lambda hs: []  # nothing is pruned here
    got = p.exec("cmd", detailed=True)
    assert list(got) == hosts
    assert got["ok"] == {"output": "fine\nwarn\n\n", "exit_code": 0}
    assert got["bad"] == {"output": "x\noops\n\n", "exit_code": 3}
    assert got["sig"] == {"output": "\n", "exit_code": -1}
    assert got["slow"] == {
        "output": "started\nerr\ntimed out after 2.0s\nABORT: Timeout Error in Host: slow\n",
        "exit_code": -1,
    }
    assert got["idle"]["output"].endswith(
        "no output for 1.0s\nABORT: Timeout Error in Host: idle\n"
    )
    assert got["auth"]["output"].startswith("Authentication error while connecting to host 'auth'")
    assert "ABORT" not in got["auth"]["output"] and got["auth"]["exit_code"] == -1
    assert got["lost"]["output"].startswith("SSH session error on host 'lost'")


def test_one_timeout_never_marks_the_other_hosts() -> None:
    # CVS's _handle_timeout_exception gave h1's Timeout to h2 and h3 (contract §1.3): fixed.
    scripted({"h1": FakeResult("h1", "timeout", -1, "", "", "timed out after 1.0s")})
    p = make(stop_on_errors=False)
    p.check_connectivity = lambda hs: []
    got = p.exec("cmd", timeout=1)
    assert got["h1"].endswith("ABORT: Timeout Error in Host: h1\n")
    assert got["h2"] == "h2\n\n" and got["h3"] == "h3\n\n"
    assert FakeCluster.instances[0].calls[-1][3] == 1


def test_inactivity_timeout_replaces_timeout_as_on_main() -> None:
    p = make()
    p.exec("cmd", timeout=50, inactivity_timeout=5)
    assert FakeCluster.instances[0].calls[-1][3:5] == (None, 5)
    p.exec_cmd_list(["a", "b", "c"], timeout=7)
    assert FakeCluster.instances[0].calls[-1][2:4] == (7, None)


# -- stop_on_errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("unreachable", builtins.ConnectionError),
        ("auth_failed", AuthenticationError),
        ("host_key_mismatch", HostKeyError),
        ("timeout", Timeout),
        ("inactivity_timeout", Timeout),
    ],
)
def test_stop_on_errors_raises_without_partial_results(status, kind) -> None:
    scripted({"h2": FakeResult("h2", status, -1, error="boom")})
    p = make()  # stop_on_errors=True is CVS's default
    with pytest.raises(kind) as info:
        p.exec("cmd")
    assert info.value.host == "h2"
    assert p.unreachable_hosts == [] and len(FakeCluster.instances) == 1  # no probe, no prune


def test_stop_on_errors_formats_a_session_error_stored_on_the_host() -> None:
    # Seams §4.5: an exception stored on an item is formatted, never raised (a session lost
    # mid-command is stored as SessionError; only connect failures raise out of run_command).
    scripted({"h2": FakeResult("h2", "error", -1, error="the connection was lost")})
    got = make().exec("cmd", detailed=True)
    assert got["h2"]["exit_code"] == -1
    assert got["h2"]["output"].startswith("SSH session error on host 'h2'")


def test_stop_on_errors_raises_transport_errors_before_timeouts() -> None:
    scripted(
        {
            "h1": FakeResult("h1", "timeout", -1, error="timed out"),
            "h3": FakeResult("h3", "auth_failed", -1, error="denied"),
        }
    )
    with pytest.raises(AuthenticationError):
        make().exec("cmd")


def test_stop_on_errors_is_read_per_call() -> None:
    scripted({"h2": FakeResult("h2", "unreachable", -1, error="refused")})
    p = make()
    with pytest.raises(builtins.ConnectionError):
        p.exec("cmd")
    p.stop_on_errors = False  # callers reassign it on the instance
    assert p.exec("cmd")["h2"].endswith("ABORT: Host Unreachable Error")


def test_host_key_error_is_a_connection_error() -> None:
    assert issubclass(HostKeyError, builtins.ConnectionError)
    assert exc_mod.ConnectionError is builtins.ConnectionError


# -- pruning -------------------------------------------------------------------------------------


def test_unreachable_hosts_are_pruned_and_reported_on_every_call() -> None:
    scripted({"h2": FakeResult("h2", "unreachable", -1, error="Connection refused")})
    caller_list = list(HOSTS)
    p = Pssh(None, caller_list, user="u", pkey=None, stop_on_errors=False)
    first = p.exec("cmd")
    assert list(first) == HOSTS
    assert first["h2"] == "Error connecting to host 'h2' - Connection refused\n" + (
        "\nABORT: Host Unreachable Error"
    )
    assert p.reachable_hosts == ["h1", "h3"] and p.unreachable_hosts == ["h2"]
    assert p.host_list == HOSTS and caller_list == HOSTS  # never mutated (B2)
    for _ in range(2):
        later = p.exec("cmd")
        assert list(later) == ["h1", "h3", "h2"]  # same host set, pruned host last
        assert later["h2"] == "\nABORT: Host Unreachable Error"
        detailed = p.exec("cmd", detailed=True)
        assert detailed["h2"] == {"output": "\nABORT: Host Unreachable Error", "exit_code": -1}
        assert detailed["h1"] == {"output": "h1\n\n", "exit_code": 0}
    # the pruned host is never contacted again
    assert FakeCluster.instances[-1].hosts == ["h1", "h3"]


def test_auth_failures_are_never_pruned() -> None:
    scripted({"h1": FakeResult("h1", "auth_failed", -1, error="denied")})
    p = make(stop_on_errors=False)
    for _ in range(2):
        got = p.exec("cmd")
        assert got["h1"].startswith("Authentication error") and "ABORT" not in got["h1"]
    assert p.unreachable_hosts == []


def test_timed_out_host_is_reprobed_and_kept_when_it_answers() -> None:
    scripted({"h1": FakeResult("h1", "timeout", -1, error="timed out after 1.0s")})
    p = make(stop_on_errors=False)
    p.exec("cmd", timeout=1)
    probe = FakeCluster.instances[1]
    assert probe.hosts == ["h1"] and probe.calls[0][1] == "echo 1"
    assert probe.opts["connect_timeout"] == 2.0 and probe.calls[0][3] == 2
    assert probe.closed  # CVS never closed its probe client
    assert p.unreachable_hosts == []


def test_client_factory_constructions_are_counted_like_cvs(monkeypatch) -> None:
    built: list[tuple] = []
    real = pssh_mod.ParallelSSHClient

    def factory(*args, **kwargs):
        built.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(pssh_mod, "ParallelSSHClient", factory)
    p = make(stop_on_errors=False)
    assert len(built) == 1
    assert built[0][1]["keepalive_seconds"] == 30 and built[0][1]["user"] == "u"
    old = p.client
    assert p.prune_nodes([]) == [] and p.prune_nodes(["nope"]) == [] and len(built) == 1
    assert p.prune_nodes(["h2", "h2"]) == ["h2"]
    assert len(built) == 2 and built[1][0][0] == ["h1", "h3"]
    assert old._cluster.closed and not p.client._cluster.closed
    assert p.prune_nodes(["h2"]) == [] and p.unreachable_hosts == ["h2"]


def test_check_connectivity_is_looked_up_on_the_instance() -> None:
    scripted({"h3": FakeResult("h3", "unreachable", -1, error="refused")})
    p = make(stop_on_errors=False)
    asked = []
    p.check_connectivity = lambda hosts: asked.append(list(hosts)) or []
    got = p.exec("cmd")
    assert asked == [["h3"]] and p.unreachable_hosts == []
    assert "ABORT: Host Unreachable Error" not in got["h3"]


def test_inform_unreachability_shapes() -> None:
    p = make()
    p.unreachable_hosts = ["h9"]
    got = {"a": "x"}
    assert p.inform_unreachability(got) is None  # CVS mutates the dict it is given
    assert got == {"a": "x", "h9": "\nABORT: Host Unreachable Error"}
    got = {"h9": {"output": "died\n", "exit_code": 0}}
    p.inform_unreachability(got, True)
    assert got == {"h9": {"output": "died\n\nABORT: Host Unreachable Error", "exit_code": -1}}


def test_handle_timeout_exception_kept_for_callers() -> None:
    items = [HostOutput("a"), HostOutput("b", exception=ValueError("x"))]
    e = Timeout()
    make()._handle_timeout_exception(items, e)
    assert items[0].exception is e and isinstance(items[1].exception, ValueError)


# -- exec_cmd_list -------------------------------------------------------------------------------


def test_exec_cmd_list_runs_command_i_on_reachable_host_i() -> None:
    FakeCluster.script = staticmethod(lambda h, c: FakeResult(h, stdout=f"{h}:{c}\n"))
    p = make(stop_on_errors=False)
    got = p.exec_cmd_list(["a", "b", "c"])
    assert got == {"h1": "h1:a\n\n", "h2": "h2:b\n\n", "h3": "h3:c\n\n"}
    p.prune_nodes(["h2"])
    # a list for the reachable hosts (CVS) ...
    assert p.exec_cmd_list(["x", "y"]) == {
        "h1": "h1:x\n\n",
        "h3": "h3:y\n\n",
        "h2": "\nABORT: Host Unreachable Error",
    }
    # ... or for the original host list (re-aligned; parallel-ssh raised HostArgumentError)
    assert p.exec_cmd_list(["a", "b", "c"])["h3"] == "h3:c\n\n"
    with pytest.raises(HostArgumentError, match="does not match number of hosts"):
        p.exec_cmd_list(["only-one"])


def test_exec_cmd_list_logs_each_hosts_command(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    make().exec_cmd_list(["cmd-a", "cmd-b", "cmd-c"])
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert debug.count("cmd-b") == 1


# -- logging -------------------------------------------------------------------------------------


def test_log_lines_go_to_the_root_logger(caplog, tmp_path) -> None:
    key = tmp_path / "secret_key"
    key.write_text("k")
    caplog.set_level(logging.DEBUG)
    FakeCluster.script = staticmethod(lambda h, c: FakeResult(h, stdout="out\tline\n"))
    p = Pssh(None, ["h1"], user="u", pkey=str(key), env_vars={"A": "1"})
    p.exec("echo hi")
    recs = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    info = [m for n, lvl, m in recs if lvl == logging.INFO and n == "root"]
    assert "cmd = export A=1 ; echo hi" in info
    i = info.index("Host == h1 ==")
    assert info[i - 1] == BANNER == info[i + 1] == "#" + "-" * 58 + "#"
    assert "out\tline" in info  # print_console=True: each output line at INFO
    # CVS's three INFO lines before the client is built: hosts, user, key path (seams §4.1).
    assert ["Connecting to hosts: ['h1']", "User: u", f"Private key: {key}"] == info[:3]
    caplog.clear()
    p.exec("echo hi", print_console=False)
    assert "out\tline" not in [r.getMessage() for r in caplog.records]


def test_log_argument_is_deprecated() -> None:
    with pytest.warns(DeprecationWarning, match="'log' argument is deprecated"):
        Pssh(logging.getLogger("x"), HOSTS, pkey=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pssh(None, HOSTS, pkey=None)
    with pytest.warns(DeprecationWarning):
        MultiProcessPssh(logging.getLogger("x"), HOSTS, pkey=None)


def test_timeout_text_is_logged_at_warning(caplog) -> None:
    scripted({"h1": FakeResult("h1", "timeout", -1, error="timed out after 1.0s")})
    p = make(stop_on_errors=False)
    p.check_connectivity = lambda hs: []
    p.exec("cmd", timeout=1)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("timed out after 1.0s" in m for m in warned)


# -- client options ------------------------------------------------------------------------------


def test_client_maps_parallel_ssh_options(monkeypatch, tmp_path) -> None:
    Pssh(None, HOSTS, user="u", pkey=None, port=2222, timeout=4, num_retries=9)
    opts = FakeCluster.instances[-1].opts
    assert opts["port"] == 2222 and opts["connect_timeout"] == 4.0
    assert opts["host_key_policy"] == "accept-new"  # CVS never checked; we learn, then check
    assert opts["known_hosts"] is None and opts["ssh_config"] is None
    assert opts["password"] is None and opts["jump_host"] is None
    assert FakeCluster.instances[-1].key is None and FakeCluster.instances[-1].user == "u"
    pssh_mod.ParallelSSHClient(["h"], proxy_host="bastion", proxy_user="j", proxy_port=2200)
    assert FakeCluster.instances[-1].opts["jump_host"] == "j@bastion:2200"
    pssh_mod.ParallelSSHClient(["h"], pool_size=7, idle_timeout=5)
    assert FakeCluster.instances[-1].opts["max_parallel"] == 7
    monkeypatch.setenv(pssh_mod.ENV_HOST_KEY_POLICY, "strict")
    monkeypatch.setenv(pssh_mod.ENV_KNOWN_HOSTS, str(tmp_path / "kh"))
    monkeypatch.setenv(pssh_mod.ENV_SSH_CONFIG, str(tmp_path / "cfg"))
    make()
    opts = FakeCluster.instances[-1].opts
    assert opts["host_key_policy"] == "strict"
    assert opts["known_hosts"] == str(tmp_path / "kh") and opts["ssh_config"] == str(
        tmp_path / "cfg"
    )
    make(host_key_policy="off", known_hosts="/k")  # through **ssh_client_kwargs
    assert FakeCluster.instances[-1].opts["host_key_policy"] == "off"
    assert FakeCluster.instances[-1].opts["known_hosts"] == "/k"


def test_pkey_resolution(monkeypatch, tmp_path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "cluster_key").write_text("k")
    (home / ".ssh" / "abs").write_text("k")
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    (work / "local_key").write_text("k")
    monkeypatch.chdir(work)
    assert pssh_mod.resolve_pkey("local_key") == str(work / "local_key")  # cwd, as parallel-ssh
    assert pssh_mod.resolve_pkey("cluster_key") == str(home / ".ssh" / "cluster_key")
    assert pssh_mod.resolve_pkey("~/.ssh/abs") == str(home / ".ssh" / "abs")
    with pytest.raises(PKeyFileError, match="does not exist"):
        Pssh(None, HOSTS, pkey="missing_key")
    with pytest.raises(PKeyFileError):
        pssh_mod.resolve_pkey(b"-----BEGIN KEY-----")
    Pssh(None, HOSTS)  # the untouched default id_rsa, absent: OpenSSH picks identities
    assert FakeCluster.instances[-1].key is None
    (home / ".ssh" / "id_rsa").write_text("k")
    Pssh(None, HOSTS)
    assert FakeCluster.instances[-1].key == str(home / ".ssh" / "id_rsa")


# -- sessions and threads -----------------------------------------------------------------------


def test_prune_during_a_running_call_defers_the_close() -> None:
    p = make(stop_on_errors=False)
    first = FakeCluster.instances[0]
    FakeCluster.gate = threading.Event()
    got: dict = {}
    t = threading.Thread(target=lambda: got.update(p.exec("cmd")))
    t.start()
    while not first.calls:
        pass
    p.prune_nodes(["h3"])  # another thread rebuilds the client meanwhile
    assert not first.closed  # still in use: closing now would kill the running commands
    FakeCluster.gate.set()
    t.join(5)
    assert got["h1"] == "h1\n\n" and "closed" not in got["h2"]
    assert first.closed  # closed by the last call leaving it


def test_destroy_clients_closes_and_drops_the_client() -> None:
    p = make()
    first = FakeCluster.instances[0]
    p.destroy_clients()
    assert first.closed and not hasattr(p, "client")
    p.destroy_clients()  # idempotent
    with pytest.raises(AttributeError):  # CVS: del self.client (seams §3)
        p.exec("cmd")


def test_many_threads_share_one_pssh() -> None:
    scripted({"h2": FakeResult("h2", "unreachable", -1, error="refused")})
    p = make(stop_on_errors=False)
    results: list[dict] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(20):
                results.append(p.exec("cmd"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(set(r) == set(HOSTS) for r in results)
    assert all(r["h1"] == "h1\n\n" and r["h2"].endswith("Unreachable Error") for r in results)
    assert p.unreachable_hosts == ["h2"]
    assert all(c.closed for c in FakeCluster.instances if c is not p.client._cluster)


def test_reboot_connections_sends_reboot_without_waiting() -> None:
    FakeCluster.gate = threading.Event()
    p = make()
    assert p.reboot_connections() is None  # returns while the engine call is still blocked
    FakeCluster.gate.set()
    for _ in range(500):
        if FakeCluster.instances[0].calls:
            break
        threading.Event().wait(0.01)
    assert FakeCluster.instances[0].calls[0][1] == "reboot -f"


# -- files ---------------------------------------------------------------------------------------


def test_upload_file_ioerror_text(tmp_path) -> None:
    p = make()
    missing = tmp_path / "missing"
    with pytest.raises(OSError) as info:
        p.upload_file(str(missing), "/r/x")
    msg = str(info.value)
    assert msg.startswith(f"upload_file '{missing}' -> '/r/x' failed on 3/3 hosts: [('h1', ")
    assert "FileNotFoundError" in msg
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(OSError, match="Recurse must be true if local_file is a directory"):
        p.upload_file(str(tmp_path), "/r/x")
    src = tmp_path / "f"
    src.write_text("data")
    scripted({"h2": FakeResult("h2", "exit_nonzero", 1, stderr="cat: /r/x: Permission denied\n")})
    with pytest.raises(OSError) as info:
        p.upload_file(str(src), "/r/x")
    assert "failed on 1/3 hosts: [('h2', SFTPIOError(" in str(info.value)
    assert "Permission denied" in str(info.value)


def test_upload_creates_the_remote_parent_like_parallel_ssh(tmp_path) -> None:
    src = tmp_path / "f"
    src.write_text("data")
    p = make()
    assert p.upload_file(str(src), "/a/b c/f") is None
    calls = FakeCluster.instances[0].calls
    assert calls[0][0] == "exec_per_host"
    assert calls[0][1]["h1"] == "[ -d '/a/b c' ] || mkdir -p -- '/a/b c'"
    assert calls[1] == ("upload_per_host", {h: (str(src), "/a/b c/f") for h in HOSTS})
    p.upload_file(str(src), "relative")
    assert FakeCluster.instances[0].calls[-1][0] == "upload_per_host"


def test_upload_file_list_subsets_and_shapes(tmp_path) -> None:
    src = tmp_path / "f"
    src.write_text("data")
    p = make(stop_on_errors=False)
    assert p.upload_file_list({}) == {}
    assert p.upload_file_list({"nope": (str(src), "/x")}) == {}
    # A subset of the hosts: parallel-ssh raised HostArgumentError here (77250e85).
    got = p.upload_file_list({"h3": (str(src), "/x"), "h1": (str(tmp_path / "gone"), "/x")})
    assert list(got) == ["h1", "h3"]
    assert got["h3"] == "h3: SUCCESS"
    assert got["h1"].startswith("h1: FAILED - [Errno 2] No such file or directory")
    p.prune_nodes(["h3"])
    assert p.upload_file_list({"h3": (str(src), "/x")}) == {}


def test_download_file_paths_and_host_selection(tmp_path) -> None:
    p = make(stop_on_errors=False)
    local = tmp_path / "out" / "log.txt"
    got = p.download_file("/var/log.txt", str(local))
    assert got == {h: f"{local}_{h}" for h in HOSTS}
    assert Path(got["h2"]).read_text() == "from h2\n"
    got = p.download_file("/var/log.txt", str(local), suffix_separator=".", hosts=["h3"])
    assert got == {"h3": f"{local}.h3"}
    p.prune_nodes(["h2"])
    with pytest.raises(ValueError, match=r"SFTP download requested unreachable host\(s\): \['h2'"):
        p.download_file("/x", str(local), hosts=["h2", "zz"])
    assert not list((tmp_path / "out").glob(".cvs-core-download-*"))


# -- MultiProcessPssh ----------------------------------------------------------------------------

NON_SHARDED = {"pssh", "host_list", "reachable_hosts", "unreachable_hosts", "env_vars"}
NON_SHARDED |= {"ssh_client_kwargs", "config", "log"}
SHARDED_ONLY = {"user", "pkey", "password", "stop_on_errors", "env_prefix", "client", "sharder"}


def test_multiprocess_pssh_non_sharded_attribute_set() -> None:
    hosts = list(HOSTS)
    h = MultiProcessPssh(None, hosts, user="u", pkey=None, config=ParallelConfig(hosts_per_shard=3))
    assert all(hasattr(h, a) for a in NON_SHARDED)
    assert not any(hasattr(h, a) for a in SHARDED_ONLY)
    assert h.host_list is hosts and isinstance(h.pssh, Pssh)
    assert h.exec("cmd") == {x: f"{x}\n\n" for x in HOSTS}
    assert h.upload_file is not None and h.reboot_connections() is None


def test_multiprocess_pssh_sharded_attribute_set_but_no_processes(monkeypatch) -> None:
    monkeypatch.setenv("CVS_HOSTS_PER_SHARD", "2")
    hosts = list(HOSTS)
    h = MultiProcessPssh(None, hosts, user="u", pkey=None, env_vars={"A": "1"})
    assert h.config.hosts_per_shard == 2
    assert all(hasattr(h, a) for a in NON_SHARDED | SHARDED_ONLY)
    assert h.pssh is None and h.client is None and h.host_list == hosts
    assert isinstance(h.sharder, sharder_mod.PsshSharder)
    assert h.env_prefix == "export A=1"
    assert h._shard_init_kwargs()["log"] is None
    before = multiprocessing.active_children()
    assert h.exec("cmd") == {x: f"{x}\n\n" for x in HOSTS}
    assert multiprocessing.active_children() == before
    assert len(FakeCluster.instances) == 1  # one engine for every call
    assert h.reboot_connections() == {}


def test_sharded_handle_reports_pruned_hosts_and_honours_reassigned_flags() -> None:
    scripted({"h2": FakeResult("h2", "unreachable", -1, error="refused")})
    h = MultiProcessPssh(None, HOSTS, user="u", pkey=None, config=ParallelConfig(2))
    with pytest.raises(builtins.ConnectionError):
        h.exec("cmd")
    h.stop_on_errors = False
    h.env_vars = {"Z": 9}
    got = h.exec("cmd", detailed=True)  # CVS crashed here (.splitlines on a dict)
    assert got["h2"]["exit_code"] == -1
    assert h.unreachable_hosts == ["h2"] and h.reachable_hosts == ["h1", "h3"]
    later = h.exec("cmd")
    # CVS's sharded path dropped previously pruned hosts from the output: fixed.
    assert list(later) == ["h1", "h3", "h2"]
    assert later["h2"] == "\nABORT: Host Unreachable Error"
    sent = [c[1] for inst in FakeCluster.instances for c in inst.calls if c[0] == "exec"]
    assert "export Z=9 ; cmd" in sent


def test_sharded_exec_cmd_list_length_rule() -> None:
    FakeCluster.script = staticmethod(lambda h, c: FakeResult(h, stdout=f"{c}\n"))
    h = MultiProcessPssh(
        None, HOSTS, user="u", pkey=None, stop_on_errors=False, config=ParallelConfig(2)
    )
    h.prune_nodes(["h1"])
    assert h.reachable_hosts == ["h2", "h3"]
    assert h.exec_cmd_list(["a", "b", "c"])["h3"] == "c\n\n"
    assert h.exec_cmd_list(["x", "y"])["h2"] == "x\n\n"
    with pytest.raises(ValueError) as info:
        h.exec_cmd_list(["one"])
    assert str(info.value) == (
        "cmd_list length must match host_list length or reachable_hosts length "
        "(cmd_list=1, host_list=3, reachable_hosts=2)"
    )


def test_sharded_destroy_and_scp_file(tmp_path) -> None:
    src = tmp_path / "f"
    src.write_text("x")
    h = MultiProcessPssh(None, HOSTS, user="u", pkey=None, config=ParallelConfig(1))
    assert h.scp_file(str(src), "/tmp/f") == {}
    h.destroy_clients()
    assert h.client is None and FakeCluster.instances[0].closed
    n = MultiProcessPssh(None, HOSTS, user="u", pkey=None, config=ParallelConfig(0))
    assert n.pssh is not None and n.scp_file(str(src), "/tmp/f") is None


def test_print_merged_outputs_handles_detailed_entries(caplog) -> None:
    caplog.set_level(logging.INFO)
    h = MultiProcessPssh(None, HOSTS, user="u", pkey=None, config=ParallelConfig(1))
    h._print_merged_outputs({"h1": {"output": "a\nb\n", "exit_code": 0}, "h2": "c\n"}, cmd="x")
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert ["a", "b", "c"] == [m for m in info if m in ("a", "b", "c")]


def test_merge_shard_returns() -> None:
    h = MultiProcessPssh(None, HOSTS, user="u", pkey=None, config=ParallelConfig(1))
    merged = h._merge_shard_returns(
        [
            {"result": {"h3": "c"}, "reachable_hosts": ["h3"], "unreachable_hosts": []},
            {"result": None, "reachable_hosts": [], "unreachable_hosts": []},
            {"result": {"h1": "a"}, "reachable_hosts": ["h1"], "unreachable_hosts": ["h2"]},
        ]
    )
    assert list(merged) == ["h1", "h3"]
    assert h.reachable_hosts == ["h1", "h3"] and h.unreachable_hosts == ["h2"]


# -- config and sharder --------------------------------------------------------------------------


def test_parallel_config(monkeypatch) -> None:
    c = ParallelConfig()
    assert (c.hosts_per_shard, c.max_workers_per_cpu) == (32, 4)
    assert c.max_workers >= 32
    assert ParallelConfig(1000, 1).max_workers == 1000
    monkeypatch.setenv("CVS_HOSTS_PER_SHARD", "0")
    monkeypatch.setenv("CVS_WORKERS_PER_CPU", "2")
    c = ParallelConfig.from_env()
    assert (c.hosts_per_shard, c.max_workers_per_cpu) == (0, 2)


def test_sharder_api() -> None:
    s = sharder_mod.PsshSharder(ParallelConfig(2))
    assert sharder_mod.SUPPORTED_OPERATIONS == {
        "exec",
        "exec_cmd_list",
        "upload_file",
        "upload_file_list",
        "download_file",
        "reboot_connections",
    }
    chunks = list(s.chunk_hosts(["a", "b", "c"]))
    assert chunks == [["a", "b"], ["c"]]
    init = {"log": None, "user": "u", "pkey": None}
    payloads = s.create_payloads("exec", chunks, init, cmd="x")
    assert payloads[1] == {
        "operation": "exec",
        "init": {"log": None, "user": "u", "pkey": None, "host_list": ["c"]},
        "cmd": "x",
    }
    assert s.execute_sharded([]) == []
    shards = [{"result": {"c": 1, "z": 0}}, None, {"result": {"a": 2}}, {"result": None}]
    assert s.merge_results(shards, ["a", "b", "c"]) == {"a": 2, "c": 1}  # only listed hosts
    with pytest.raises(TypeError, match="must be str"):
        s.run_shard({"operation": 3, "init": {}})
    with pytest.raises(ValueError, match=r"Unknown operation: nope. Supported: \['download_file'"):
        s.run_shard({"operation": "nope", "init": {}})
    returns = s.execute_sharded(payloads)
    assert [r["result"] for r in returns] == [{"a": "a\n\n", "b": "b\n\n"}, {"c": "c\n\n"}]
    assert returns[0]["reachable_hosts"] == ["a", "b"]
    # Both shards ran on one engine, kept for the next call (CVS reconnected every call) ...
    assert len(FakeCluster.instances) == 1 and FakeCluster.instances[0].hosts == ["a", "b", "c"]
    s.execute_sharded(payloads)
    assert len(FakeCluster.instances) == 1 and not FakeCluster.instances[0].closed
    s.close()  # ... until the sharder is closed
    assert FakeCluster.instances[0].closed
    assert payloads[0]["init"]["process_output"] is False


# -- package surface -----------------------------------------------------------------------------


def test_package_surface() -> None:
    assert parallel.Pssh is Pssh
    assert parallel.MultiProcessPssh is MultiProcessPssh
    assert parallel.PsshSharded is MultiProcessPssh
    assert parallel.scp is scp_mod.scp
    assert issubclass(MultiProcessPssh, parallel.interfaces.ShardableSshInterface)
    assert mp_mod.MultiProcessPssh is MultiProcessPssh


def test_parallel_ssh_lib_shim() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import cvs_core.compat.parallel_ssh_lib as shim

    with pytest.warns(DeprecationWarning, match="parallel_ssh_lib is deprecated"):
        shim = importlib.reload(shim)
    assert shim.Pssh is MultiProcessPssh
    assert set(shim.__all__) == {
        "Pssh",
        "ParallelConfig",
        "scp",
        "ParallelSSHClient",
        "Timeout",
        "ConnectionError",
        "SessionError",
    }
    ns: dict = {}
    exec("from cvs_core.compat.parallel_ssh_lib import *", ns)
    assert ns["ConnectionError"] is builtins.ConnectionError
    assert ns["Timeout"] is Timeout and ns["SessionError"] is SessionError
    assert ns["ParallelSSHClient"] is pssh_mod.ParallelSSHClient  # cvs-core's client (A5)


# -- scp -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "parts"),
    [
        ("host:/p", ("host", "/p")),
        ("u@host:/p", ("u@host", "/p")),
        ("[fe80::1]:/p", ("[fe80::1]", "/p")),
        ("u@[::1]:rel", ("u@[::1]", "rel")),
        ("/local/with:colon", None),
        ("./a:b", None),
        ("plain", None),
    ],
)
def test_scp_operand_parsing(spec, parts) -> None:
    assert scp_mod._split_remote(spec) == parts


def test_scp_refuses_passwords_and_local_only_copies() -> None:
    with pytest.raises(NotImplementedError, match="key-based authentication only"):
        scp_mod.scp("a", "h:/b", "u", "secret")
    with pytest.raises(NotImplementedError):
        scp_mod.scp("h:/a", "b", "u", None, "v", "pw")
    with pytest.raises(ValueError, match="needs a remote"):
        scp_mod.scp("a", "b", "u", None)
