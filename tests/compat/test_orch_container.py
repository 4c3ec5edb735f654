"""compat ``orchestrators.container`` (contract §3.3, §7, §9): per-lifetime setup/teardown,
persistent attach/partial/probe-failed/skew/unreadable/stale, provisioning, setup_sshd,
verify_containers_running, the runtime.exec call convention and the module helpers."""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import cvs_core
from cvs_core.compat.orchestrators import container

from .conftest import HOSTS, logged, make_config, ok

SHA_A = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaa"
SHA_B = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbb"


def running(*codes: Any, name: str = "cvs_c") -> dict[str, dict[str, Any]]:
    """Per host (in HOSTS order): True = running, False = absent, int = probe exit code."""
    out = {}
    for host, code in zip(HOSTS, codes):
        if code is True:
            out[host] = {"running": True, "name": name, "exit_code": 0}
        elif code is False:
            out[host] = {"running": False, "name": "", "exit_code": 0}
        else:
            out[host] = {"running": False, "name": "", "exit_code": code}
    return out


def shas(*pairs: tuple[str, str]) -> dict[str, dict[str, str]]:
    return {h: {"container_sha": c, "image_sha": i} for h, (c, i) in zip(HOSTS, pairs)}


# -- construction ------------------------------------------------------------------------------
def test_init(log, pssh, runtime_factory, make_container) -> None:
    orch = make_container()
    assert pssh.call_count == 2
    runtime_factory.create.assert_called_once_with("docker", log, orch)
    assert orch.runtime is runtime_factory.create.return_value
    assert (orch.orchestrator_type, orch.ssh_port, orch.container_id) == ("container", 2224, None)
    assert orch.container_config["lifetime"] == "per_run"


def test_init_runtime_name_from_config(runtime_factory, make_container) -> None:
    make_container(runtime={"name": "enroot"})
    assert runtime_factory.create.call_args.args[0] == "enroot"


def test_init_requires_container_block(log, pssh, runtime_factory) -> None:
    with pytest.raises(ValueError) as info:
        container.ContainerOrchestrator(log, make_config("container"))
    assert str(info.value) == (
        "ContainerOrchestrator requires 'container' config in OrchestratorConfig"
    )


def test_module_constants() -> None:
    assert container.MAX_INLINE_SETUP_SCRIPT_BYTES == 16384
    assert container.DEFAULT_SSHD_PORT == 2224
    assert container.DEFAULT_CONTAINER_ARGS == {
        "devices": ["/dev/kfd", "/dev/dri", "/dev/infiniband"],
        "capabilities": ["SYS_PTRACE", "IPC_LOCK", "SYS_ADMIN"],
        "security_opts": ["seccomp=unconfined", "apparmor=unconfined"],
        "groups": ["video"],
        "ulimits": ["memlock=-1"],
        "environment": {"GPUS": "8", "MULTINODE": "true"},
        "network_mode": "host",
        "ipc_mode": "host",
        "privileged": True,
    }


# -- getters and names -------------------------------------------------------------------------
def test_getters_defaults_plus_config(make_container) -> None:
    orch = make_container(
        env={"GPUS": "4", "X": "1"},
        runtime={
            "args": {
                "volumes": ["/data:/data"],
                "devices": ["/dev/fuse"],
                "cap_add": ["NET_ADMIN"],
                "security_opt": ["label=disable"],
                "group_add": ["render"],
                "ulimit": ["stack=1"],
                "network": "bridge",
                "ipc": "private",
                "privileged": False,
            }
        },
    )
    with mock.patch.object(container.getpass, "getuser", return_value="alice"):
        assert orch.get_volumes() == [
            "/home/alice:/workspace",
            "/home/alice/.ssh:/host_ssh",
            "/data:/data",
        ]
    assert orch.get_devices() == ["/dev/kfd", "/dev/dri", "/dev/infiniband", "/dev/fuse"]
    assert orch.get_capabilities() == ["SYS_PTRACE", "IPC_LOCK", "SYS_ADMIN", "NET_ADMIN"]
    assert orch.get_security_opts()[-1] == "label=disable"
    assert orch.get_groups() == ["video", "render"]
    assert orch.get_ulimits() == ["memlock=-1", "stack=1"]
    assert orch.get_environment() == {"GPUS": "4", "MULTINODE": "true", "X": "1"}
    assert (orch.get_network_mode(), orch.get_ipc_mode(), orch.is_privileged()) == (
        "bridge",
        "private",
        False,
    )
    orch.get_devices().append("/dev/mutated")
    assert container.DEFAULT_CONTAINER_ARGS["devices"][-1] == "/dev/infiniband"


def test_getters_without_runtime_block(make_container) -> None:
    orch = make_container()
    assert (orch.get_network_mode(), orch.get_ipc_mode(), orch.is_privileged()) == (
        "host",
        "host",
        True,
    )


def test_container_names() -> None:
    assert container.ContainerOrchestrator.sanitize_container_name("rocm/cvs:latest") == (
        "rocm_cvs_latest"
    )
    assert container.ContainerOrchestrator.get_container_name({"name": "mine"}, "x:y") == "mine"
    with mock.patch("getpass.getuser", return_value="root"):
        assert container.ContainerOrchestrator.get_container_name({}, "rocm/cvs:latest") == (
            "root_rocm_cvs_latest"
        )


# -- setup_containers: per_run and dispatch ----------------------------------------------------
def test_setup_without_image(make_container) -> None:
    orch = make_container(image="")
    assert orch.setup_containers() is False
    orch.log.error.assert_called_once_with("Container image not specified in config")
    orch.runtime.setup_containers.assert_not_called()


def test_per_run_launches_with_cvs_arguments_and_expansion(make_container) -> None:
    orch = make_container(runtime={"args": {"volumes": ["/d:/d"]}}, setup_script=None)
    orch.container_config["setup_script"] = None  # provisioning is tested separately
    caller_runtime = orch.container_config["runtime"]
    orch.runtime.setup_containers.return_value = True
    with mock.patch.object(container.getpass, "getuser", return_value="bob"):
        assert orch.setup_containers() is True
    orch.runtime.is_running.assert_not_called()
    call = orch.runtime.setup_containers.call_args
    launch_config, name = call.args
    assert name == "cvs_c" and orch.container_id == "cvs_c"
    assert launch_config["runtime"]["args"] == {
        "volumes": ["/d:/d"],
        "network": "host",
        "ipc": "host",
        "privileged": True,
    }
    # CVS's shallow copy: the caller's runtime.args received network/ipc/privileged (O6).
    assert launch_config["runtime"] is caller_runtime
    assert call.kwargs == {
        "volumes": ["/home/bob:/workspace", "/home/bob/.ssh:/host_ssh", "/d:/d"],
        "devices": orch.get_devices(),
        "capabilities": orch.get_capabilities(),
        "security_opts": orch.get_security_opts(),
        "environment": {"GPUS": "8", "MULTINODE": "true"},
        "groups": ["video"],
        "ulimits": ["memlock=-1"],
        "device_expansion": (
            '$(for dev in /dev/infiniband/*; do echo -n "--device $dev:$dev "; done)'
        ),
    }


def test_per_run_explicit_arguments_win(make_container) -> None:
    orch = make_container()
    orch.container_config["setup_script"] = None
    orch.runtime.setup_containers.return_value = True
    orch.setup_containers(volumes=["/v:/v"], environment={"A": "1"}, devices=[])
    kwargs = orch.runtime.setup_containers.call_args.kwargs
    assert (kwargs["volumes"], kwargs["environment"], kwargs["devices"]) == (
        ["/v:/v"],
        {"A": "1"},
        [],
    )


def test_per_run_runtime_failure_skips_provisioning(make_container) -> None:
    orch = make_container()
    orch.runtime.setup_containers.return_value = False
    with mock.patch.object(orch, "_provision_container") as provision:
        assert orch.setup_containers() is False
    provision.assert_not_called()
    assert orch.container_id == "cvs_c"  # set before launching, as CVS (teardown cleans up)


@pytest.mark.parametrize(
    ("lifetime", "probe", "provisions"),
    [
        ("per_run", None, True),
        ("persistent", running(False, False, False), True),  # cold start
        ("persistent", running(True, True, True), False),  # attach
        ("no_launch", running(True, True, True), False),
    ],
)
def test_provisioning_only_after_fresh_launch(make_container, lifetime, probe, provisions):
    orch = make_container(lifetime)
    orch.runtime.is_running.return_value = probe
    orch.runtime.image_sha_status.return_value = shas(*[(SHA_A, SHA_A)] * 3)
    orch.runtime.setup_containers.return_value = True
    with mock.patch.object(orch, "_provision_container", return_value=True) as provision:
        assert orch.setup_containers() is True
    assert provision.called is provisions
    assert orch.runtime.setup_containers.called is provisions
    assert orch.container_id == "cvs_c"


# -- no_launch and verify_containers_running ---------------------------------------------------
def test_no_launch_verifies_only(make_container) -> None:
    orch = make_container("no_launch")
    orch.runtime.is_running.return_value = running(True, True, True)
    assert orch.setup_containers() is True
    orch.runtime.is_running.assert_called_once_with("cvs_c")
    orch.runtime.setup_containers.assert_not_called()


def test_verify_failure_message_has_both_wordings(make_container) -> None:
    orch = make_container("no_launch")
    status = running(True, False, 255)
    status[HOSTS[1]]["name"] = "other"
    orch.runtime.is_running.return_value = status
    assert orch.verify_containers_running("cvs_c") is False
    assert orch.container_id is None
    (msg,) = logged(orch.log.error)
    assert msg == (
        "Container 'cvs_c' not running on hosts: [\"10.0.0.2 (container not running, found: "
        "'other')\", '10.0.0.3 (exit code 255)']; not running on all hosts: not running on "
        "['10.0.0.2'], probe failed on ['10.0.0.3']"
    )


def test_O1c_verify_decides_over_the_probe_hosts(make_container) -> None:
    # Seams O1c (updated: compat used to count a host missing from the probe as failed).
    orch = make_container("no_launch")
    orch.runtime.is_running.return_value = dict(list(running(True, True, True).items())[:2])
    assert orch.verify_containers_running("cvs_c") is True
    (warning,) = logged(orch.log.warning)
    assert "no result for configured hosts ['10.0.0.3']" in warning
    orch.runtime.is_running.return_value = {
        **running(True, True, True),
        "10.9.9.9": {"running": False, "exit_code": 0, "name": ""},
    }
    assert orch.verify_containers_running("cvs_c") is False  # a probe host outside self.hosts
    assert "10.9.9.9" in logged(orch.log.error)[0]
    orch.container_id = None
    orch.runtime.is_running.return_value = {}
    assert orch.verify_containers_running("cvs_c") is True and orch.container_id == "cvs_c"


def test_verify_success_sets_container_id(make_container) -> None:
    orch = make_container("no_launch")
    orch.runtime.is_running.return_value = running(True, True, True)
    assert orch.verify_containers_running("cvs_c") is True
    assert orch.container_id == "cvs_c"


def test_partition_by_status(make_container) -> None:
    orch = make_container("persistent")
    status = running(True, False)  # third host missing entirely
    assert orch._partition_by_status(status) == ([HOSTS[0]], [HOSTS[1]], [HOSTS[2]])
    assert orch._partition_by_status(mock.MagicMock()) == ([], [], HOSTS)


# -- persistent --------------------------------------------------------------------------------
def test_persistent_attach_verifies_image(make_container) -> None:
    orch = make_container("persistent")
    orch.runtime.is_running.return_value = running(True, True, True)
    orch.runtime.image_sha_status.return_value = shas(*[(SHA_A, SHA_A)] * 3)
    assert orch.setup_containers() is True
    orch.runtime.image_sha_status.assert_called_once_with("cvs_c", "rocm/cvs:latest")
    orch.runtime.setup_containers.assert_not_called()
    orch.runtime.teardown_containers.assert_not_called()
    assert orch.container_id == "cvs_c"
    orch.log.warning.assert_not_called()


def test_persistent_cold_start(make_container) -> None:
    orch = make_container("persistent")
    orch.runtime.is_running.return_value = running(False, False, False)
    orch.runtime.setup_containers.return_value = True
    orch.exec = mock.MagicMock(return_value=ok())
    assert orch.setup_containers() is True
    assert "Persistent container not running on any host, launching..." in logged(orch.log.info)
    orch.runtime.setup_containers.assert_called_once()


def test_persistent_partial_refuses(make_container) -> None:
    orch = make_container("persistent")
    orch.runtime.is_running.return_value = running(True, False, True)
    assert orch.setup_containers() is False
    orch.runtime.setup_containers.assert_not_called()
    (msg,) = logged(orch.log.error)
    assert msg.startswith(
        "Persistent container 'cvs_c' is running on ['10.0.0.1', '10.0.0.3'] but missing on "
        "['10.0.0.2']. Refusing to auto-relaunch"
    )


def test_O1a_persistent_decides_over_the_probe_hosts(make_container) -> None:
    # Seams O1a: a configured host missing from the probe is ignored (named in a warning): the
    # others all run, so setup attaches; an empty probe is a cold launch, as in CVS.
    orch = make_container("persistent")
    orch.runtime.is_running.return_value = running(True, True)
    orch.runtime.image_sha_status.return_value = {
        h: {"container_sha": "sha256:a", "image_sha": "sha256:a"} for h in HOSTS[:2]
    }
    assert orch.setup_containers() is True and orch.container_id == "cvs_c"
    orch.runtime.setup_containers.assert_not_called()
    assert any("no result for configured hosts ['10.0.0.3']" in w for w in logged(orch.log.warning))
    cold = make_container("persistent", setup_script=None)
    cold.container_config.pop("setup_script", None)
    cold.runtime.is_running.return_value = {}
    cold.runtime.setup_containers.return_value = True
    assert cold.setup_containers() is True
    cold.runtime.setup_containers.assert_called_once()


def test_O1b_image_check_over_the_probe_hosts(make_container) -> None:
    orch = make_container("persistent")
    orch.runtime.is_running.return_value = running(True, True, True)
    orch.runtime.image_sha_status.return_value = {
        HOSTS[0]: {"container_sha": "sha256:a", "image_sha": "sha256:a"}
    }
    assert orch.setup_containers() is True
    orch.runtime.image_sha_status.return_value = {}
    assert orch.setup_containers() is True


@pytest.mark.parametrize(
    "probe",
    [
        running(255, 255, 255),  # every probe failed: CVS fa4ca32e cold-started (rm -f!)
        running(False, 1, False),  # absent + one failed probe
        mock.MagicMock(),  # nothing readable
    ],
)
def test_persistent_failed_probe_refuses_and_never_removes(make_container, probe) -> None:
    orch = make_container("persistent")
    orch.runtime.is_running.return_value = probe
    assert orch.setup_containers() is False
    orch.runtime.setup_containers.assert_not_called()
    orch.runtime.teardown_containers.assert_not_called()
    (msg,) = logged(orch.log.error)
    assert msg.startswith("Cannot determine state of persistent container 'cvs_c' on [")
    assert "Refusing to act on an untrustworthy probe" in msg


def test_persistent_unreadable_sha_refuses(make_container) -> None:
    orch = make_container("persistent")
    orch.runtime.is_running.return_value = running(True, True, True)
    orch.runtime.image_sha_status.return_value = shas((SHA_A, SHA_A), ("", SHA_A), (SHA_A, SHA_A))
    assert orch.setup_containers() is False
    orch.log.error.assert_called_once_with(
        "Could not read the running image SHA for container 'cvs_c' on ['10.0.0.2']; cannot "
        "verify image consistency across hosts"
    )


def test_persistent_skew_refuses_after_stale_warnings(make_container) -> None:
    orch = make_container("persistent")
    orch.runtime.is_running.return_value = running(True, True, True)
    orch.runtime.image_sha_status.return_value = shas(
        (SHA_A, SHA_A), (SHA_B, SHA_A), (SHA_A, SHA_A)
    )
    assert orch.setup_containers() is False
    (warning,) = logged(orch.log.warning)
    assert warning == (
        f"Persistent container 'cvs_c' on 10.0.0.2 runs image {SHA_B[:19]} but local "
        f"'rocm/cvs:latest' is {SHA_A[:19]}; overlay may be stale"
    )
    (error,) = logged(orch.log.error)
    assert error.startswith("Cross-host image SHA skew for container 'cvs_c': hosts are running")
    assert SHA_B[:19] in error and SHA_B not in error


def test_persistent_stale_overlay_warns_but_attaches(make_container) -> None:
    orch = make_container("persistent")
    orch.runtime.is_running.return_value = running(True, True, True)
    orch.runtime.image_sha_status.return_value = shas(*[(SHA_A, SHA_B)] * 3)
    assert orch.setup_containers() is True
    warnings = logged(orch.log.warning)
    assert len(warnings) == 3
    assert all(w.endswith("overlay may be stale") for w in warnings)
    orch.log.error.assert_not_called()


# -- provisioning ------------------------------------------------------------------------------
@pytest.fixture
def prov(make_container, tmp_path: Path):
    """A launched per_run orchestrator whose ``exec`` is a double, and a script writer."""

    def build(script: bytes | None):
        orch = make_container()
        path = tmp_path / "setup.sh"
        if script is None:
            orch.container_config["setup_script"] = None
        else:
            path.write_bytes(script)
            orch.container_config["setup_script"] = str(path)
        orch.container_id = "cvs_c"
        orch.exec = mock.MagicMock(return_value=ok())
        return orch, str(path)

    return build


def decoded(cmd: str) -> bytes:
    assert cmd.startswith("set -o pipefail; echo ")
    assert cmd.endswith(" | base64 -d | bash")
    return base64.b64decode(cmd[len("set -o pipefail; echo ") : -len(" | base64 -d | bash")])


def test_provision_without_script(prov) -> None:
    orch, _ = prov(None)
    assert orch._provision_container() is True
    orch.exec.assert_not_called()


def test_provision_payload_and_call(prov) -> None:
    script = b"#!/bin/bash\necho 'hi' \"$HOME\" | tr a-z A-Z\n"
    orch, _ = prov(script)
    assert orch._provision_container() is True
    call = orch.exec.call_args
    assert decoded(call.args[0]) == script
    assert call.kwargs == {"timeout": 600, "detailed": True}
    assert "Container provisioning succeeded on all hosts" in logged(orch.log.info)


def test_provision_size_guard_is_inclusive(prov) -> None:
    orch, _ = prov(b"#" * 16384)
    assert orch._provision_container() is True
    assert len(decoded(orch.exec.call_args.args[0])) == 16384
    orch, path = prov(b"#" * 16385)
    assert orch._provision_container() is False
    orch.exec.assert_not_called()
    orch.log.error.assert_called_once_with(
        f"container.setup_script '{path}' is too large for inline delivery (16385 bytes > "
        "16384). Slim the script, or bake the packages into the image."
    )


def test_provision_limit_is_looked_up_at_call_time(prov, monkeypatch) -> None:
    monkeypatch.setattr(container, "MAX_INLINE_SETUP_SCRIPT_BYTES", 8)
    orch, _ = prov(b"123456789")
    assert orch._provision_container() is False
    assert "(9 bytes > 8)" in logged(orch.log.error)[0]


def test_provision_unreadable_script(prov) -> None:
    orch, _ = prov(None)
    orch.container_config["setup_script"] = "/nonexistent/setup.sh"
    assert orch._provision_container() is False
    (msg,) = logged(orch.log.error)
    assert msg.startswith("Cannot read container setup_script '/nonexistent/setup.sh': ")
    assert "No such file" in msg


def test_provision_reads_through_builtin_open(prov) -> None:
    orch, _ = prov(None)
    orch.container_config["setup_script"] = "/virtual.sh"
    with mock.patch("builtins.open", mock.mock_open(read_data="echo patched\n")) as opened:
        assert orch._provision_container() is True
    opened.assert_called_once_with("/virtual.sh", "rb")
    assert decoded(orch.exec.call_args.args[0]) == b"echo patched\n"


def test_provision_logs_every_failing_host(prov) -> None:
    orch, path = prov(b"apt-get install -y openssh-server\n")
    orch.exec.return_value = {
        HOSTS[0]: {"output": "E: Unable to locate package\n", "exit_code": 100},
        HOSTS[1]: {"output": "fine", "exit_code": 0},
        HOSTS[2]: {"output": "  \n", "exit_code": 127},
    }
    assert orch._provision_container() is False
    assert logged(orch.log.error) == [
        f"Container provisioning failed on {HOSTS[0]} (setup_script: {path}, exit_code: 100): "
        "E: Unable to locate package",
        f"Container provisioning failed on {HOSTS[2]} (setup_script: {path}, exit_code: 127)",
    ]
    assert "Container provisioning succeeded on all hosts" not in logged(orch.log.info)


def test_launch_runs_provisioning_inside_containers(make_container, tmp_path) -> None:
    orch = make_container()
    script = tmp_path / "s.sh"
    script.write_bytes(b"true\n")
    orch.container_config["setup_script"] = str(script)
    orch.runtime.setup_containers.return_value = True
    orch.runtime.exec.return_value = ok()
    assert orch.setup_containers() is True
    args = orch.runtime.exec.call_args.args
    assert args[0] == "cvs_c" and decoded(args[1]) == b"true\n"
    assert args[2:] == (None, 600, True)


# -- setup_sshd --------------------------------------------------------------------------------
PRECHECK = "pgrep -f '[s]shd.*2224' > /dev/null 2>&1"
SIX = [
    "mkdir -p /root/.ssh",
    "bash -c 'cp -r /host_ssh/* /root/.ssh/'",
    "chown -R root:root /root/.ssh",
    "bash -c 'chmod 700 /root/.ssh && chmod 600 /root/.ssh/*'",
    "mkdir -p /run/sshd",
    "/usr/sbin/sshd -p2224",
]


@pytest.fixture
def sshd(make_container):
    orch = make_container()
    orch.container_id = "cvs_c"
    orch.exec = mock.MagicMock()
    return orch


def fail_on(*hosts: str) -> dict:
    return {h: {"output": "", "exit_code": 1 if h in hosts else 0} for h in HOSTS}


def test_sshd_requires_container(make_container) -> None:
    orch = make_container()
    with pytest.raises(RuntimeError, match=r"No containers running. Call setup_containers\(\)"):
        orch.setup_sshd()


def test_sshd_already_running_everywhere(sshd) -> None:
    sshd.exec.return_value = ok()
    with mock.patch("time.sleep") as sleep:
        assert sshd.setup_sshd() is True
    sshd.exec.assert_called_once_with(PRECHECK, timeout=10, detailed=True)
    sleep.assert_not_called()
    assert "SSH daemon already running on all hosts, skipping setup" in logged(sshd.log.info)


def test_sshd_sets_up_only_where_needed(sshd) -> None:
    sshd.exec.side_effect = [fail_on(HOSTS[1], HOSTS[2])] + [ok(*HOSTS[1:])] * 6 + [ok()]
    with mock.patch("time.sleep") as sleep:
        assert sshd.setup_sshd() is True
    calls = sshd.exec.call_args_list
    assert calls[0] == mock.call(PRECHECK, timeout=10, detailed=True)
    assert calls[1:7] == [mock.call(cmd, hosts=HOSTS[1:], timeout=10, detailed=True) for cmd in SIX]
    assert calls[7] == mock.call(PRECHECK, timeout=10, detailed=True)  # all hosts again
    sleep.assert_called_once_with(2)
    assert [m for m in logged(sshd.log.info) if m.startswith("SSH daemon started")] == [
        f"SSH daemon started successfully on {h}" for h in HOSTS
    ]


def test_sshd_precheck_pattern_does_not_match_its_own_shell() -> None:
    # pgrep -f matches full command lines, including the `bash -c '<precheck>'` running it:
    # "[s]shd" is a regex for "sshd" that the literal text "[s]shd" does not contain.
    assert "[s]shd" in PRECHECK
    assert cvs_core.sshd_precheck_command(2224) == PRECHECK
    if shutil.which("pgrep") is None:
        pytest.skip("pgrep not installed")

    def has_sshd() -> bool:  # a real `sshd -p 2224` somewhere on this machine (e2e containers)
        return subprocess.run(["pgrep", "-f", "sshd.*2224 "], capture_output=True).returncode == 0

    before = has_sshd()
    proc = subprocess.run(["bash", "-c", PRECHECK + "; echo rc=$?"], capture_output=True, text=True)
    if not before and not has_sshd():
        assert "rc=1" in proc.stdout  # the self-matching 'sshd.*2224' would have said 0


def test_O1d_sshd_host_missing_from_precheck_is_ignored(sshd) -> None:
    # Seams O1d (updated: compat used to start sshd on a host missing from the precheck).
    sshd.exec.side_effect = [dict(list(ok().items())[:2])]
    assert sshd.setup_sshd() is True and sshd.exec.call_count == 1
    assert "no result for configured hosts ['10.0.0.3']" in logged(sshd.log.warning)[0]
    sshd.exec.reset_mock()
    sshd.exec.side_effect = [{}]
    assert sshd.setup_sshd() is True and sshd.exec.call_count == 1  # {}: already running
    # each step and the validation check only the items of their own result
    sshd.exec.reset_mock()
    sshd.exec.side_effect = [fail_on(HOSTS[0])] + [{}] * 6 + [ok(HOSTS[1])]
    with mock.patch("time.sleep"):
        assert sshd.setup_sshd() is True
    assert sshd.exec.call_count == 8


def test_sshd_setup_command_failure_stops(sshd) -> None:
    sshd.exec.side_effect = [fail_on(*HOSTS), ok(), ok(), fail_on(HOSTS[1])]
    with mock.patch("time.sleep") as sleep:
        assert sshd.setup_sshd() is False
    assert sshd.exec.call_count == 4
    sleep.assert_not_called()
    sshd.log.error.assert_called_once_with(
        f"SSH setup command failed on {HOSTS[1]}: chown -R root:root /root/.ssh"
    )


def test_sshd_validation_failure(sshd) -> None:
    sshd.exec.side_effect = [fail_on(HOSTS[0])] + [ok(HOSTS[0])] * 6 + [fail_on(HOSTS[0])]
    with mock.patch("time.sleep"):
        assert sshd.setup_sshd() is False
    sshd.log.error.assert_called_once_with(f"SSH daemon validation failed on {HOSTS[0]}")


def test_sshd_uses_runtime_exec_with_hosts_positionally(make_container) -> None:
    orch = make_container()
    orch.container_id = "cvs_c"
    orch.runtime.exec.side_effect = [fail_on(HOSTS[0])] + [ok(HOSTS[0])] * 6 + [ok()]
    with mock.patch("time.sleep"):
        assert orch.setup_sshd() is True
    second = orch.runtime.exec.call_args_list[1]
    assert second == mock.call("cvs_c", SIX[0], [HOSTS[0]], 10, True)
    assert second[0][1] == "mkdir -p /root/.ssh"


# -- teardown and cleanup ----------------------------------------------------------------------
def test_teardown_per_run(make_container) -> None:
    orch = make_container()
    orch.container_id = "cvs_c"
    orch.runtime.teardown_containers.return_value = False
    assert orch.teardown_containers() is False
    orch.runtime.teardown_containers.assert_called_once_with("cvs_c")
    assert orch.container_id is None  # cleared whatever the outcome
    assert orch.teardown_containers() is True  # nothing left to remove
    assert orch.runtime.teardown_containers.call_count == 1


@pytest.mark.parametrize("lifetime", ["no_launch", "persistent"])
def test_teardown_keeps_user_and_persistent_containers(make_container, lifetime) -> None:
    orch = make_container(lifetime)
    orch.container_id = "cvs_c"
    assert orch.teardown_containers() is True
    orch.runtime.teardown_containers.assert_not_called()
    assert orch.container_id == "cvs_c"
    orch.log.debug.assert_called()


@pytest.mark.parametrize("lifetime", ["per_run", "no_launch", "persistent"])
def test_cleanup_removes_whatever_the_lifetime(make_container, lifetime) -> None:
    # CVS's cleanup ignores the lifetime (seams O5; teardown_containers is the one that
    # follows it).
    orch = make_container(lifetime)
    orch.container_id = "cvs_c"
    orch.runtime.teardown_containers.return_value = True
    assert orch.cleanup(HOSTS) is True
    orch.runtime.teardown_containers.assert_called_once_with("cvs_c")
    assert orch.container_id is None


def test_cleanup_keeps_id_when_removal_failed(make_container) -> None:
    orch = make_container()
    orch.container_id = "cvs_c"
    orch.runtime.teardown_containers.return_value = False
    assert orch.cleanup(HOSTS) is False
    assert orch.container_id == "cvs_c"


# -- exec family -------------------------------------------------------------------------------
def test_exec_positional_convention(make_container) -> None:
    orch = make_container()
    orch.container_id = "cvs_c"
    assert orch.exec("ls /opt") is orch.runtime.exec.return_value
    assert orch.runtime.exec.call_args == mock.call("cvs_c", "ls /opt", None, None, False)
    assert orch.runtime.exec.call_args[0][1] == "ls /opt"
    orch.exec("x", hosts=[HOSTS[1]], timeout=7, detailed=True, print_console=False)
    assert orch.runtime.exec.call_args == mock.call(
        "cvs_c", "x", [HOSTS[1]], 7, True, print_console=False
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda o: o.exec("ls"),
        lambda o: o.exec_cmd_list(["a", "b", "c"]),
    ],
)
def test_container_execs_require_a_container(make_container, call) -> None:
    orch = make_container()
    with pytest.raises(RuntimeError, match="No containers running"):
        call(orch)
    orch.runtime.exec.assert_not_called()
    orch.runtime.exec_on_head.assert_not_called()


def test_exec_on_head(make_container) -> None:
    orch = make_container()
    orch.container_id = "cvs_c"
    orch.exec_on_head("hostname")
    assert orch.runtime.exec_on_head.call_args == mock.call("cvs_c", "hostname", None)
    orch.exec_on_head("hostname", timeout=3, detailed=True, print_console=False)
    assert orch.runtime.exec_on_head.call_args == mock.call(
        "cvs_c", "hostname", 3, detailed=True, print_console=False
    )


def test_exec_cmd_list(make_container) -> None:
    orch = make_container()
    orch.container_id = "cvs_c"
    orch.exec_cmd_list(["a", "b", "c"], timeout=5)
    orch.runtime.exec_cmd_list.assert_called_once_with(
        "cvs_c", ["a", "b", "c"], timeout=5, print_console=True
    )


def test_exec_on_host_bypasses_container(make_container) -> None:
    orch = make_container()
    orch.container_id = "cvs_c"
    orch.exec_on_host("nvidia-smi || rocm-smi")
    orch.all.exec.assert_called_once_with("nvidia-smi || rocm-smi", timeout=None, detailed=False)
    orch.runtime.exec.assert_not_called()


def test_setup_env_runs_on_hosts_in_every_branch(make_container) -> None:
    orch = make_container()
    orch.container_id = "cvs_c"
    orch.head.exec.return_value = {HOSTS[0]: {"output": "", "exit_code": 0}}
    orch.all.exec.return_value = ok()
    assert orch.setup_env([HOSTS[0]], "env.sh") is True
    orch.head.exec.assert_called_once_with("bash env.sh", timeout=60, detailed=True)
    assert orch.setup_env(HOSTS, "env.sh") is True
    orch.all.exec.assert_called_once_with("bash env.sh", timeout=60, detailed=True)
    orch.runtime.exec.assert_not_called()
    orch.runtime.exec_on_head.assert_not_called()


def test_distribute_using_mpi_in_container(make_container) -> None:
    orch = make_container()
    orch.container_id = "cvs_c"
    orch.runtime.exec_on_head.side_effect = [{HOSTS[0]: "sudo: not found"}, "", {HOSTS[0]: "done"}]
    out = orch.distribute_using_mpi(
        "./a.out", HOSTS[:2], 8, {"NCCL_DEBUG": "INFO"}, "/opt/ompi/bin"
    )
    assert out == {HOSTS[0]: "done"}
    rm, write, run = orch.runtime.exec_on_head.call_args_list
    # CVS's in-container "sudo rm", results ignored (seams O8).
    assert rm == mock.call("cvs_c", "sudo rm -f /tmp/mpi_hosts.txt", None)
    assert write == mock.call(
        "cvs_c",
        "bash -c 'echo \"10.0.0.1 slots=8\n10.0.0.2 slots=8\n\" > /tmp/mpi_hosts.txt'",
        None,
    )
    assert run == mock.call(
        "cvs_c",
        '/opt/ompi/bin/mpirun --mca plm_rsh_agent ssh --mca plm_rsh_args "-p 2224 -o '
        'StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null" --np 16 --allow-run-as-root '
        "--hostfile /tmp/mpi_hosts.txt -x NCCL_DEBUG=INFO ./a.out",
        600,
    )


# -- module helpers ----------------------------------------------------------------------------
def test_listen_probe_shape_and_parser() -> None:
    cmd = container.sshd_port_listen_probe_cmd(2224)
    assert "ss -ltn" in cmd and "netstat -ltn" in cmd and "/dev/tcp/127.0.0.1/2224" in cmd
    assert container.sshd_port_listen_probe_cmd() == cmd
    assert container.sshd_port_listen_ok("OK\n") is True
    assert container.sshd_port_listen_ok({"output": "warning: x\nOK", "exit_code": 0}) is True
    assert container.sshd_port_listen_ok("NO\n") is False
    assert container.sshd_port_listen_ok("") is False
    assert container.sshd_port_listen_ok("OK then NO\nNO") is False


def test_listen_probe_against_a_real_socket() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        out = subprocess.run(
            ["bash", "-c", container.sshd_port_listen_probe_cmd(port)],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        assert container.sshd_port_listen_ok(out), out
    out = subprocess.run(
        ["bash", "-c", container.sshd_port_listen_probe_cmd(port)],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    assert not container.sshd_port_listen_ok(out), out


def test_C7_launch_containers_call_form(make_container) -> None:
    # Seams C7: per_run and the persistent cold start call _launch_containers with CVS's seven
    # launch arguments, positionally; the container name is derived inside.
    for lifetime, probe in (("per_run", None), ("persistent", {})):
        orch = make_container(lifetime)
        orch.runtime.is_running.return_value = probe
        with mock.patch.object(
            container.ContainerOrchestrator, "_launch_containers", return_value=True
        ) as launch:
            assert orch.setup_containers(volumes=["/v:/v"]) is True
        launch.assert_called_once_with(["/v:/v"], None, None, None, None, None, None)
