"""CVS's seams of ``cvs.core.runtimes`` (shared/spec/cvs-test-seams.md §2 C8, §0 A3, §8.3
R1-R6, B19 for docker.py, B26), patched and inspected the way CVS's own tests do: a real
``BaremetalOrchestrator`` whose ``Pssh`` is a double and whose ``all.exec`` answers from a
``side_effect`` list, ``cvs.lib.parallel_ssh_lib.Pssh`` replaced, exact call lists asserted.
One test (or a few) per row, named by its ID. Nothing here touches the network.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar
from unittest import mock

import pytest

import cvs_core
from cvs_core.compat.orchestrators import baremetal, container
from cvs_core.compat.runtimes import docker, enroot
from cvs_core.compat.runtimes import factory as runtime_factory

from .conftest import HOSTS, make_config, ok
from .test_runtime_docker import EXPANSION, VERIFIED_RUN, default_args, launch_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from cvs_core.compat import parallel_ssh_lib

# The contract's verified rendering and CVS's launch arguments, shared with the runtime tests.
CVS_EXPANSION = EXPANSION
DEFAULT_ARGS: dict[str, Any] = default_args()


@pytest.fixture
def real_orch(log, pssh) -> baremetal.BaremetalOrchestrator:
    """CVS's tests build the runtime on a real orchestrator whose Pssh is a double."""
    return baremetal.BaremetalOrchestrator(log, make_config())


# -- C8 / R1: no call beyond CVS's list ----------------------------------------------------------
def test_C8_R1_every_call_is_cvs_s_and_side_effect_lists_line_up(log, real_orch) -> None:
    rt = docker.DockerRuntime(log, real_orch)
    running = {h: {"output": "X1\n", "exit_code": 0} for h in HOSTS}
    shas = {h: {"output": "sha256:a|sha256:a\n", "exit_code": 0} for h in HOSTS}
    real_orch.all.exec.side_effect = [
        ok(),  # docker images | grep (image_tar present)
        {},  # rm -f
        ok(),  # docker run
        running,  # is_running
        shas,  # image_sha_status
        {h: "hi\n" for h in HOSTS},  # exec
        ok(),  # teardown
    ]
    real_orch.head.exec.return_value = {HOSTS[0]: "head\n"}
    with mock.patch.object(
        baremetal.BaremetalOrchestrator, "sudo_prefix", autospec=True
    ) as sudo_prefix:
        assert rt.setup_containers(launch_config(image_tar="/t/i.tar"), "X1", **DEFAULT_ARGS)
        assert rt.is_running("X1")[HOSTS[0]]["running"] is True
        assert rt.image_sha_status("X1", "rocm/cvs:latest")[HOSTS[0]]["container_sha"]
        assert rt.exec("X1", "echo hi") == {h: "hi\n" for h in HOSTS}
        assert rt.exec_on_head("X1", "hostname", 7) == {HOSTS[0]: "head\n"}
        assert rt.teardown_containers("X1") is True
    sudo_prefix.assert_not_called()  # available, never called implicitly
    assert real_orch.all.exec.call_args_list == [
        mock.call(
            "sudo docker images --format '{{.Repository}}:{{.Tag}}' | grep -q '^rocm/cvs:latest$'",
            timeout=30,
            detailed=True,
        ),
        mock.call("sudo docker rm -f X1 || true", timeout=30, print_console=False),
        mock.call(VERIFIED_RUN, timeout=900, detailed=True),
        mock.call(
            "sudo docker ps --filter name=^X1$ --filter status=running --format '{{.Names}}'",
            timeout=30,
            detailed=True,
        ),
        mock.call(
            "echo \"$(sudo docker inspect --format '{{.Image}}' X1 2>/dev/null)|"
            "$(sudo docker inspect --format '{{.Id}}' rocm/cvs:latest 2>/dev/null)\"",
            timeout=30,
            detailed=True,
        ),
        mock.call("sudo docker exec X1 bash -c 'echo hi'", timeout=None, detailed=False),
        mock.call(
            "sudo docker rm -f X1 2>/dev/null || true",
            timeout=30,
            print_console=False,
            detailed=True,
        ),
    ]
    real_orch.head.exec.assert_called_once_with("sudo docker exec X1 bash -c hostname", timeout=7)


def test_C8_R1_sudo_prefix_stays_available_and_is_asked_on_request(
    log, real_orch, monkeypatch
) -> None:
    rt = docker.DockerRuntime(log, real_orch)
    real_orch.all.exec.side_effect = [{h: "0\n" for h in HOSTS}, ok(), ok()]
    assert real_orch.sudo_prefix() == "sudo -n "  # CVS main's method, called explicitly
    rt.exec("c1", "ls")  # the default does not use it
    assert real_orch.all.exec.call_args.args[0] == "sudo docker exec c1 bash -c ls"
    monkeypatch.setenv("CVS_CORE_DOCKER_SUDO", "probe")
    rt.exec("c1", "ls")
    assert real_orch.all.exec.call_args.args[0] == "sudo -n docker exec c1 bash -c ls"
    assert real_orch.all.exec.call_count == 3  # probed once, by the explicit call


@pytest.mark.parametrize("tar", [None, ""])
def test_R1_image_tar_is_tested_by_key(log, real_orch, tar) -> None:
    rt = docker.DockerRuntime(log, real_orch)
    real_orch.all.exec.side_effect = [ok(), {}, ok()]
    assert rt.setup_containers(launch_config(image_tar=tar), "c1") is True
    cmds = [c.args[0] for c in real_orch.all.exec.call_args_list]
    assert cmds[0].startswith("sudo docker images --format")
    assert [c.split()[:3] for c in cmds[1:]] == [
        ["sudo", "docker", "rm"],
        ["sudo", "docker", "run"],
    ]


def test_R1_without_image_tar_no_image_check(log, real_orch) -> None:
    rt = docker.DockerRuntime(log, real_orch)
    real_orch.all.exec.side_effect = [{}, ok()]
    assert rt.setup_containers(launch_config(), "c1") is True
    assert real_orch.all.exec.call_count == 2


# -- R2: success is all(exit_code == 0) ----------------------------------------------------------
def test_R2_an_empty_result_is_success(log, real_orch) -> None:
    rt = docker.DockerRuntime(log, real_orch)
    real_orch.all.exec.side_effect = [{}, {}, {}, {}]
    assert rt.check_image_exists("rocm/cvs:latest") is True
    assert rt.setup_containers(launch_config(), "c1") is True  # rm, run
    assert rt.teardown_containers("c1") is True
    real_orch.all.exec.side_effect = [{HOSTS[0]: {"output": "", "exit_code": 1}}]
    assert rt.check_image_exists("rocm/cvs:latest") is False


# -- B26: CONTAINER_START_TIMEOUT_S (compat matched already) -------------------------------------
def test_B26_start_timeout_is_read_per_call(log, real_orch, monkeypatch) -> None:
    monkeypatch.setattr(docker, "CONTAINER_START_TIMEOUT_S", 42)
    real_orch.all.exec.return_value = ok()
    assert docker.DockerRuntime(log, real_orch).setup_containers(launch_config(), "c1") is True
    assert real_orch.all.exec.call_args.kwargs == {"timeout": 42, "detailed": True}


# -- R3: docker run ends with CVS's literal expansion --------------------------------------------
def test_R3_run_ends_with_cvs_s_expansion(log, real_orch) -> None:
    rt = docker.DockerRuntime(log, real_orch)
    real_orch.all.exec.return_value = ok()
    assert rt.setup_containers(launch_config(), "X1", **DEFAULT_ARGS) is True
    run = real_orch.all.exec.call_args.args[0]
    assert run == VERIFIED_RUN
    assert run.endswith(f" {CVS_EXPANSION} rocm/cvs:latest sleep infinity")


def test_R3_orchestrator_passes_cvs_s_expansion_unless_guarded_is_asked(
    make_container, monkeypatch
) -> None:
    for setting, want in (
        (None, cvs_core.INFINIBAND_EXPANSION),
        ("guarded", cvs_core.INFINIBAND_EXPANSION_GUARDED),
        ("bogus", cvs_core.INFINIBAND_EXPANSION),
    ):
        if setting:
            monkeypatch.setenv(container.ENV_INFINIBAND_EXPANSION, setting)
        orch = make_container(setup_script=None)
        orch.container_config["setup_script"] = None
        orch.runtime.setup_containers.return_value = True
        assert orch.setup_containers() is True
        assert orch.runtime.setup_containers.call_args.kwargs["device_expansion"] == want
    assert cvs_core.INFINIBAND_EXPANSION == CVS_EXPANSION


def test_R3_values_the_host_shell_would_split_are_quoted_once(log, real_orch) -> None:
    # The documented fix that leaves R3 alone: ordinary values are CVS's text byte for byte.
    rt = docker.DockerRuntime(log, real_orch)
    real_orch.all.exec.return_value = ok()
    args = dict(DEFAULT_ARGS, volumes=["/data dir:/d"], environment={"P": "$HOME"})
    assert rt.setup_containers(launch_config(), "c1", **args) is True
    assert "-v '/data dir:/d' -e 'P=$HOME' " in real_orch.all.exec.call_args.args[0]


# -- R4: _build_runtime_args ---------------------------------------------------------------------
def test_R4_build_runtime_args_is_a_list_of_tokens_with_cvs_s_env_loop() -> None:
    build = docker.DockerRuntime._build_runtime_args
    assert build({"devices": ["/dev/kfd"], "network": "host", "privileged": True}) == [
        "--device",
        "/dev/kfd",
        "--network",
        "host",
        "--privileged",
    ]
    assert build({"env": {"AB": "1", "CD": "2"}}) == ["-e", "A=B", "-e", "C=D"]
    with pytest.raises(ValueError):
        build({"env": {"NCCL_DEBUG": "INFO"}})
    with pytest.raises(ValueError):
        build({"env": {"A": "1"}})


# -- A3 / R5: the subset handle ------------------------------------------------------------------
def test_A3_R5_subset_builds_parallel_ssh_lib_pssh_on_every_call(log, pssh, real_orch) -> None:
    rt = docker.DockerRuntime(log, real_orch)
    with mock.patch.object(parallel_ssh_lib, "Pssh") as cls:
        rt.exec("c1", "ls", hosts=list(HOSTS), timeout=5, detailed=True)  # every host
        rt.exec("c1", "ls", hosts=[HOSTS[2]])
        rt.exec("c1", "ls", hosts=[HOSTS[2]])
    creds = dict(
        user="cvsuser",
        password=None,
        pkey="/home/cvsuser/.ssh/id_rsa",
        host_key_check=False,
        stop_on_errors=False,
    )
    assert cls.call_args_list == [
        mock.call(real_orch.log, list(HOSTS), **creds),
        mock.call(real_orch.log, [HOSTS[2]], **creds),
        mock.call(real_orch.log, [HOSTS[2]], **creds),
    ]
    assert cls.return_value.exec.call_args_list == [
        mock.call("sudo docker exec c1 bash -c ls", timeout=5, detailed=True),
        mock.call("sudo docker exec c1 bash -c ls", timeout=None, detailed=False),
        mock.call("sudo docker exec c1 bash -c ls", timeout=None, detailed=False),
    ]
    cls.return_value.destroy_clients.assert_not_called()
    real_orch.all.exec.assert_not_called()
    assert pssh.call_count == 2  # baremetal.Pssh: head and all only


def test_A3_baremetal_pssh_patch_does_not_reach_the_runtime_subset(log, real_orch) -> None:
    with (
        mock.patch.object(parallel_ssh_lib, "Pssh") as runtime_cls,
        mock.patch.object(baremetal, "Pssh") as orch_cls,
    ):
        docker.DockerRuntime(log, real_orch).exec("c1", "ls", hosts=[HOSTS[1]])
    runtime_cls.assert_called_once()
    orch_cls.assert_not_called()


def test_R5_empty_hosts_run_on_every_host(log, real_orch) -> None:
    with mock.patch.object(parallel_ssh_lib, "Pssh") as cls:
        docker.DockerRuntime(log, real_orch).exec("c1", "ls", hosts=[], timeout=3)
    cls.assert_not_called()
    real_orch.all.exec.assert_called_once_with(
        "sudo docker exec c1 bash -c ls", timeout=3, detailed=False
    )


class EngineHandle:
    """Stands in for cvs-core's engine class (connections kept)."""

    built: ClassVar[list[EngineHandle]] = []

    def __init__(self, log: Any, hosts: Any, **kwargs: Any) -> None:
        self.hosts = list(hosts)
        self.destroyed = 0
        self.calls = 0
        EngineHandle.built.append(self)

    def exec(self, cmd: str, **kwargs: Any) -> dict:
        self.calls += 1
        return {h: "out\n" for h in self.hosts}

    def destroy_clients(self) -> None:
        self.destroyed += 1


def test_R5_B14_exception_engine_handles_are_kept_per_subset(log, monkeypatch) -> None:
    # The ⚠EXC of B14/R5: with cvs-core's engine class, unpatched, a subset reuses a handle
    # kept by the orchestrator (closed by cleanup) instead of a new connection per call.
    EngineHandle.built = []
    monkeypatch.setattr(baremetal, "_ENGINE_PSSH", EngineHandle)
    monkeypatch.setattr(baremetal, "Pssh", EngineHandle)
    monkeypatch.setattr(parallel_ssh_lib, "Pssh", EngineHandle)
    orch = baremetal.BaremetalOrchestrator(log, make_config())
    rt = docker.DockerRuntime(log, orch)
    for _ in range(4):
        assert rt.exec("c1", "ls", hosts=[HOSTS[1]]) == {HOSTS[1]: "out\n"}
    rt.exec("c1", "ls", hosts=list(reversed(HOSTS)))  # every host: the orchestrator's `all`
    assert len(EngineHandle.built) == 3  # head, all, one subset
    subset = EngineHandle.built[2]
    assert subset.calls == 4 and subset.destroyed == 0
    assert EngineHandle.built[1].calls == 1
    orch.cleanup(HOSTS)
    assert subset.destroyed == 1


# -- R6: enroot ----------------------------------------------------------------------------------
def test_R6_enroot_setup_takes_two_arguments(log, pssh) -> None:
    rt = enroot.EnrootRuntime(log, mock.MagicMock())
    assert rt.setup_containers({"image": "i"}, "c1") is False
    with pytest.raises(TypeError):
        rt.setup_containers({"image": "i"}, "c1", volumes=[])  # type: ignore[call-arg]
    block = {"image": "i", "name": "c1", "setup_script": None, "runtime": {"name": "enroot"}}
    orch = container.ContainerOrchestrator(log, make_config("container", container=block))
    assert isinstance(orch.runtime, runtime_factory.EnrootRuntime)
    with pytest.raises(TypeError):
        orch.setup_containers()  # CVS's launch passes the docker keywords


# -- B19: shlex in docker.py ---------------------------------------------------------------------
def test_B19_docker_exec_quotes_with_the_module_s_shlex(log, real_orch, monkeypatch) -> None:
    rt = docker.DockerRuntime(log, real_orch)
    rt.exec("c1", "echo 'a b'")
    assert real_orch.all.exec.call_args.args[0] == (
        "sudo docker exec c1 bash -c 'echo '\"'\"'a b'\"'\"''"
    )
    fake = mock.MagicMock(name="shlex")
    fake.quote.return_value = "<quoted>"
    monkeypatch.setattr(docker, "shlex", fake)
    rt.exec("c1", "echo 'a b'")
    fake.quote.assert_called_once_with("echo 'a b'")
    assert real_orch.all.exec.call_args.args[0] == "sudo docker exec c1 bash -c <quoted>"
