"""CVS's seams of ``cvs.core.orchestrators`` (shared/spec/cvs-test-seams.md §1 B14, B16, B17,
B19, B21-B23 and §8.2 O2-O11), patched and inspected the way CVS's own tests do: module names
replaced by doubles, the runtime a ``MagicMock`` from a patched ``RuntimeFactory``, exact call
forms and log lines asserted. One test (or a few) per row, named by its ID. Nothing here
touches the network.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from cvs_core.compat.orchestrators import baremetal, container, factory

from .conftest import HOSTS, logged, make_config, ok

CREDS = dict(
    user="cvsuser",
    password=None,
    pkey="/home/cvsuser/.ssh/id_rsa",
    host_key_check=False,
    stop_on_errors=False,
)
RSH = (
    '--mca plm_rsh_agent ssh --mca plm_rsh_args "-p {port} -o StrictHostKeyChecking=no '
    '-o UserKnownHostsFile=/dev/null"'
)


def running_everywhere(name: str = "cvs_c") -> dict[str, dict[str, Any]]:
    return {h: {"running": True, "name": name, "exit_code": 0} for h in HOSTS}


# -- B14: baremetal.Pssh per subset call -----------------------------------------------------------
def test_B14_subset_exec_builds_one_pssh_per_call_never_destroyed(log, pssh, bare) -> None:
    bare.exec("a", hosts=[HOSTS[1]])
    bare.exec("b", hosts=[HOSTS[1]], timeout=4, detailed=True)
    assert pssh.call_args_list[2:] == [mock.call(log, [HOSTS[1]], **CREDS)] * 2
    first, second = pssh.handles[2:]
    # exec and nothing else: no destroy_clients()
    assert first.method_calls == [mock.call.exec("a", timeout=None, detailed=False)]
    assert second.method_calls == [mock.call.exec("b", timeout=4, detailed=True)]


def test_B14_setup_env_subset_builds_one_pssh_per_call(log, pssh, bare) -> None:
    for _ in range(2):
        bare.setup_env(HOSTS[1:], "env.sh")
    assert pssh.call_args_list[2:] == [mock.call(log, HOSTS[1:], **CREDS)] * 2
    for handle in pssh.handles[2:]:
        handle.exec.assert_called_once_with("bash env.sh", timeout=60, detailed=True)
        handle.destroy_clients.assert_not_called()


def test_B14_empty_subset_is_a_subset_call(log, pssh, bare) -> None:
    bare.exec("x", hosts=[])
    assert pssh.call_args == mock.call(log, [], **CREDS)
    pssh.handles[2].exec.assert_called_once_with("x", timeout=None, detailed=False)


# -- B16: DEFAULT_CONTAINER_ARGS (compat matched already) ---------------------------------------
def test_B16_default_container_args_are_read_per_call(make_container, monkeypatch) -> None:
    orch = make_container()
    defaults = dict(container.DEFAULT_CONTAINER_ARGS, devices=["/dev/null"], network_mode="bridge")
    monkeypatch.setattr(container, "DEFAULT_CONTAINER_ARGS", defaults)
    assert orch.get_devices() == ["/dev/null"]
    assert orch.get_network_mode() == "bridge"


# -- B17: MAX_INLINE_SETUP_SCRIPT_BYTES moves the limit either way ---------------------------------
@pytest.mark.parametrize(("limit", "size", "provisions"), [(20000, 20000, True), (100, 101, False)])
def test_B17_the_module_limit_is_the_limit(
    make_container, tmp_path: Path, monkeypatch, limit, size, provisions
) -> None:
    monkeypatch.setattr(container, "MAX_INLINE_SETUP_SCRIPT_BYTES", limit)
    orch = make_container()
    script = tmp_path / "s.sh"
    script.write_bytes(b"#" * size)
    orch.container_config["setup_script"] = str(script)
    orch.container_id = "cvs_c"
    orch.runtime.exec.return_value = ok()
    assert orch._provision_container() is provisions
    assert orch.runtime.exec.called is provisions
    if not provisions:
        orch.log.error.assert_called_once_with(
            f"container.setup_script '{script}' is too large for inline delivery "
            f"({size} bytes > {limit}). Slim the script, or bake the packages into the image."
        )


# -- B19: base64 and re in container.py ------------------------------------------------------------
def test_B19_provisioning_encodes_with_the_module_s_base64(
    make_container, tmp_path: Path, monkeypatch
) -> None:
    orch = make_container()
    script = tmp_path / "s.sh"
    script.write_bytes(b"true\n")
    orch.container_config["setup_script"] = str(script)
    orch.container_id = "cvs_c"
    orch.runtime.exec.return_value = ok()
    fake = mock.MagicMock(name="base64")
    fake.b64encode.return_value = b"ENCODED"
    monkeypatch.setattr(container, "base64", fake)
    assert orch._provision_container() is True
    fake.b64encode.assert_called_once_with(b"true\n")
    assert orch.runtime.exec.call_args.args[1] == (
        "set -o pipefail; echo ENCODED | base64 -d | bash"
    )


def test_B19_container_names_use_the_module_s_re(monkeypatch) -> None:
    assert container.ContainerOrchestrator.sanitize_container_name("rocm/cvs:latest") == (
        "rocm_cvs_latest"
    )
    fake = mock.MagicMock(name="re")
    fake.sub.return_value = "SUBBED"
    monkeypatch.setattr(container, "re", fake)
    monkeypatch.setattr(container.getpass, "getuser", lambda: "bob")
    assert container.ContainerOrchestrator.get_container_name({}, "rocm/cvs:latest") == (
        "bob_SUBBED"
    )
    fake.sub.assert_called_once_with(r"[^a-zA-Z0-9_]", "_", "rocm/cvs:latest")


# -- B21: VALID_CONTAINER_LIFETIMES ----------------------------------------------------------------
def test_B21_valid_lifetimes_are_looked_up_per_call(monkeypatch) -> None:
    monkeypatch.setattr(factory, "VALID_CONTAINER_LIFETIMES", ("no_launch", "per_run", "ephemeral"))
    block = {"lifetime": "ephemeral"}
    assert factory._resolve_container_lifetime(block) is block
    with pytest.raises(ValueError) as info:
        factory._resolve_container_lifetime({"lifetime": "persistent"})
    assert str(info.value) == (
        "container.lifetime must be one of ('no_launch', 'per_run', 'ephemeral'), got 'persistent'"
    )
    # The removed fields and the default are unchanged.
    with pytest.raises(ValueError, match=r"container\.launch is removed"):
        factory._resolve_container_lifetime({"lifetime": "ephemeral", "launch": True})
    assert factory._resolve_container_lifetime({"image": "i"})["lifetime"] == "per_run"


# -- B22: the two resolvers (compat matched already) ---------------------------------------------
def test_B22_config_init_calls_the_module_s_resolvers(monkeypatch) -> None:
    lifetime = mock.MagicMock(side_effect=lambda c: {**c, "lifetime": "L"})
    script = mock.MagicMock(side_effect=lambda c: {**c, "setup_script": "S"})
    monkeypatch.setattr(factory, "_resolve_container_lifetime", lifetime)
    monkeypatch.setattr(factory, "_resolve_container_setup_script", script)
    cfg = make_config("container", container={"image": "i"})
    lifetime.assert_called_once_with({"image": "i"})
    script.assert_called_once_with({"image": "i", "lifetime": "L"})
    assert cfg.container == {"image": "i", "lifetime": "L", "setup_script": "S"}


# -- B23: resolve_cluster_config_placeholders ------------------------------------------------------
def test_B23_cluster_resolution_is_cvs_s_function_imported_at_call_time(monkeypatch) -> None:
    utils_lib = types.ModuleType("cvs.lib.utils_lib")
    resolved = {
        "username": "patched",
        "priv_key_file": "/k",
        "node_dict": {"10.9.0.1": {}},
    }
    utils_lib.resolve_cluster_config_placeholders = mock.MagicMock(return_value=resolved)
    monkeypatch.setitem(sys.modules, "cvs.lib.utils_lib", utils_lib)
    cluster = {"username": "{user-id}", "priv_key_file": "/k", "node_dict": {"<changeme>": {}}}
    cfg = factory.OrchestratorConfig.from_configs(cluster)
    utils_lib.resolve_cluster_config_placeholders.assert_called_once_with(cluster)
    assert (cfg.username, list(cfg.node_dict)) == ("patched", ["10.9.0.1"])


def test_B23_without_cvs_the_core_resolves(monkeypatch, user) -> None:
    monkeypatch.setitem(sys.modules, "cvs.lib.utils_lib", None)  # import raises ImportError
    cfg = factory.OrchestratorConfig.from_configs(
        {"username": "{user-id}", "priv_key_file": "/k", "node_dict": {"h": {}}}
    )
    assert cfg.username == "cvsuser"


# -- O2: the sshd precheck runs on a single node too ----------------------------------------------
def test_O2_single_host_runs_the_precheck(make_container) -> None:
    orch = make_container(hosts=["10.9.9.9"])
    orch.container_id = "cvs_c"
    orch.runtime.exec.return_value = {"10.9.9.9": {"output": "", "exit_code": 0}}
    assert orch.setup_sshd() is True
    orch.runtime.exec.assert_called_once_with(
        "cvs_c", "pgrep -f '[s]shd.*2224' > /dev/null 2>&1", None, 10, True
    )


# -- O3: exec_on_head without a container ---------------------------------------------------------
def test_O3_exec_on_head_without_a_container_asks_the_runtime(make_container) -> None:
    orch = make_container()
    assert orch.container_id is None
    assert orch.exec_on_head("hostname") is orch.runtime.exec_on_head.return_value
    orch.runtime.exec_on_head.assert_called_once_with(None, "hostname", None)


def test_O3_the_docker_runtime_renders_container_none(log, pssh) -> None:
    block = {"image": "i", "name": "c1", "setup_script": None}
    orch = container.ContainerOrchestrator(log, make_config("container", container=block))
    orch.exec_on_head("hostname")
    orch.head.exec.assert_called_once_with("sudo docker exec None bash -c hostname", timeout=None)


# -- O4: a lifetime outside the three values ------------------------------------------------------
def test_O4_unknown_lifetime_launches_and_is_removed(make_container) -> None:
    orch = make_container()
    orch.container_config["lifetime"] = "sometimes"
    orch.container_config["setup_script"] = None
    orch.runtime.setup_containers.return_value = True
    assert orch.setup_containers() is True
    orch.runtime.is_running.assert_not_called()
    assert orch.runtime.setup_containers.call_args.args[1] == "cvs_c"
    orch.runtime.teardown_containers.return_value = True
    assert orch.teardown_containers() is True
    orch.runtime.teardown_containers.assert_called_once_with("cvs_c")
    orch.container_id = "cvs_c"
    assert orch.cleanup(HOSTS) is True
    assert orch.runtime.teardown_containers.call_count == 2


# -- O5: cleanup ignores the lifetime --------------------------------------------------------------
@pytest.mark.parametrize("lifetime", ["no_launch", "persistent", "per_run"])
def test_O5_cleanup_tears_down_whatever_the_lifetime(make_container, lifetime) -> None:
    orch = make_container(lifetime)
    orch.container_id = "cvs_c"
    orch.runtime.teardown_containers.return_value = False
    assert orch.cleanup(HOSTS) is False
    orch.runtime.teardown_containers.assert_called_once_with("cvs_c")
    assert orch.container_id == "cvs_c"  # cleared on success only
    orch.runtime.teardown_containers.return_value = True
    assert orch.cleanup(HOSTS) is True
    assert orch.container_id is None


# -- O6: _launch_containers writes into the shared runtime.args ------------------------------------
def test_O6_launch_writes_network_ipc_privileged_into_the_shared_args(make_container) -> None:
    orch = make_container(runtime={"name": "docker", "args": {"volumes": ["/d:/d"]}})
    orch.container_config["setup_script"] = None
    args = orch.container_config["runtime"]["args"]
    orch.runtime.setup_containers.return_value = True
    assert orch.setup_containers() is True
    launch_config = orch.runtime.setup_containers.call_args.args[0]
    assert launch_config is not orch.container_config  # a shallow copy ...
    assert launch_config["runtime"]["args"] is args  # ... sharing runtime.args
    assert orch.container_config["runtime"]["args"] == {
        "volumes": ["/d:/d"],
        "network": "host",
        "ipc": "host",
        "privileged": True,
    }


# -- O7: OrchestratorConfig keeps the caller's container dict --------------------------------------
def test_O7_config_keeps_and_fills_the_callers_dict_and_drops_unknown_kwargs() -> None:
    block = {"image": "rocm/cvs:latest"}
    cfg = make_config("container", container=block, ssh_port=2200, head_node_dict={"h": {}})
    assert cfg.container is block
    assert block == {
        "image": "rocm/cvs:latest",
        "lifetime": "per_run",
        "setup_script": factory.DEFAULT_CONTAINER_SETUP_SCRIPT,
    }
    assert not hasattr(cfg, "ssh_port") and cfg.get("ssh_port") is None
    assert cfg.get("head_node_dict") == {"h": {}}


# -- O8: build_mpi_cmd's hostfile calls ------------------------------------------------------------
def test_O8_build_mpi_cmd_calls_exec_on_head_twice_and_ignores_results(bare) -> None:
    bare.exec_on_head = mock.MagicMock(
        return_value={HOSTS[0]: {"output": "Permission denied", "exit_code": 1}}
    )
    bare.build_mpi_cmd("r", HOSTS[:2], 4, {}, "/m")
    assert bare.exec_on_head.call_args_list == [
        mock.call("sudo rm -f /tmp/mpi_hosts.txt"),
        mock.call("bash -c 'echo \"10.0.0.1 slots=4\n10.0.0.2 slots=4\n\" > /tmp/mpi_hosts.txt'"),
    ]


def test_O8_in_a_container_the_same_sudo_rm_runs_inside_it(make_container) -> None:
    orch = make_container()
    orch.container_id = "cvs_c"
    orch.runtime.exec_on_head.return_value = {HOSTS[0]: "sudo: command not found"}
    orch.build_mpi_cmd("r", HOSTS[:1], 1, {}, "/m")
    first, second = orch.runtime.exec_on_head.call_args_list
    assert first == mock.call("cvs_c", "sudo rm -f /tmp/mpi_hosts.txt", None)
    assert second.args[0] == "cvs_c" and second.args[2] is None and not second.kwargs


# -- O9: get_mpi_command's f-string ----------------------------------------------------------------
def test_O9_get_mpi_command_spacing(bare) -> None:
    rsh = RSH.format(port=22)
    assert (
        bare.get_mpi_command("r", ["--np 2", "--x"], {}, "/m") == f"/m/mpirun {rsh} --np 2 --x  r"
    )
    assert bare.get_mpi_command("r", [], {"A": 1, "B": "c d"}, "/m") == (
        f"/m/mpirun {rsh}  -x A=1 -x B=c d r"
    )
    with pytest.raises(AttributeError):
        bare.get_mpi_command("r", [], None, "/m")  # env_vars must be a dict


def test_O9_build_mpi_cmd_with_empty_env_leaves_two_spaces(bare) -> None:
    cmd = bare.build_mpi_cmd("./a.out", HOSTS[:1], 2, {}, "/m")
    assert cmd.endswith("--hostfile /tmp/mpi_hosts.txt  ./a.out")


# -- O10: no_of_global_ranks on both subclasses ----------------------------------------------------
def test_O10_distribute_using_mpi_accepts_no_of_global_ranks(bare, make_container) -> None:
    bare.head.exec.return_value = {HOSTS[0]: "done"}
    bare.distribute_using_mpi("r", HOSTS, 8, {}, "/m", None, 5)
    assert "--np 5 --allow-run-as-root" in bare.head.exec.call_args.args[0]
    orch = make_container()
    orch.container_id = "cvs_c"
    orch.distribute_using_mpi("r", HOSTS, 8, {}, "/m", mpi_extra_args=None, no_of_global_ranks=3)
    cmd = orch.runtime.exec_on_head.call_args.args[1]
    assert "--np 3 --allow-run-as-root" in cmd and RSH.format(port=2224) in cmd
    assert orch.runtime.exec_on_head.call_args.args[2] == 600


# -- O11: CVS's INFO lines -------------------------------------------------------------------------
def test_O11_info_lines(make_container) -> None:
    orch = make_container("persistent", runtime={"name": "docker"})
    assert "ContainerOrchestrator initialized with runtime: docker" in logged(orch.log.info)
    orch.runtime.is_running.return_value = running_everywhere()
    sha = {"container_sha": "sha256:a", "image_sha": "sha256:a"}
    orch.runtime.image_sha_status.return_value = {h: dict(sha) for h in HOSTS}
    assert orch.setup_containers() is True
    assert "Attaching to running container 'cvs_c'" in logged(orch.log.info)
    assert orch.verify_containers_running("cvs_c") is True
    assert "Verified container 'cvs_c' is running on all hosts" in logged(orch.log.info)

    orch.container_config["lifetime"] = "per_run"
    orch.runtime.teardown_containers.return_value = True
    orch.log.reset_mock()
    assert orch.teardown_containers() is True
    assert logged(orch.log.info) == ["Tearing down containers...", "Stopping containers: cvs_c"]
    orch.container_id = "cvs_c"
    orch.log.reset_mock()
    assert orch.cleanup(HOSTS[:2]) is True
    assert logged(orch.log.info) == ["Cleaning up on 2 hosts", "Stopping containers: cvs_c"]


def test_O11_baremetal_cleanup_line(bare) -> None:
    assert bare.cleanup(HOSTS) is True
    bare.log.info.assert_called_once_with("Cleaning up on 3 hosts")


def test_O1_to_O11_use_no_private_state_with_init_replaced(log) -> None:
    # Seams §3 for the rows above: an orchestrator whose __init__ was replaced works from
    # CVS's attributes alone.
    with mock.patch.object(container.ContainerOrchestrator, "__init__", return_value=None):
        orch = container.ContainerOrchestrator(log, None)
    orch.log, orch.hosts, orch.head_node, orch.ssh_port = log, list(HOSTS), HOSTS[0], 2224
    orch.container_config = {"image": "i", "name": "c1", "lifetime": "persistent"}
    orch.container_id, orch.runtime = "c1", mock.MagicMock(name="runtime")
    orch.runtime.teardown_containers.return_value = True
    assert orch.cleanup(HOSTS) is True
    orch.runtime.teardown_containers.assert_called_once_with("c1")
    orch.exec_on_head("x")
    orch.runtime.exec_on_head.assert_called_once_with(None, "x", None)
    assert baremetal.BaremetalOrchestrator.get_mpi_command(orch, "r", [], {}, "/m").endswith("  r")
