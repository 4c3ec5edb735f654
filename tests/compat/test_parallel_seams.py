"""CVS's seams of ``cvs.lib.parallel`` (shared/spec/cvs-test-seams.md), patched exactly the way
CVS's own unit tests and its users' tests patch them: module-level names replaced by doubles,
``__init__`` replaced and attributes set by hand, exact call forms asserted. One test (or a
few) per seam row, named by its ID; each fails if the compat layer moves the seam.

Nothing here touches the network: the client is always a double.
"""

from __future__ import annotations

import builtins
import importlib
import logging
import sys
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest

from cvs_core.compat.parallel import client as client_mod
from cvs_core.compat.parallel import exceptions as exc_mod
from cvs_core.compat.parallel import multiprocess_pssh as mp_mod
from cvs_core.compat.parallel import pssh as pssh_mod
from cvs_core.compat.parallel import pssh_sharder as sharder_mod
from cvs_core.compat.parallel.config import ParallelConfig
from cvs_core.compat.parallel.multiprocess_pssh import MultiProcessPssh
from cvs_core.compat.parallel.pssh import Pssh

HOSTS = ["h1", "h2", "h3"]
ABORT = "\nABORT: Host Unreachable Error"


def item(host: str, out=(), err=(), exit_code: Any = 0, exception: Any = None) -> Any:
    """An output item as parallel-ssh returns it (what CVS's doubles build)."""
    return SimpleNamespace(
        host=host,
        stdout=None if out is None else list(out),
        stderr=None if err is None else list(err),
        exit_code=exit_code,
        exception=exception,
    )


@pytest.fixture
def client_cls(monkeypatch: pytest.MonkeyPatch) -> mock.MagicMock:
    """``cvs.lib.parallel.pssh.ParallelSSHClient`` patched; every construction returns the same
    client double, whose ``run_command`` echoes each host's name."""
    cls = mock.MagicMock(name="ParallelSSHClient")
    client = cls.return_value
    client.run_command.side_effect = lambda *a, **k: [item(h, [h]) for h in HOSTS]
    monkeypatch.setattr(pssh_mod, "ParallelSSHClient", cls)
    return cls


def bare_pssh(**attrs: Any) -> Pssh:
    """A Pssh whose __init__ was replaced, with CVS's attributes set by hand (seams §3)."""
    with mock.patch.object(Pssh, "__init__", lambda self, *a, **k: None):
        p = Pssh(None, [])
    defaults = {
        "log": logging.getLogger(),
        "host_list": list(HOSTS),
        "reachable_hosts": list(HOSTS),
        "unreachable_hosts": [],
        "user": "u",
        "pkey": "id_rsa",
        "password": None,
        "stop_on_errors": True,
        "process_output": True,
        "ssh_client_kwargs": {},
        "env_prefix": "",
        "client": mock.MagicMock(name="client"),
    }
    defaults.update(attrs)
    for k, v in defaults.items():
        setattr(p, k, v)
    return p


# -- 0. identity -----------------------------------------------------------------------------------


def test_A1_scp_module_alias_installs_the_module_not_the_function() -> None:
    # The package rebinds `scp` to the function; the documented alias for scp.py imports the
    # module by name, so a CVS package __init__ that runs `from cvs.lib.parallel.scp import scp`
    # still finds the function on the aliased module.
    name = "cvs_fake_lib.parallel.scp"
    pkg = importlib.import_module("cvs_core.compat.parallel")
    assert callable(pkg.scp) and not isinstance(pkg.scp, type(sys))
    ns: dict[str, Any] = {"__name__": name}
    line = (
        "import sys, importlib; "
        "sys.modules[__name__] = importlib.import_module('cvs_core.compat.parallel.scp')"
    )
    try:
        exec(line, ns)
        mod = sys.modules[name]
        assert isinstance(mod, type(sys)) and callable(mod.scp)
    finally:
        sys.modules.pop(name, None)
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "adopting-in-cvs.md").read_text()
    assert "importlib.import_module('cvs_core.compat.parallel.scp')" in doc


def test_A4_B2_exception_classes_are_parallel_ssh_s_when_importable() -> None:
    assert exc_mod.ConnectionError is builtins.ConnectionError
    assert pssh_mod.ConnectionError is builtins.ConnectionError
    try:
        import pssh.exceptions as real  # type: ignore[import-not-found]
    except ImportError:
        assert exc_mod.FROM_PARALLEL_SSH is False
        assert pssh_mod.Timeout is exc_mod.Timeout and pssh_mod.SessionError is exc_mod.SessionError
        return
    assert exc_mod.FROM_PARALLEL_SSH is True
    for name in ("Timeout", "SessionError", "AuthenticationError", "HostArgumentError"):
        assert getattr(exc_mod, name) is getattr(real, name)
    assert pssh_mod.Timeout is real.Timeout and pssh_mod.SessionError is real.SessionError
    assert "gevent" not in sys.modules  # the exceptions alone pull in no gevent


def test_A4_stand_ins_without_parallel_ssh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pssh", None)
    monkeypatch.setitem(sys.modules, "pssh.exceptions", None)
    spec = importlib.util.find_spec("cvs_core.compat.parallel.exceptions")
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh.FROM_PARALLEL_SSH is False
    assert fresh.Timeout.__name__ == "Timeout" and fresh.Timeout.__module__ == fresh.__name__
    assert issubclass(fresh.HostKeyError, builtins.ConnectionError)
    assert fresh.ConnectionError is builtins.ConnectionError


def test_A4_a_double_raising_timeout_mid_stream_is_caught_and_spread(client_cls) -> None:
    # stop_on_errors=False: CVS catches Timeout while reading h2's stdout and gives that same
    # exception to every item without one (h1 included, already processed).
    e = pssh_mod.Timeout()

    def stream():
        yield "partial"
        raise e

    out = [item("h1", ["a"]), item("h2"), item("h3", ["c"])]
    out[1].stdout = stream()
    client_cls.return_value.run_command.side_effect = None
    client_cls.return_value.run_command.return_value = out
    p = Pssh(None, HOSTS, stop_on_errors=False)
    p.check_connectivity = mock.MagicMock(return_value=[])
    got = p.exec("x")
    assert got["h2"] == "partial\nTimeout()\nABORT: Timeout Error in Host: h2\n"
    assert got["h3"] == "c\nTimeout()\nABORT: Timeout Error in Host: h3\n"
    assert out[0].exception is e and out[2].exception is e
    p.check_connectivity.assert_called_once_with(HOSTS)  # all three are prune candidates
    out[1].stdout = stream()
    for o in out:
        o.exception = None
    p.stop_on_errors = True
    with pytest.raises(pssh_mod.Timeout):
        p.exec("x")


def test_A5_parallel_ssh_lib_exports_a_working_client() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import cvs_core.compat.parallel_ssh_lib as shim
    assert shim.ParallelSSHClient is client_mod.ParallelSSHClient
    assert "ParallelSSHClient" in shim.__all__
    assert callable(shim.ParallelSSHClient.run_command)


# -- 1. names looked up at call time ---------------------------------------------------------------


def test_B1_client_constructions_counted(client_cls) -> None:
    client_cls.return_value.run_command.side_effect = None
    p = Pssh(None, HOSTS, user="u", stop_on_errors=False)
    assert client_cls.call_count == 1
    # check_connectivity: +1 (a temporary client) per call with hosts; none for []
    client_cls.return_value.run_command.return_value = [item("h2", exception=ConnectionError())]
    assert p.check_connectivity([]) == [] and client_cls.call_count == 1
    assert p.check_connectivity(["h2"]) == ["h2"] and client_cls.call_count == 2
    # prune_nodes: +1 only when a host is removed
    assert p.prune_nodes(["zz"]) == [] and client_cls.call_count == 2
    assert p.prune_nodes(["h2"]) == ["h2"] and client_cls.call_count == 3


def test_B3_build_env_prefix_is_looked_up_at_init(monkeypatch, client_cls) -> None:
    monkeypatch.setattr(pssh_mod, "build_env_prefix", lambda env: "PREFIX")
    assert Pssh(None, HOSTS, env_vars={"A": 1}).env_prefix == "PREFIX"


def test_B4_check_connectivity_runs_on_every_exec_without_candidates(client_cls) -> None:
    p = Pssh(None, HOSTS, stop_on_errors=False)
    p.check_connectivity = mock.MagicMock(return_value=[])
    p.exec("x")
    p.exec_cmd_list(["a", "b", "c"])
    assert p.check_connectivity.call_args_list == [mock.call([]), mock.call([])]
    p.stop_on_errors = True
    p.exec("x")
    assert p.check_connectivity.call_count == 2


def test_B5_pruning_and_abort_marks_live_inside_process_output(client_cls) -> None:
    p = Pssh(None, HOSTS, stop_on_errors=False)
    p.unreachable_hosts = ["gone"]
    with mock.patch.object(Pssh, "_process_output", return_value={"h1": "x"}) as po:
        assert p.exec("cmd", detailed=True) == {"h1": "x"}  # no ABORT added outside it
    po.assert_called_once()
    with (
        mock.patch.object(Pssh, "prune_unreachable_hosts") as prune,
        mock.patch.object(Pssh, "inform_unreachability") as inform,
    ):
        p.exec("cmd")
        assert prune.call_count == 1 and inform.call_count == 1
        p.stop_on_errors = True
        p.exec("cmd")
        assert prune.call_count == 1 and inform.call_count == 1


def test_B6_a_sharded_construction_builds_no_pssh() -> None:
    with mock.patch.object(mp_mod, "Pssh") as cls:
        h = MultiProcessPssh(None, HOSTS, password="pw", config=ParallelConfig(2))
        assert cls.call_count == 0 and h.pssh is None and h.client is None
        MultiProcessPssh(None, HOSTS, config=ParallelConfig(3))
        assert cls.call_count == 1


def test_B6_patching_init_reaches_the_non_sharded_path() -> None:
    with mock.patch.object(mp_mod.Pssh, "__init__", return_value=None) as init:
        h = MultiProcessPssh(None, HOSTS, "u", None, "k", config=ParallelConfig(32))
    # A mock __init__ is not a descriptor: the positional arguments come without self.
    init.assert_called_once_with(
        None, HOSTS, "u", None, "k", False, True, None, process_output=True
    )
    assert not hasattr(h.pssh, "client")


def test_B7_B8_sharder_and_config_names(monkeypatch) -> None:
    cfg = ParallelConfig(1)
    monkeypatch.setattr(mp_mod.ParallelConfig, "from_env", classmethod(lambda cls: cfg))
    with mock.patch.object(mp_mod, "PsshSharder") as sharder:
        h = MultiProcessPssh(None, HOSTS)
    assert h.config is cfg
    sharder.assert_called_once_with(cfg)
    assert h.sharder is sharder.return_value


def test_B9_init_sharded_replaced_then_attributes_set() -> None:
    with mock.patch.object(MultiProcessPssh, "_init_sharded") as init:
        h = MultiProcessPssh(None, HOSTS, "u", None, "k", config=ParallelConfig(2), port=22)
    init.assert_called_once_with(None, HOSTS, "u", None, "k", False, True, None, port=22)
    assert h.pssh is None and h.ssh_client_kwargs == {"port": 22} and h.log is logging.getLogger()
    # the caller then sets what the operations read (seams §3)
    h.host_list = HOSTS
    h.reachable_hosts = list(HOSTS)
    h.unreachable_hosts = []
    h.user, h.password, h.pkey, h.host_key_check = "u", None, "k", False
    h.stop_on_errors, h.env_vars, h.env_prefix = True, None, ""
    h.sharder = mock.MagicMock()
    h.sharder.chunk_hosts.return_value = iter([HOSTS])
    h.sharder.execute_sharded.return_value = [
        {"result": {"h1": "a\n"}, "reachable_hosts": HOSTS, "unreachable_hosts": []}
    ]
    assert h.exec("x", print_console=False) == {"h1": "a\n"}


def test_B10_every_sharded_operation_calls_execute_sharded_once() -> None:
    h = MultiProcessPssh(None, HOSTS, user="u", config=ParallelConfig(2))
    with mock.patch.object(sharder_mod.PsshSharder, "execute_sharded") as ex:
        ex.return_value = [
            {"result": {"h1": "a"}, "reachable_hosts": ["h1", "h2"], "unreachable_hosts": []},
            {"result": {"h3": "c"}, "reachable_hosts": ["h3"], "unreachable_hosts": []},
        ]
        out = h.exec("cmd", timeout=5, print_console=False)
    assert out == {"h1": "a", "h3": "c"}
    (payloads,), kwargs = ex.call_args
    assert ex.call_count == 1 and kwargs == {}
    init = {
        "log": None,
        "user": "u",
        "password": None,
        "pkey": "id_rsa",
        "host_key_check": False,
        "stop_on_errors": True,
        "env_vars": None,
    }
    assert payloads == [
        {
            "operation": "exec",
            "init": {**init, "host_list": ["h1", "h2"]},
            "cmd": "cmd",
            "timeout": 5,
            "detailed": False,
        },
        {
            "operation": "exec",
            "init": {**init, "host_list": ["h3"]},
            "cmd": "cmd",
            "timeout": 5,
            "detailed": False,
        },
    ]
    # the instance's sharder is read on every call
    h.sharder = mock.MagicMock()
    h.sharder.chunk_hosts.return_value = iter([HOSTS])
    h.sharder.execute_sharded.return_value = []
    assert h.exec("x", print_console=False) == {}
    h.sharder.execute_sharded.assert_called_once()


def test_B11_S3_executor_names_and_call_form(monkeypatch) -> None:
    pool = mock.MagicMock(name="ProcessPoolExecutor")
    executor = pool.return_value.__enter__.return_value
    futures = []

    def submit(fn, payload):
        fut = mock.MagicMock()
        fut.result.return_value = {"ran": payload["n"]}
        futures.append(fut)
        return fut

    executor.submit.side_effect = submit
    monkeypatch.setattr(sharder_mod, "ProcessPoolExecutor", pool)
    monkeypatch.setattr(sharder_mod, "as_completed", lambda fs: list(fs)[::-1])
    ctx = object()
    monkeypatch.setattr(sharder_mod, "mp", SimpleNamespace(get_context=lambda how: (how, ctx)))
    s = sharder_mod.PsshSharder(ParallelConfig(2, 1))
    assert s.execute_sharded([]) == [] and pool.call_count == 0
    payloads = [{"n": 0, "init": {}}, {"n": 1, "init": {}}, {"n": 2, "init": {}}]
    assert s.execute_sharded(payloads) == [{"ran": 0}, {"ran": 1}, {"ran": 2}]
    pool.assert_called_once_with(
        max_workers=min(3, s.config.max_workers), mp_context=("spawn", ctx)
    )
    assert executor.submit.call_args_list == [
        mock.call(sharder_mod.PsshSharder.run_shard, p) for p in payloads
    ]


def test_B12_run_shard_builds_pssh_through_the_module_name() -> None:
    with mock.patch.object(sharder_mod, "Pssh") as cls:
        cls.return_value.exec.return_value = {"h1": "x"}
        cls.return_value.reachable_hosts = ["h1"]
        cls.return_value.unreachable_hosts = []
        payload = {"operation": "exec", "init": {"log": None, "host_list": ["h1"]}, "cmd": "c"}
        got = sharder_mod.PsshSharder.run_shard(payload)
    cls.assert_called_once_with(log=None, host_list=["h1"], process_output=False)
    cls.return_value.exec.assert_called_once_with(cmd="c", print_console=False)
    cls.return_value.destroy_clients.assert_called_once_with()
    assert got == {"result": {"h1": "x"}, "reachable_hosts": ["h1"], "unreachable_hosts": []}
    assert payload["init"]["process_output"] is False  # mutated in place
    with (
        pytest.raises(ValueError, match="Unknown operation: nope"),
        mock.patch.object(sharder_mod, "Pssh") as cls,
    ):
        sharder_mod.PsshSharder.run_shard({"operation": "nope", "init": {}})
    assert cls.call_count == 0


# -- 2. constructors and calls ---------------------------------------------------------------------


def test_C2_set_before_branching_and_non_sharded_attribute_set() -> None:
    with mock.patch.object(mp_mod, "Pssh") as cls:
        hosts = list(HOSTS)
        h = MultiProcessPssh(None, hosts, "u", "pw", "k", config=ParallelConfig(0), x=1)
    cls.assert_called_once_with(
        None, hosts, "u", "pw", "k", False, True, None, process_output=True, x=1
    )
    assert h.host_list is hosts and h.reachable_hosts == hosts and h.unreachable_hosts == []
    assert h.ssh_client_kwargs == {"x": 1} and h.log is logging.getLogger()
    for absent in ("sharder", "user", "pkey", "password", "stop_on_errors", "env_prefix", "client"):
        assert not hasattr(h, absent), absent


def test_C2_sharded_accepts_a_password_and_connects_nothing(client_cls) -> None:
    import warnings

    hosts = list(HOSTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = MultiProcessPssh(logging.getLogger("x"), hosts, "u", "pw", config=ParallelConfig(1))
    assert client_cls.call_count == 0
    assert h.host_list is hosts and h.password == "pw" and h.process_output is True
    assert h._shard_init_kwargs()["password"] == "pw"


# -- 3. state, with __init__ replaced --------------------------------------------------------------


def test_state_pssh_methods_work_from_attributes_alone() -> None:
    client = mock.MagicMock()
    client.run_command.return_value = [item("h1", ["a"]), item("h2", ["b"])]
    p = bare_pssh(client=client, reachable_hosts=["h1", "h2"], env_prefix="export A=1")
    assert p.exec("x") == {"h1": "a\n\n", "h2": "b\n\n"}
    client.run_command.assert_called_once_with("export A=1 ; x", stop_on_errors=True)
    p.exec_cmd_list(["c1", "c2"], timeout=3)
    client.run_command.assert_called_with(
        "%s", host_args=["export A=1 ; c1", "export A=1 ; c2"], read_timeout=3, stop_on_errors=True
    )
    p.destroy_clients()
    assert not hasattr(p, "client")
    with pytest.raises(AttributeError):
        p.exec("x")


def test_state_pruning_reads_attributes(client_cls) -> None:
    p = bare_pssh(stop_on_errors=False, ssh_client_kwargs={"port": 2222})
    p.reachable_hosts = ["h3", "h1", "h2"]
    assert p.prune_nodes(["h2", "h3", None]) == ["h3", "h2"]  # reachable_hosts order
    assert p.reachable_hosts == ["h1"] and p.unreachable_hosts == ["h3", "h2"]
    client_cls.assert_called_once_with(
        ["h1"], user="u", pkey="id_rsa", keepalive_seconds=30, port=2222
    )


def test_state_multiprocess_non_sharded_with_pssh_init_replaced() -> None:
    with mock.patch.object(mp_mod.Pssh, "__init__", return_value=None):
        h = MultiProcessPssh(None, HOSTS, config=ParallelConfig(32))
    inner = h.pssh
    inner.exec = mock.MagicMock(return_value={"h1": "x"})
    inner.reachable_hosts, inner.unreachable_hosts = ["h1"], ["h2"]
    assert h.exec("c") == {"h1": "x"}
    inner.exec.assert_called_once_with("c", timeout=None, print_console=True, detailed=False)
    assert h.reachable_hosts == ["h1"] and h.unreachable_hosts == ["h2"]


# -- 4. the client protocol ------------------------------------------------------------------------


def test_4_1_construction_forms(client_cls) -> None:
    Pssh(None, HOSTS, user="u", port=22)
    client_cls.assert_called_with(HOSTS, user="u", pkey="id_rsa", keepalive_seconds=30, port=22)
    Pssh(None, HOSTS, user="u", password="pw", pkey="k")
    client_cls.assert_called_with(HOSTS, user="u", password="pw", keepalive_seconds=30)
    p = Pssh(None, HOSTS, user="u", password="pw", port=22)
    client_cls.return_value.run_command.side_effect = None
    client_cls.return_value.run_command.return_value = []
    p.check_connectivity(["h1"])
    client_cls.assert_called_with(
        ["h1"], user="u", pkey=None, password="pw", port=22, timeout=2, num_retries=0
    )
    client_cls.return_value.run_command.assert_called_with(
        "echo 1", stop_on_errors=False, read_timeout=2
    )
    client_cls.return_value.close.assert_not_called()  # never closed (a double)


def test_4_1_three_info_lines_without_password(client_cls, caplog) -> None:
    caplog.set_level(logging.INFO)
    Pssh(None, ["h1"], user="u", pkey="/k")
    assert [r.getMessage() for r in caplog.records][:3] == [
        "Connecting to hosts: ['h1']",
        "User: u",
        "Private key: /k",
    ]


def test_4_2_command_call_forms(client_cls) -> None:
    c = client_cls.return_value
    p = Pssh(None, HOSTS, env_vars={"A": "1"})
    p.exec("x")
    c.run_command.assert_called_with("export A=1 ; x", stop_on_errors=True)
    p.stop_on_errors = False
    p.check_connectivity = lambda hosts: []
    p.exec("x", timeout=4)
    c.run_command.assert_called_with("export A=1 ; x", read_timeout=4, stop_on_errors=False)
    plain = Pssh(None, HOSTS)
    cmds = ["a", "b", "c"]
    plain.exec_cmd_list(cmds)
    assert c.run_command.call_args == mock.call("%s", host_args=cmds, stop_on_errors=True)
    assert c.run_command.call_args.kwargs["host_args"] is cmds  # the caller's list itself
    plain.reboot_connections()
    c.run_command.assert_called_with("reboot -f", stop_on_errors=True)


def test_4_2_host_args_never_realigned_on_a_foreign_client(client_cls) -> None:
    c = client_cls.return_value
    c.run_command.side_effect = exc_mod.HostArgumentError("mismatch")
    p = Pssh(None, HOSTS)
    p.reachable_hosts = ["h1", "h3"]
    with pytest.raises(exc_mod.HostArgumentError):
        p.exec_cmd_list(["a", "b", "c"])
    assert c.run_command.call_args.kwargs["host_args"] == ["a", "b", "c"]


def test_4_3_result_shapes_from_a_double(client_cls) -> None:
    c = client_cls.return_value
    c.run_command.side_effect = None
    c.run_command.return_value = [
        item("h1", ["a\tb"], ["e"], 3),
        item("h2", None, None, None),
        item("h3", [], [], 0, exception=RuntimeError("boom\tx")),
    ]
    p = Pssh(None, HOSTS)
    assert p.exec("x", detailed=True) == {
        "h1": {"output": "a   b\ne\n\n", "exit_code": 3},
        "h2": {"output": "\n", "exit_code": -1},
        "h3": {"output": "boom   x\n", "exit_code": -1},
    }


def test_4_4_transfers_drive_copy_file_pool_join_and_get(client_cls, tmp_path) -> None:
    c = client_cls.return_value
    ok, bad = mock.MagicMock(), mock.MagicMock()
    bad.get.side_effect = OSError("disk full")
    c.copy_file.return_value = [ok, bad, ok]
    p = Pssh(None, HOSTS)
    with pytest.raises(OSError) as info:
        p.upload_file("/l", "/r", recurse=True)
    c.copy_file.assert_called_once_with("/l", "/r", recurse=True)
    c.pool.join.assert_called_once_with()
    assert str(info.value) == (
        "upload_file '/l' -> '/r' failed on 1/3 hosts: [('h2', OSError('disk full'))]"
    )
    assert info.value.__cause__ is bad.get.side_effect
    c.copy_remote_file.return_value = [ok, ok, ok]
    assert p.download_file("/r", "/l", suffix_separator=".") == {h: f"/l.{h}" for h in HOSTS}
    c.copy_remote_file.assert_called_once_with("/r", "/l", recurse=False, suffix_separator=".")
    c.copy_file.reset_mock()
    c.copy_file.return_value = [ok, bad]
    got = p.upload_file_list({"h3": ("/a", "/b"), "h1": ("/c", "/d"), "zz": ("/e", "/f")})
    c.copy_file.assert_called_once_with(
        "%(local_file)s",
        "%(remote_file)s",
        copy_args=[
            {"local_file": "/c", "remote_file": "/d"},
            {"local_file": "/a", "remote_file": "/b"},
        ],
    )
    assert got == {"h1": "h1: SUCCESS", "h3": "h3: FAILED - disk full"}
    with mock.patch.object(Pssh, "upload_file") as up:
        p.scp_file("/l", "/r", recurse=True)
    up.assert_called_once_with("/l", "/r", recurse=True)


def test_4_5_stop_on_errors_stored_exceptions_are_formatted_not_raised(client_cls) -> None:
    c = client_cls.return_value
    c.run_command.side_effect = None
    c.run_command.return_value = [item("h1", exception=exc_mod.AuthenticationError("denied"))]
    p = Pssh(None, ["h1"])
    assert p.exec("x") == {"h1": "denied\n"}
    c.run_command.side_effect = ConnectionError("refused")  # raised by run_command: propagates
    with pytest.raises(ConnectionError):
        p.exec("x")
    p.stop_on_errors = False
    with pytest.raises(ConnectionError):
        p.exec("x")


def test_4_5_auth_errors_never_prune(client_cls) -> None:
    c = client_cls.return_value
    c.run_command.side_effect = None
    c.run_command.return_value = [
        item("h1", exception=exc_mod.AuthenticationError("denied")),
        item("h2", exception=exc_mod.SessionError("lost")),
        item("h3", exception=ConnectionError("refused")),
    ]
    p = Pssh(None, HOSTS, stop_on_errors=False)
    p.check_connectivity = mock.MagicMock(return_value=["h3", "h2"])
    got = p.exec("x")
    p.check_connectivity.assert_called_once_with(["h2", "h3"])
    assert p.reachable_hosts == ["h1"] and p.unreachable_hosts == ["h2", "h3"]
    assert got["h3"] == "refused\n" + ABORT and got["h1"] == "denied\n"


def test_4_7_banners_whatever_print_console(client_cls, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    p = Pssh(None, ["h1"], process_output=False)
    client_cls.return_value.run_command.side_effect = None
    client_cls.return_value.run_command.return_value = [item("h1", ["line"])]
    caplog.clear()
    p.exec("x", print_console=False)
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.INFO, "Host == h1 ==") in msgs and (logging.DEBUG, "x") in msgs
    assert (logging.INFO, "line") not in msgs
    caplog.clear()
    p.exec("x")
    assert next(r for r in caplog.records if r.getMessage() == "line").args == ("line",)


# -- 5. PsshSharder --------------------------------------------------------------------------------


def test_S1_S2_chunks_and_payloads() -> None:
    s = sharder_mod.PsshSharder(ParallelConfig(2))
    gen = s.chunk_hosts(["a", "b", "c"])
    s.config.hosts_per_shard = 1  # read when iteration starts
    assert list(gen) == [["a"], ["b"], ["c"]]
    s.config.hosts_per_shard = 0
    with pytest.raises(ValueError):
        list(s.chunk_hosts(["a"]))
    assert s.create_payloads("exec", [], {"x": 1}, cmd="c") == []


def test_S4_merge_results_is_an_instance_method_over_shard_returns() -> None:
    s = sharder_mod.PsshSharder(ParallelConfig(2))
    shards = [{"result": {"b": 1, "x": 9}}, None, {"result": {"a": 2, "b": 3}}]
    assert s.merge_results(shards, ["a", "b"]) == {"a": 2, "b": 3}
    assert list(s.merge_results(shards, ["b", "a"])) == ["b", "a"]
    assert s.merge_results([], ["a"]) == {} and s.merge_results([None], ["a"]) == {}


# -- 6. MultiProcessPssh operations ----------------------------------------------------------------


def test_6_non_sharded_delegation_and_sync() -> None:
    with mock.patch.object(mp_mod, "Pssh") as cls:
        h = MultiProcessPssh(None, HOSTS, config=ParallelConfig(32))
    inner = cls.return_value
    inner.reachable_hosts, inner.unreachable_hosts = ["h1", "h2"], ["h3"]
    h.exec_cmd_list(["a", "b", "c"], timeout=2)
    inner.exec_cmd_list.assert_called_once_with(["a", "b", "c"], timeout=2, print_console=True)
    assert h.reachable_hosts == ["h1", "h2"] and h.unreachable_hosts == ["h3"]
    h.reachable_hosts = ["h1", "h2", "h3"]
    inner.reachable_hosts = ["zz"]
    assert h.upload_file("/l", "/r") is None
    inner.upload_file.assert_called_once_with("/l", "/r", recurse=False)
    assert h.reachable_hosts == ["h1", "h2", "h3"]  # no sync after uploads
    h.download_file("/r", "/l")
    inner.download_file.assert_called_once_with("/r", "/l", recurse=False, suffix_separator="_")
    assert h.prune_nodes(["nope"]) == [] and inner.prune_nodes.call_count == 0
    h.prune_nodes(["h2", "nope"])
    inner.prune_nodes.assert_called_once_with(["h2"])
    assert h.reboot_connections() is None


def test_6_sharded_exec_cmd_list_payloads_per_chunk() -> None:
    h = MultiProcessPssh(None, HOSTS, env_vars={"A": "1"}, config=ParallelConfig(2))
    h.reachable_hosts = ["h1", "h3"]
    h.sharder = mock.MagicMock(wraps=sharder_mod.PsshSharder(h.config))
    h.sharder.execute_sharded = mock.MagicMock(
        return_value=[
            {
                "result": {"h1": "a", "h3": "c"},
                "reachable_hosts": ["h1", "h3"],
                "unreachable_hosts": [],
            }
        ]
    )
    assert h.exec_cmd_list(["a", "b", "c"], print_console=False) == {"h1": "a", "h3": "c"}
    (payloads,), _ = h.sharder.execute_sharded.call_args
    assert [p["cmd_list"] for p in payloads] == [["a", "c"]]  # mapped by host, raw commands
    assert payloads[0]["init"]["host_list"] == ["h1", "h3"] and payloads[0]["timeout"] is None
    with pytest.raises(ValueError, match="cmd_list length must match"):
        h.exec_cmd_list(["x"])


def test_6_sharded_upload_file_list_only_chunks_with_targets() -> None:
    h = MultiProcessPssh(None, HOSTS, config=ParallelConfig(1))
    h.sharder.execute_sharded = mock.MagicMock(return_value=[{"result": {"h3": "h3: SUCCESS"}}])
    assert h.upload_file_list({"h3": ("/a", "/b")}) == {"h3": "h3: SUCCESS"}
    (payloads,), _ = h.sharder.execute_sharded.call_args
    assert len(payloads) == 1 and payloads[0]["init"]["host_list"] == ["h3"]
    assert payloads[0]["node_path_map"] == {"h3": ("/a", "/b")}
    h.sharder.execute_sharded.reset_mock()
    assert h.upload_file_list({"zz": ("/a", "/b")}) == {}
    h.sharder.execute_sharded.assert_not_called()


def test_6_sharded_reboot_prune_destroy() -> None:
    h = MultiProcessPssh(None, HOSTS, config=ParallelConfig(2))
    h.sharder.execute_sharded = mock.MagicMock(
        return_value=[{"result": None, "reachable_hosts": ["h1"], "unreachable_hosts": ["h2"]}]
    )
    assert h.reboot_connections() == {}
    assert h.unreachable_hosts == []  # merged with merge_unreachable=False
    assert h.prune_nodes(["h1", "zz"]) == ["h1"] and h.unreachable_hosts == ["h1"]
    h.destroy_clients()
    assert h.client is None


def test_6_sharded_reports_previously_pruned_hosts() -> None:
    # Fixed (contract §1.4): CVS's sharded output dropped hosts pruned by earlier calls.
    h = MultiProcessPssh(None, HOSTS, config=ParallelConfig(2))
    h.prune_nodes(["h2"])
    h.sharder.execute_sharded = mock.MagicMock(
        return_value=[
            {
                "result": {"h1": "a", "h3": "c"},
                "reachable_hosts": ["h1", "h3"],
                "unreachable_hosts": [],
            }
        ]
    )
    assert h.exec("x", print_console=False) == {"h1": "a", "h3": "c", "h2": ABORT}
    assert h.exec("x", detailed=True, print_console=True)["h2"] == {
        "output": ABORT,
        "exit_code": -1,
    }
