"""Command rendering through Python: exact CVS strings, quoting and round trips in a real shell."""

from __future__ import annotations

import base64
import random
import shlex
import subprocess

import pytest

import cvs_core


@pytest.fixture
def spec(user: str) -> cvs_core.ContainerSpec:
    return cvs_core.ContainerSpec.from_dict({"image": "rocm/cvs:latest", "name": "cvs_c"})


def test_docker_run_matches_cvs_rendering(spec: cvs_core.ContainerSpec, user: str) -> None:
    assert cvs_core.docker_run_command(spec, infiniband_expansion=True) == (
        f"sudo docker run -d --name cvs_c -v /home/{user}:/workspace "
        f"-v /home/{user}/.ssh:/host_ssh "
        "-e GPUS=8 -e MULTINODE=true --device /dev/kfd --device /dev/dri --device /dev/infiniband "
        "--cap-add SYS_PTRACE --cap-add IPC_LOCK --cap-add SYS_ADMIN --security-opt "
        "seccomp=unconfined --security-opt apparmor=unconfined --group-add video --network host "
        "--ipc host --ulimit memlock=-1 --privileged "
        '$(for dev in /dev/infiniband/*; do echo -n "--device $dev:$dev "; done) '
        "rocm/cvs:latest sleep infinity"
    )
    assert "--gpus" not in cvs_core.docker_run_command(spec)


def test_docker_run_argv_and_labels(user: str) -> None:
    spec = cvs_core.ContainerSpec.from_dict(
        {
            "image": "img:1",
            "name": "c1",
            "env": {"ODD": "a b'$(x)"},
            "runtime": {"defaults": False, "args": {"network": "host"}},
        }
    )
    argv = cvs_core.docker_run_argv(spec, prefix="", labels=[("cvs.lifetime", "per_run")])
    assert argv == [
        "docker", "run", "-d", "--name", "c1", "-e", "ODD=a b'$(x)", "--network", "host",
        "--label", "cvs.lifetime=per_run", "img:1", "sleep", "infinity",
    ]  # fmt: skip
    cmd = cvs_core.docker_run_command(spec, prefix="", labels=[("cvs.lifetime", "per_run")])
    assert shlex.split(cmd) == argv


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("sudo", "sudo docker exec c1 bash -c 'cd /opt && ls; echo $HOME'"),
        ("sudo -n ", "sudo -n docker exec c1 bash -c 'cd /opt && ls; echo $HOME'"),
        ("", "docker exec c1 bash -c 'cd /opt && ls; echo $HOME'"),
    ],
)
def test_docker_exec(prefix: str, expected: str) -> None:
    assert (
        cvs_core.docker_exec_command("c1", "cd /opt && ls; echo $HOME", prefix=prefix) == expected
    )


def test_probe_and_housekeeping_commands() -> None:
    assert cvs_core.is_running_command("c1") == (
        "sudo docker ps --filter 'name=^c1$' --filter status=running --format '{{.Names}}'"
    )
    assert cvs_core.image_sha_status_command("c1", "rocm/cvs:latest") == (
        "echo \"$(sudo docker inspect --format '{{.Image}}' c1 2>/dev/null)|"
        "$(sudo docker inspect --format '{{.Id}}' rocm/cvs:latest 2>/dev/null)\""
    )
    assert cvs_core.remove_command("c1") == "sudo docker rm -f c1 || true"
    assert cvs_core.remove_command("c1", quiet=True) == "sudo docker rm -f c1 2>/dev/null || true"
    assert cvs_core.image_exists_command("rocm/cvs:latest") == (
        "sudo docker images --format '{{.Repository}}:{{.Tag}}' | grep -q '^rocm/cvs:latest$'"
    )
    assert cvs_core.load_image_command("/data/img.tar") == "sudo docker load < /data/img.tar"
    assert cvs_core.sshd_precheck_command() == "pgrep -f '[s]shd.*2224' > /dev/null 2>&1"
    assert cvs_core.sshd_setup_commands(2230)[-1] == "/usr/sbin/sshd -p2230"
    assert len(cvs_core.sshd_setup_commands()) == 6


@pytest.mark.parametrize("bad", ["", "x", "-rm", "a;b", "a b", "$(id)"])
def test_names_are_validated_before_rendering(bad: str) -> None:
    with pytest.raises(cvs_core.CvsError):
        cvs_core.docker_exec_command(bad, "true")
    with pytest.raises(cvs_core.CvsError):
        cvs_core.remove_command(bad)


def _samples() -> list[str]:
    rng = random.Random(1234)
    alphabet = "ab '\"$`\\;|&(){}[]*?!^~#,=:@%+-./\n\t\u00e9\u4e2d\U0001f600"
    fixed = ["", "'", "''", "a'b", "$(rm -rf /)", "`id`", "x\ny", "ü", "!", "^", "a,b", "-n"]
    return fixed + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(300)
    ]


def test_quote_is_cpython_shlex_quote() -> None:
    for s in _samples():
        assert cvs_core.quote(s) == shlex.quote(s), repr(s)
    with pytest.raises(cvs_core.CvsError, match="NUL"):
        cvs_core.quote("a\0b")


def test_exec_command_survives_a_real_shell() -> None:
    # The payload a user passes reaches `bash -c` unchanged: run the rendered command with a
    # stand-in `docker` that prints its last argument.
    for s in _samples()[:80]:
        cmd = cvs_core.docker_exec_command("c1", s, prefix="")
        out = subprocess.run(
            ["sh", "-c", 'docker() { printf "%s" "$5"; }; ' + cmd],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out == s, repr(s)


def test_provision_command_inline() -> None:
    script = b"#!/bin/bash\necho hi\n"
    cmd = cvs_core.provision_command(script)
    assert cmd.startswith("set -o pipefail; echo ")
    assert cmd.endswith(" | base64 -d | bash")
    b64 = cmd.split("echo ", 1)[1].split(" |", 1)[0]
    assert base64.b64decode(b64) == script
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True)
    assert out.stdout == "hi\n"


def test_provision_size_guard() -> None:
    assert cvs_core.provision_command(b"#" * 16384)
    with pytest.raises(cvs_core.ScriptTooLargeError) as info:
        cvs_core.provision_command(b"#" * 16385, label="container.setup_script '/x.sh'")
    assert (info.value.size, info.value.limit) == (16385, 16384)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == (
        "container.setup_script '/x.sh' is too large for inline delivery (16385 bytes > 16384). "
        "Slim the script, or bake the packages into the image."
    )
    # A caller's limit moves the boundary both ways, still inclusive.
    assert cvs_core.provision_command(b"#" * 20000, limit=20000)
    with pytest.raises(cvs_core.ScriptTooLargeError) as info:
        cvs_core.provision_command(b"#" * 11, limit=10)
    assert (info.value.size, info.value.limit) == (11, 10)


def test_provision_stdin_runs_any_size_script_in_a_real_shell() -> None:
    cmd = cvs_core.provision_stdin_command("c1", prefix="")
    assert cmd.startswith("docker exec -i c1 bash -c ")
    # 200 KB of script (far over the inline cap) that also tries to read stdin: the runner
    # must have saved the whole script first and give the script /dev/null as stdin.
    body = "true # " + "x" * 100 + "\n"
    script = "read -r line && echo STOLE || echo NOSTDIN\n" + body * 2000 + "exit 7\n"
    res = subprocess.run(
        ["sh", "-c", 'docker() { shift 3; "$@"; }; ' + cmd],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.stdout == "NOSTDIN\n"
    assert res.returncode == 7
