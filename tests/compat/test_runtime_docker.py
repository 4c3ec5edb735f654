"""compat ``runtimes.docker`` (contract §4.3, §7.2): exact docker command strings, call
conventions, the privilege prefix, setup/teardown flows and host subsets. The seam rows
themselves (R1-R6, A3, C8) are in ``test_runtime_seams.py``."""

from __future__ import annotations

import warnings
from typing import Any
from unittest import mock

import pytest

import cvs_core
from cvs_core.compat.orchestrators import baremetal, container
from cvs_core.compat.runtimes import docker

from .conftest import HOSTS, logged, make_config, ok

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from cvs_core.compat import parallel_ssh_lib

# CVS's expansion, which the container orchestrator passes and docker run ends with.
EXPANSION = '$(for dev in /dev/infiniband/*; do echo -n "--device $dev:$dev "; done)'
assert EXPANSION == cvs_core.INFINIBAND_EXPANSION
# Contract §4.3, "verified rendering for a default config", with --name X1 and user u.
VERIFIED_RUN = (
    "sudo docker run -d --name X1 -v /home/u:/workspace -v /home/u/.ssh:/host_ssh -e GPUS=8 "
    "-e MULTINODE=true --device /dev/kfd --device /dev/dri --device /dev/infiniband --cap-add "
    "SYS_PTRACE --cap-add IPC_LOCK --cap-add SYS_ADMIN --security-opt seccomp=unconfined "
    "--security-opt apparmor=unconfined --group-add video --network host --ipc host --ulimit "
    f"memlock=-1 --privileged {EXPANSION} rocm/cvs:latest sleep infinity"
)


@pytest.fixture
def orch() -> mock.MagicMock:
    """A CVS-test-style orchestrator double (``sudo_prefix()`` returns a Mock, not a str)."""
    o = mock.MagicMock(name="orch")
    o.all.exec.return_value = ok()
    return o


@pytest.fixture
def rt(log, orch) -> docker.DockerRuntime:
    return docker.DockerRuntime(log, orch)


@pytest.fixture
def probe(monkeypatch) -> None:
    """CVS main's privilege prefix: ``orchestrator.sudo_prefix()``."""
    monkeypatch.setenv(docker.ENV_DOCKER_SUDO, "probe")


def test_start_timeout_constant() -> None:
    assert docker.CONTAINER_START_TIMEOUT_S == 900


# -- privilege prefix --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "prefix", "want"),
    [
        (None, "sudo -n ", "sudo docker exec c1 bash -c 'echo hi; ls'"),  # fa4ca32e's literal
        ("sudo", "", "sudo docker exec c1 bash -c 'echo hi; ls'"),
        ("probe", None, "sudo docker exec c1 bash -c 'echo hi; ls'"),  # a Mock: the literal
        ("probe", "sudo -n ", "sudo -n docker exec c1 bash -c 'echo hi; ls'"),
        ("probe", "", "docker exec c1 bash -c 'echo hi; ls'"),
        ("none", "sudo -n ", "docker exec c1 bash -c 'echo hi; ls'"),
    ],
)
def test_exec_string_per_prefix(rt, orch, monkeypatch, mode, prefix, want) -> None:
    if mode is not None:
        monkeypatch.setenv(docker.ENV_DOCKER_SUDO, mode)
    if prefix is not None:
        orch.sudo_prefix.return_value = prefix
    rt.exec("c1", "echo hi; ls")
    orch.all.exec.assert_called_once_with(want, timeout=None, detailed=False)
    assert orch.sudo_prefix.called is (mode == "probe")


def test_unknown_prefix_mode_warns_and_uses_sudo(rt, orch, monkeypatch) -> None:
    monkeypatch.setenv(docker.ENV_DOCKER_SUDO, "maybe")
    rt.exec("c1", "ls")
    assert orch.all.exec.call_args.args[0] == "sudo docker exec c1 bash -c ls"
    assert "CVS_CORE_DOCKER_SUDO='maybe'" in logged(rt.log.warning)[0]


def test_prefix_probe_failure_falls_back(rt, orch, probe) -> None:
    orch.sudo_prefix.side_effect = OSError("ssh down")
    rt.exec("c1", "ls")
    assert orch.all.exec.call_args.args[0] == "sudo docker exec c1 bash -c ls"


def test_prefix_comes_from_a_real_orchestrator(log, pssh, probe) -> None:
    orch = baremetal.BaremetalOrchestrator(log, make_config())
    orch.all.exec.side_effect = [{h: "0\n" for h in HOSTS}, ok(), ok()]
    rt = docker.DockerRuntime(log, orch)
    rt.exec("c1", "ls")
    rt.exec("c1", "ls")
    calls = orch.all.exec.call_args_list
    assert calls[0] == mock.call(baremetal.SUDO_PROBE_CMD)  # probed once
    assert calls[1].args[0] == calls[2].args[0] == "sudo -n docker exec c1 bash -c ls"


# -- exec family -------------------------------------------------------------------------------
def test_exec_kwargs(rt, orch) -> None:
    rt.exec("c1", "hostname", None, 30, True)
    orch.all.exec.assert_called_once_with(
        "sudo docker exec c1 bash -c hostname", timeout=30, detailed=True
    )
    rt.exec("c1", "hostname", print_console=False)
    assert orch.all.exec.call_args.kwargs["print_console"] is False


def test_exec_shell_metacharacters_stay_in_container(rt, orch) -> None:
    rt.exec("c1", "cd /opt && tar xf a.tgz; echo \"$HOME\" 'x'")
    assert orch.all.exec.call_args.args[0] == (
        "sudo docker exec c1 bash -c 'cd /opt && tar xf a.tgz; echo \"$HOME\" '\"'\"'x'\"'\"''"
    )


def test_exec_subset_with_a_foreign_orchestrator(rt, orch, log) -> None:
    orch.user, orch.password, orch.pkey, orch.stop_on_errors = "u", None, "k", False
    with mock.patch.object(parallel_ssh_lib, "Pssh") as cls:
        out = rt.exec("c1", "ls", hosts=[HOSTS[1]], timeout=5)
    cls.assert_called_once_with(
        orch.log,
        [HOSTS[1]],
        user="u",
        password=None,
        pkey="k",
        host_key_check=False,
        stop_on_errors=False,
    )
    handle = cls.return_value
    assert out is handle.exec.return_value
    handle.exec.assert_called_once_with("sudo docker exec c1 bash -c ls", timeout=5, detailed=False)
    handle.destroy_clients.assert_not_called()  # CVS fa4ca32e never closed it
    orch.all.exec.assert_not_called()


def test_exec_empty_subset_runs_on_every_host(rt, orch) -> None:
    rt.exec("c1", "ls", hosts=[])
    orch.all.exec.assert_called_once_with(
        "sudo docker exec c1 bash -c ls", timeout=None, detailed=False
    )


def test_exec_on_head(rt, orch) -> None:
    rt.exec_on_head("c1", "hostname")
    orch.head.exec.assert_called_once_with("sudo docker exec c1 bash -c hostname", timeout=None)
    rt.exec_on_head("c1", "hostname", 9, detailed=True, print_console=False)
    assert orch.head.exec.call_args == mock.call(
        "sudo docker exec c1 bash -c hostname", timeout=9, detailed=True, print_console=False
    )
    orch.all.exec.assert_not_called()


def test_exec_cmd_list(rt, orch) -> None:
    rt.exec_cmd_list("c1", ["a && b", "c"], timeout=3)
    orch.all.exec_cmd_list.assert_called_once_with(
        ["sudo docker exec c1 bash -c 'a && b'", "sudo docker exec c1 bash -c c"],
        timeout=3,
        print_console=True,
    )


def test_invalid_container_name_is_refused(rt, orch) -> None:
    with pytest.raises(Exception, match="invalid container name"):
        rt.exec("x; rm -rf /", "ls")
    orch.all.exec.assert_not_called()


# -- probes ------------------------------------------------------------------------------------
def test_is_running(rt, orch) -> None:
    orch.all.exec.return_value = {
        HOSTS[0]: {"output": "c1\n", "exit_code": 0},
        HOSTS[1]: {"output": "", "exit_code": 0},
        HOSTS[2]: {"output": "sudo: unable to resolve host\nc1\n", "exit_code": 0},
    }
    status = rt.is_running("c1")
    orch.all.exec.assert_called_once_with(
        "sudo docker ps --filter name=^c1$ --filter status=running --format '{{.Names}}'",
        timeout=30,
        detailed=True,
    )
    assert status == {
        HOSTS[0]: {"exit_code": 0, "running": True, "name": "c1"},
        HOSTS[1]: {"exit_code": 0, "running": False, "name": ""},
        HOSTS[2]: {
            "exit_code": 0,
            "running": False,
            "name": "sudo: unable to resolve host\nc1",
        },
    }


def test_is_running_keeps_probe_failures(rt, orch) -> None:
    orch.all.exec.return_value = {HOSTS[0]: {"output": "Connection refused", "exit_code": 255}}
    assert rt.is_running("c1")[HOSTS[0]] == {
        "exit_code": 255,
        "running": False,
        "name": "Connection refused",
    }


def test_image_sha_status(rt, orch) -> None:
    orch.all.exec.return_value = {
        HOSTS[0]: {"output": "sha256:aa|sha256:bb\n", "exit_code": 0},
        HOSTS[1]: {"output": "|\n", "exit_code": 0},
    }
    assert rt.image_sha_status("c1", "rocm/cvs:latest") == {
        HOSTS[0]: {"container_sha": "sha256:aa", "image_sha": "sha256:bb"},
        HOSTS[1]: {"container_sha": "", "image_sha": ""},
    }
    orch.all.exec.assert_called_once_with(
        "echo \"$(sudo docker inspect --format '{{.Image}}' c1 2>/dev/null)|"
        "$(sudo docker inspect --format '{{.Id}}' rocm/cvs:latest 2>/dev/null)\"",
        timeout=30,
        detailed=True,
    )


@pytest.mark.parametrize(
    ("answer", "exists"),
    [(ok(), True), ({HOSTS[0]: {"output": "", "exit_code": 1}}, False), ({}, True)],
)
def test_check_image_exists(rt, orch, answer, exists) -> None:
    orch.all.exec.return_value = answer
    assert rt.check_image_exists("rocm/cvs:latest") is exists
    orch.all.exec.assert_called_once_with(
        "sudo docker images --format '{{.Repository}}:{{.Tag}}' | grep -q '^rocm/cvs:latest$'",
        timeout=30,
        detailed=True,
    )


def test_load_image(rt, orch) -> None:
    rt.load_image("/tmp/img.tar")
    orch.all.exec.assert_called_once_with(
        "sudo docker load < /tmp/img.tar", timeout=600, detailed=True
    )
    rt.load_image("/tmp/my img.tar", timeout=5)
    assert orch.all.exec.call_args == mock.call(
        "sudo docker load < '/tmp/my img.tar'", timeout=5, detailed=True
    )


def test_pull_image(rt, orch, probe) -> None:
    orch.sudo_prefix.return_value = "sudo -n "
    rt.pull_image("rocm/cvs:latest")
    orch.all.exec.assert_called_once_with(
        "sudo -n docker pull rocm/cvs:latest", timeout=600, detailed=True
    )


# -- registry login ----------------------------------------------------------------------------
def test_registry_login_requires_fields(rt, orch) -> None:
    assert rt.registry_login({"username": "u"}) is False
    rt.log.error.assert_called_once_with("registry_login requires 'username' and 'password_file'")
    orch.all.exec.assert_not_called()


def test_registry_login_command_and_failure(rt, orch, probe) -> None:
    orch.sudo_prefix.return_value = "sudo -n "
    orch.all.exec.return_value = {HOSTS[0]: {"output": "denied", "exit_code": 1}}
    cfg = {"server": "reg.io", "username": "bot", "password_file": "/run/secrets/pw"}
    assert rt.registry_login(cfg) is False
    orch.all.exec.assert_called_once_with(
        "sudo -n sh -c 'cat /run/secrets/pw | docker login reg.io --username bot --password-stdin'",
        timeout=30,
        detailed=True,
        print_console=False,
    )
    rt.log.error.assert_called_once_with(f"docker login failed on hosts: ['{HOSTS[0]}']")


# -- setup_containers --------------------------------------------------------------------------
def default_args() -> dict[str, Any]:
    return dict(
        volumes=["/home/u:/workspace", "/home/u/.ssh:/host_ssh"],
        devices=["/dev/kfd", "/dev/dri", "/dev/infiniband"],
        capabilities=["SYS_PTRACE", "IPC_LOCK", "SYS_ADMIN"],
        security_opts=["seccomp=unconfined", "apparmor=unconfined"],
        environment={"GPUS": "8", "MULTINODE": "true"},
        groups=["video"],
        ulimits=["memlock=-1"],
        device_expansion=EXPANSION,
    )


def launch_config(**extra: Any) -> dict[str, Any]:
    cfg = {
        "image": "rocm/cvs:latest",
        "runtime": {"args": {"network": "host", "ipc": "host", "privileged": True}},
    }
    cfg.update(extra)
    return cfg


def test_setup_renders_cvs_verified_command(rt, orch) -> None:
    cfg = launch_config()
    before = repr(cfg)
    assert rt.setup_containers(cfg, "X1", **default_args()) is True
    rm, run = orch.all.exec.call_args_list
    assert rm == mock.call("sudo docker rm -f X1 || true", timeout=30, print_console=False)
    assert run == mock.call(VERIFIED_RUN, timeout=900, detailed=True)
    assert "Containers started successfully: X1" in logged(rt.log.info)
    assert repr(cfg) == before


def test_setup_through_the_orchestrator_is_cvs_verified(log, pssh, monkeypatch) -> None:
    monkeypatch.setattr(container.getpass, "getuser", lambda: "u")
    block = {"image": "rocm/cvs:latest", "name": "X1", "setup_script": None}
    orch = container.ContainerOrchestrator(log, make_config("container", container=block))
    orch.container_config["setup_script"] = None
    orch.all.exec.return_value = ok()
    assert orch.setup_containers() is True
    assert orch.all.exec.call_args_list[-1] == mock.call(VERIFIED_RUN, timeout=900, detailed=True)


def test_setup_quotes_values_the_host_shell_would_split(rt, orch) -> None:
    args = default_args()
    args["volumes"] = ["/data dir:/data"]
    args["environment"] = {"MSG": "a b", "P": "$HOME"}
    assert rt.setup_containers(launch_config(), "c1", **args) is True
    run = orch.all.exec.call_args.args[0]
    assert "-v '/data dir:/data' -e 'MSG=a b' -e 'P=$HOME' " in run


def test_setup_network_quirk_and_defaults_from_config(rt, orch) -> None:
    cfg = {"image": "img:1", "volumes": ["/a:/a"], "env": {"K": "v"}, "runtime": {"args": {}}}
    assert rt.setup_containers(cfg, "c1") is True
    assert orch.all.exec.call_args.args[0] == (
        "sudo docker run -d --name c1 --network host -v /a:/a -e K=v img:1 sleep infinity"
    )


@pytest.mark.parametrize("cfg", [None, {}, {"image": ""}])
def test_setup_without_image(rt, orch, cfg) -> None:
    assert rt.setup_containers(cfg, "c1") is False
    rt.log.warning.assert_called_once_with(
        "No container config or image specified, skipping container start"
    )
    orch.all.exec.assert_not_called()


def test_setup_run_failure_tears_down(rt, orch) -> None:
    orch.all.exec.side_effect = [
        {},  # rm -f
        {HOSTS[0]: {"output": "", "exit_code": 0}, HOSTS[1]: {"output": "pull", "exit_code": 125}},
        ok(),  # teardown
    ]
    assert rt.setup_containers(launch_config(), "c1", **default_args()) is False
    rt.log.error.assert_called_once_with(f"Container startup failed on hosts: ['{HOSTS[1]}']")
    assert orch.all.exec.call_args == mock.call(
        "sudo docker rm -f c1 2>/dev/null || true", timeout=30, print_console=False, detailed=True
    )


def test_setup_image_tar_present_skips_load(rt, orch) -> None:
    assert rt.setup_containers(launch_config(image_tar="/t/i.tar"), "c1") is True
    cmds = [c.args[0] for c in orch.all.exec.call_args_list]
    assert cmds[0].startswith("sudo docker images")
    assert not any("docker load" in c for c in cmds)


def test_setup_image_tar_missing_loads_with_300s(rt, orch) -> None:
    orch.all.exec.side_effect = [
        {HOSTS[0]: {"output": "", "exit_code": 1}},  # images | grep
        ok(),  # load
        {},  # rm
        ok(),  # run
    ]
    assert rt.setup_containers(launch_config(image_tar="/t/i.tar"), "c1") is True
    assert orch.all.exec.call_args_list[1] == mock.call(
        "sudo docker load < /t/i.tar", timeout=300, detailed=True
    )


def test_setup_image_tar_load_failure(rt, orch) -> None:
    orch.all.exec.side_effect = [
        {HOSTS[0]: {"output": "", "exit_code": 1}},
        {HOSTS[0]: {"output": "no space", "exit_code": 1}},
    ]
    assert rt.setup_containers(launch_config(image_tar="/t/i.tar"), "c1") is False
    rt.log.error.assert_called_once_with(f"Failed to load image tar on hosts: ['{HOSTS[0]}']")
    assert orch.all.exec.call_count == 2  # never removed or started anything


def test_setup_registry_logs_in_and_pulls_missing_image(rt, orch, probe) -> None:
    orch.sudo_prefix.return_value = "sudo -n "
    registry = {"server": "reg.io", "username": "bot", "password_file": "/pw"}
    cfg = launch_config()
    cfg["runtime"]["args"]["registry"] = registry
    orch.all.exec.side_effect = [ok(), {HOSTS[0]: {"output": "", "exit_code": 1}}, ok(), {}, ok()]
    assert rt.setup_containers(cfg, "c1") is True
    cmds = [c.args[0] for c in orch.all.exec.call_args_list]
    assert cmds[0].startswith("sudo -n sh -c 'cat /pw | docker login reg.io")
    assert cmds[1].startswith("sudo -n docker images")
    assert cmds[2] == "sudo -n docker pull rocm/cvs:latest"
    assert cmds[4].startswith("sudo -n docker run -d --name c1 ")
    assert "registry" not in cmds[4]


def test_setup_registry_pull_failure(rt, orch) -> None:
    cfg = launch_config()
    cfg["runtime"]["args"]["registry"] = {"username": "bot", "password_file": "/pw"}
    bad = {HOSTS[0]: {"output": "", "exit_code": 1}}
    orch.all.exec.side_effect = [ok(), bad, bad]
    assert rt.setup_containers(cfg, "c1") is False
    rt.log.error.assert_called_once_with(f"Failed to pull image on hosts: ['{HOSTS[0]}']")


def test_setup_refuses_bad_names_and_images(rt, orch) -> None:
    assert rt.setup_containers(launch_config(), "a;b") is False
    assert rt.setup_containers(launch_config(image="--privileged"), "c1") is False
    orch.all.exec.assert_not_called()
    assert len(logged(rt.log.error)) == 2


# -- teardown ----------------------------------------------------------------------------------
def test_teardown(rt, orch) -> None:
    assert rt.teardown_containers("c1") is True
    orch.all.exec.assert_called_once_with(
        "sudo docker rm -f c1 2>/dev/null || true", timeout=30, print_console=False, detailed=True
    )


def test_teardown_failure_warns(rt, orch) -> None:
    orch.all.exec.return_value = {HOSTS[0]: {"output": "", "exit_code": -1}}
    assert rt.teardown_containers("c1") is False
    rt.log.warning.assert_called_once_with("Container stop had issues on some hosts")


def test_teardown_without_name(rt, orch) -> None:
    assert rt.teardown_containers(None) is True
    rt.log.info.assert_called_once_with("No container to stop")
    orch.all.exec.assert_not_called()


# -- _build_runtime_args ---------------------------------------------------------------------
def test_build_runtime_args_order() -> None:
    out = docker.DockerRuntime._build_runtime_args(
        {
            "privileged": True,
            "ulimit": ["memlock=-1"],
            "ipc": "host",
            "network": "host",
            "group_add": ["video"],
            "security_opt": ["seccomp=unconfined"],
            "cap_add": ["SYS_PTRACE"],
            "env": {"AB": "ignored"},  # CVS's loop: the key's two characters
            "devices": ["/dev/kfd"],
            "volumes": ["/a:/b"],
            "unknown": ["ignored"],
        }
    )
    assert " ".join(out) == (
        "-v /a:/b --device /dev/kfd -e A=B --cap-add SYS_PTRACE --security-opt seccomp=unconfined "
        "--group-add video --network host --ipc host --ulimit memlock=-1 --privileged"
    )


def test_build_runtime_args_falsy_values() -> None:
    assert docker.DockerRuntime._build_runtime_args({}) == []
    assert docker.DockerRuntime._build_runtime_args(None) == []
    assert (
        docker.DockerRuntime._build_runtime_args({"network": "", "ipc": None, "privileged": False})
        == []
    )


def test_run_renders_runtime_args_env_as_written(rt, orch) -> None:
    # docker run itself does not go through _build_runtime_args' env loop.
    cfg = launch_config()
    cfg["runtime"]["args"]["env"] = {"NCCL_DEBUG": "INFO"}
    assert rt.setup_containers(cfg, "c1") is True
    assert " -e NCCL_DEBUG=INFO " in orch.all.exec.call_args.args[0]
