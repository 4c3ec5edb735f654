"""compat ``orchestrators.base`` and ``.baremetal`` (contract §3.1, §3.2, §7.2): the Pssh seam,
call conventions, subset handles, sudo_prefix, setup_env and the MPI command builder."""

from __future__ import annotations

import typing
from typing import Any
from unittest import mock

import pytest

from cvs_core.compat.orchestrators import baremetal, base

from .conftest import HOSTS, logged, make_config, ok

CVS_ARGS = dict(
    user="cvsuser",
    password=None,
    pkey="/home/cvsuser/.ssh/id_rsa",
    host_key_check=False,
    stop_on_errors=False,
)


# -- base --------------------------------------------------------------------------------------
def test_orchestrator_is_abstract_over_cvs_methods(log) -> None:
    assert base.Orchestrator.__abstractmethods__ == {"exec", "exec_on_head", "setup_env", "cleanup"}
    with pytest.raises(TypeError):
        base.Orchestrator(log, {})  # type: ignore[abstract]

    class Minimal(base.Orchestrator):
        def exec(self, cmd, hosts=None, timeout=None):
            return {}

        def exec_on_head(self, cmd, timeout=None, detailed=False):
            return {}

        def setup_env(self, hosts, env_script=None):
            return True

        def cleanup(self, hosts):
            return True

    m = Minimal(log, {"k": 1}, stop_on_errors=True)
    assert (m.log, m.config, m.stop_on_errors) == (log, {"k": 1}, True)
    with pytest.raises(NotImplementedError, match="MPI distribution not supported by Minimal"):
        m.distribute_using_mpi("a.out", HOSTS, 8, {}, "/opt/ompi/bin")


# -- construction ------------------------------------------------------------------------------
def test_init_builds_exactly_two_handles_head_first(log, pssh, bare) -> None:
    assert pssh.call_args_list == [
        mock.call(log, [HOSTS[0]], **CVS_ARGS),
        mock.call(log, HOSTS, **CVS_ARGS),
    ]
    assert bare.head.host_list == [HOSTS[0]]
    assert bare.all.host_list == HOSTS
    assert (bare.hosts, bare.head_node, bare.ssh_port) == (HOSTS, HOSTS[0], 22)
    assert bare.orchestrator_type == "baremetal"
    assert (bare.user, bare.pkey, bare.password) == ("cvsuser", "/home/cvsuser/.ssh/id_rsa", None)


def test_init_accepts_list_of_dicts_and_stop_on_errors(log, pssh) -> None:
    cfg = {
        "node_dict": [{"mgmt_ip": "a1"}, {"mgmt_ip": "a2"}],
        "username": "u",
        "priv_key_file": "k",
        "password": None,
    }
    orch = baremetal.BaremetalOrchestrator(log, cfg, stop_on_errors=True)
    assert orch.hosts == ["a1", "a2"]
    assert pssh.call_args_list[1] == mock.call(
        log,
        ["a1", "a2"],
        user="u",
        password=None,
        pkey="k",
        host_key_check=False,
        stop_on_errors=True,
    )


def test_head_node_dict_is_ignored_as_in_cvs(log, pssh) -> None:
    orch = baremetal.BaremetalOrchestrator(log, make_config(head_node_dict={"10.0.0.3": {}}))
    assert orch.head_node == HOSTS[0]


# -- exec --------------------------------------------------------------------------------------
def test_exec_all_hosts_keyword_convention(bare) -> None:
    bare.all.exec.return_value = {"10.0.0.1": "x"}
    assert bare.exec("hostname") == {"10.0.0.1": "x"}
    bare.all.exec.assert_called_once_with("hostname", timeout=None, detailed=False)
    bare.exec("ls", hosts=list(reversed(HOSTS)), timeout=5, detailed=True)
    assert bare.all.exec.call_args == mock.call("ls", timeout=5, detailed=True)


def test_exec_print_console_forwarded_only_when_changed(bare) -> None:
    bare.exec("ls", print_console=False)
    bare.all.exec.assert_called_once_with("ls", timeout=None, detailed=False, print_console=False)


def test_exec_detailed_at_large_host_count(log, pssh) -> None:
    hosts = [f"10.1.0.{i}" for i in range(40)]  # above CVS's 32-host shard threshold
    orch = baremetal.BaremetalOrchestrator(log, make_config(hosts=hosts))
    orch.all.exec.return_value = {h: {"output": "ok\n", "exit_code": 0} for h in hosts}
    out = orch.exec("true", detailed=True)
    assert len(out) == 40 and all(v["exit_code"] == 0 for v in out.values())


def test_exec_subset_with_substituted_pssh_is_built_per_call_never_destroyed(log, pssh, bare):
    # CVS fa4ca32e (seams B14): one construction per subset call, never destroyed.
    for _ in range(2):
        out = bare.exec("uptime", hosts=[HOSTS[1]], timeout=3)
    assert pssh.call_count == 4
    assert pssh.call_args_list[2:] == [mock.call(log, [HOSTS[1]], **CVS_ARGS)] * 2
    for handle in pssh.handles[2:]:
        handle.exec.assert_called_once_with("uptime", timeout=3, detailed=False)
        handle.destroy_clients.assert_not_called()
    assert out is pssh.handles[3].exec.return_value
    assert bare._subset_handles == {}
    bare.all.exec.assert_not_called()


def test_exec_head_only_subset_still_uses_a_subset_handle(pssh, bare) -> None:
    bare.exec("ls", hosts=[HOSTS[0]])
    assert pssh.call_count == 3
    bare.head.exec.assert_not_called()


def test_exec_empty_host_list_builds_a_handle_over_no_host(log, pssh, bare) -> None:
    # CVS: set([]) is not every host, so a subset handle over [] (it answers nothing).
    bare.exec("rm -rf /scratch", hosts=[])
    assert pssh.call_args == mock.call(log, [], **CVS_ARGS)
    bare.all.exec.assert_not_called()


class EngineHandle:
    """Stands in for the cvs_core engine's Pssh class (connections kept, thread-safe)."""

    built: typing.ClassVar[list[EngineHandle]] = []

    def __init__(self, log: Any, hosts: Any, **kwargs: Any) -> None:
        self.hosts = list(hosts)
        self.calls: list[tuple] = []
        self.destroyed = 0
        EngineHandle.built.append(self)

    def exec(self, cmd: str, **kwargs: Any) -> dict:
        self.calls.append((cmd, kwargs))
        return {h: "out\n" for h in self.hosts}

    def destroy_clients(self) -> None:
        self.destroyed += 1


@pytest.fixture
def engine(log):
    EngineHandle.built = []
    with (
        mock.patch.object(baremetal, "Pssh", EngineHandle),
        mock.patch.object(baremetal, "_ENGINE_PSSH", EngineHandle),
    ):
        yield baremetal.BaremetalOrchestrator(log, make_config())


def test_engine_subset_handles_are_reused_not_leaked(engine) -> None:
    assert len(EngineHandle.built) == 2  # head, all
    assert engine.exec("poll", hosts=[]) == {}  # what a handle over no host answers
    assert len(EngineHandle.built) == 2
    for _ in range(5):
        assert engine.exec("poll", hosts=[HOSTS[1]]) == {HOSTS[1]: "out\n"}
    assert len(EngineHandle.built) == 3
    subset = EngineHandle.built[2]
    assert len(subset.calls) == 5 and subset.destroyed == 0
    engine.exec("poll", hosts=[HOSTS[1], HOSTS[2]])
    assert len(EngineHandle.built) == 4
    assert engine.cleanup(HOSTS) is True
    assert subset.destroyed == 1 and EngineHandle.built[3].destroyed == 1
    assert engine._subset_handles == {}


def test_engine_subset_cache_is_bounded(engine, monkeypatch) -> None:
    monkeypatch.setattr(baremetal, "MAX_SUBSET_HANDLES", 2)
    for host in HOSTS:
        engine.exec("x", hosts=[host])
    first = EngineHandle.built[2]
    assert first.destroyed == 1  # least recently used, closed on eviction
    assert [h.destroyed for h in EngineHandle.built[3:]] == [0, 0]
    engine.close()
    assert all(h.destroyed == 1 for h in EngineHandle.built)


# -- head, host and list execs -----------------------------------------------------------------
def test_exec_on_head(bare) -> None:
    bare.exec_on_head("hostname")
    bare.head.exec.assert_called_once_with("hostname", timeout=None, detailed=False)
    bare.exec_on_head("ls", timeout=9, detailed=True, print_console=False)
    assert bare.head.exec.call_args == mock.call(
        "ls", timeout=9, detailed=True, print_console=False
    )
    bare.all.exec.assert_not_called()


def test_exec_on_host_is_host_level_exec(bare) -> None:
    bare.exec_on_host("df -h", timeout=2)
    bare.all.exec.assert_called_once_with("df -h", timeout=2, detailed=False)


def test_exec_cmd_list(bare) -> None:
    bare.exec_cmd_list(["a", "b", "c"], timeout=4)
    bare.all.exec_cmd_list.assert_called_once_with(["a", "b", "c"], timeout=4)


# -- sudo_prefix -------------------------------------------------------------------------------
def test_sudo_prefix_passwordless_everywhere_probed_once(bare) -> None:
    bare.all.exec.return_value = {h: "0\n" for h in HOSTS}
    assert bare.sudo_prefix() == "sudo -n "
    assert bare.sudo_prefix() == "sudo -n "
    bare.all.exec.assert_called_once_with(baremetal.SUDO_PROBE_CMD)
    assert bare._needs_sudo is True


def test_sudo_prefix_no_passwordless_sudo(bare) -> None:
    bare.all.exec.return_value = {h: "1\n" for h in HOSTS}
    assert bare.sudo_prefix() == ""


def test_sudo_prefix_disagreement_uses_head(bare) -> None:
    bare.all.exec.return_value = {HOSTS[0]: "1", HOSTS[1]: "0", HOSTS[2]: "0"}
    assert bare.sudo_prefix() == ""
    (warning,) = logged(bare.log.warning)
    assert warning.startswith("Hosts disagree on passwordless sudo availability: {")


@pytest.mark.parametrize("answer", [mock.MagicMock(), {}, {HOSTS[0]: ""}, {HOSTS[0]: "\nABORT: x"}])
def test_sudo_prefix_unreadable_probe_falls_back_to_cvs_literal(bare, answer) -> None:
    bare.all.exec.return_value = answer
    assert bare.sudo_prefix() == "sudo "
    assert bare.sudo_prefix() == "sudo "
    assert bare.all.exec.call_count == 1


# -- setup_env and cleanup ---------------------------------------------------------------------
def test_setup_env_without_script(bare) -> None:
    assert bare.setup_env(HOSTS) is True
    bare.log.info.assert_called_with("No environment script specified, skipping setup")
    bare.all.exec.assert_not_called()


def test_setup_env_all_hosts(bare) -> None:
    bare.all.exec.return_value = ok()
    assert bare.setup_env(HOSTS, "/opt/env.sh") is True
    bare.all.exec.assert_called_once_with("bash /opt/env.sh", timeout=60, detailed=True)


def test_setup_env_failure_lists_hosts(bare) -> None:
    res = ok()
    res[HOSTS[2]] = {"output": "boom", "exit_code": 3}
    bare.all.exec.return_value = res
    assert bare.setup_env(HOSTS, "/opt/env.sh") is False
    bare.log.error.assert_called_once_with(f"Environment setup failed on hosts: ['{HOSTS[2]}']")


def test_setup_env_head_uses_exec_on_head_override(bare) -> None:
    bare.exec_on_head = mock.MagicMock(return_value={HOSTS[0]: {"output": "", "exit_code": 1}})
    assert bare.setup_env([HOSTS[0]], "e.sh") is False
    bare.exec_on_head.assert_called_once_with("bash e.sh", timeout=60, detailed=True)


def test_setup_env_subset(pssh, bare) -> None:
    def build(*args: Any, **kwargs: Any) -> mock.MagicMock:
        h = mock.MagicMock()
        h.exec.return_value = ok(*args[1])
        return h

    pssh.side_effect = build
    assert bare.setup_env(HOSTS[1:], "e.sh") is True
    assert pssh.call_args.args[1] == HOSTS[1:]


def test_cleanup(bare) -> None:
    assert bare.cleanup(HOSTS) is True
    bare.log.info.assert_called_once_with("Cleaning up on 3 hosts")


# -- MPI ---------------------------------------------------------------------------------------
RSH = (
    '--mca plm_rsh_agent ssh --mca plm_rsh_args "-p 22 -o StrictHostKeyChecking=no '
    '-o UserKnownHostsFile=/dev/null"'
)


def test_build_mpi_cmd_writes_hostfile_and_returns_mpirun(bare) -> None:
    bare.head.exec.return_value = ok(HOSTS[0])
    cmd = bare.build_mpi_cmd(
        "./a.out", HOSTS[:2], 8, {"NCCL_DEBUG": "INFO", "X": "1"}, "/opt/ompi/bin",
        mpi_extra_args=["--bind-to", "none"],
    )  # fmt: skip
    assert cmd == (
        f"/opt/ompi/bin/mpirun {RSH} --np 16 --allow-run-as-root --hostfile /tmp/mpi_hosts.txt "
        "--bind-to none -x NCCL_DEBUG=INFO -x X=1 ./a.out"
    )
    rm, write = bare.head.exec.call_args_list
    assert rm == mock.call("sudo rm -f /tmp/mpi_hosts.txt", timeout=None, detailed=False)
    assert write == mock.call(
        "bash -c 'echo \"10.0.0.1 slots=8\n10.0.0.2 slots=8\n\" > /tmp/mpi_hosts.txt'",
        timeout=None,
        detailed=False,
    )


def test_build_mpi_cmd_global_ranks_and_string_args(bare) -> None:
    bare.head.exec.return_value = ok(HOSTS[0])
    cmd = bare.build_mpi_cmd(
        "r", HOSTS, 2, {"A": "1"}, "/m", "--oversubscribe", no_of_global_ranks=5
    )
    assert cmd == (
        f"/m/mpirun {RSH} --np 5 --allow-run-as-root --hostfile /tmp/mpi_hosts.txt "
        "--oversubscribe -x A=1 r"
    )


def test_distribute_using_mpi_runs_on_head_with_500s(bare) -> None:
    bare.head.exec.side_effect = [{HOSTS[0]: "x"}, {HOSTS[0]: "y"}, {HOSTS[0]: "done"}]
    assert bare.distribute_using_mpi("r", HOSTS, 1, {"A": "b"}, "/m") == {HOSTS[0]: "done"}
    final = bare.head.exec.call_args
    assert final.args[0].startswith("/m/mpirun --mca plm_rsh_agent ssh")
    assert final.args[0].endswith(
        "--np 3 --allow-run-as-root --hostfile /tmp/mpi_hosts.txt -x A=b r"
    )
    assert final.kwargs == {"timeout": 500, "detailed": False}


def test_state_methods_work_with_init_replaced(log) -> None:
    # Seams §3: CVS's callers build an orchestrator with __init__ patched out and set its
    # attributes; private helper state (subset handles, the sudo cache) is created on first use.
    with mock.patch.object(baremetal.BaremetalOrchestrator, "__init__", return_value=None):
        orch = baremetal.BaremetalOrchestrator(log, None)
    orch.log, orch.hosts, orch.head_node = log, list(HOSTS), HOSTS[0]
    orch.user, orch.pkey, orch.password, orch.stop_on_errors = "u", "k", None, False
    orch.all, orch.head = mock.MagicMock(name="all"), mock.MagicMock(name="head")
    orch.all.exec.return_value = {h: "0\n" for h in HOSTS}
    assert orch.sudo_prefix() == "sudo -n "
    assert orch.sudo_prefix() == "sudo -n " and orch.all.exec.call_count == 1  # cached
    with mock.patch.object(baremetal, "Pssh") as cls:
        cls.return_value.exec.return_value = {HOSTS[1]: "x"}
        assert orch.exec("c", hosts=[HOSTS[1]]) == {HOSTS[1]: "x"}
    cls.assert_called_once_with(
        log,
        [HOSTS[1]],
        user="u",
        password=None,
        pkey="k",
        host_key_check=False,
        stop_on_errors=False,
    )
    assert orch.cleanup(None) is True
