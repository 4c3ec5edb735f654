"""CVS's resolver functions: exact semantics, messages and mutate-and-return."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import cvs_core

BASH = shutil.which("bash") or "/bin/bash"
LIFETIME_ERR = "container.lifetime must be one of ('no_launch', 'per_run', 'persistent'), got "


def test_constants() -> None:
    assert cvs_core.VALID_CONTAINER_LIFETIMES == ("no_launch", "per_run", "persistent")
    assert cvs_core.MAX_INLINE_SETUP_SCRIPT_BYTES == 16384
    assert cvs_core.DEFAULT_CONTAINER_ARGS["devices"] == ["/dev/kfd", "/dev/dri", "/dev/infiniband"]
    assert cvs_core.DEFAULT_CONTAINER_ARGS["environment"] == {"GPUS": "8", "MULTINODE": "true"}
    assert cvs_core.DEFAULT_CONTAINER_ARGS["privileged"] is True


@pytest.mark.parametrize("falsy", [None, {}])
def test_falsy_block_is_returned_untouched(falsy) -> None:
    assert cvs_core.resolve_container_lifetime(falsy) is falsy
    assert cvs_core.resolve_container_setup_script(falsy) is falsy
    if falsy is not None:
        assert falsy == {}


def test_lifetime_default_is_set_in_place() -> None:
    block = {"image": "x"}
    out = cvs_core.resolve_container_lifetime(block)
    assert out is block
    assert block == {"image": "x", "lifetime": "per_run"}


@pytest.mark.parametrize("value", ["no_launch", "per_run", "persistent"])
def test_valid_lifetimes_are_kept(value: str) -> None:
    block = {"lifetime": value}
    assert cvs_core.resolve_container_lifetime(block) == {"lifetime": value}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("forever", "'forever'"),
        (None, "None"),
        (5, "5"),
        ("Per_Run", "'Per_Run'"),
        ("it's", '"it\'s"'),
    ],
)
def test_invalid_lifetime_message(value, shown: str) -> None:
    with pytest.raises(ValueError) as info:
        cvs_core.resolve_container_lifetime({"lifetime": value})
    assert str(info.value) == LIFETIME_ERR + shown
    assert isinstance(info.value, cvs_core.ConfigError)
    assert info.value.path == "container.lifetime"


def test_legacy_keys_are_hard_errors_even_with_lifetime() -> None:
    with pytest.raises(ValueError) as info:
        cvs_core.resolve_container_lifetime({"enabled": False, "lifetime": "per_run"})
    assert str(info.value) == (
        "container.enabled is removed; delete the field and set container.lifetime to one of "
        "'no_launch', 'per_run', 'persistent'"
    )
    block = {"launch": True, "lifetime": "persistent"}
    with pytest.raises(ValueError) as info:
        cvs_core.resolve_container_lifetime(block)
    assert str(info.value) == (
        "container.launch is removed; delete the field and set container.lifetime "
        "('launch: true' -> 'per_run', 'launch: false' -> 'no_launch')"
    )
    assert block == {"launch": True, "lifetime": "persistent"}


@pytest.mark.parametrize("falsy", [{}, {"setup_script": None}, {"setup_script": ""}])
def test_setup_script_falsy_becomes_packaged_default(falsy: dict) -> None:
    block = dict(falsy, image="x")
    out = cvs_core.resolve_container_setup_script(block)
    assert out is block
    assert block["setup_script"] == cvs_core.DEFAULT_CONTAINER_SETUP_SCRIPT


def test_setup_script_tilde_and_relative(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "s.sh").write_text("true\n")
    block = {"image": "x", "setup_script": "~/s.sh"}
    cvs_core.resolve_container_setup_script(block)
    assert block["setup_script"] == str(tmp_path / "s.sh")
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    block = {"image": "x", "setup_script": "../s.sh"}
    cvs_core.resolve_container_setup_script(block)
    assert block["setup_script"] == str(tmp_path / "s.sh")


def test_setup_script_missing_message(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:
        cvs_core.resolve_container_setup_script({"image": "x", "setup_script": "nope.sh"})
    assert str(info.value) == (
        "container.setup_script not found: 'nope.sh' "
        f"(resolved to '{os.path.join(tmp_path, 'nope.sh')}')"
    )
    # A directory is not a file.
    with pytest.raises(ValueError, match="not found"):
        cvs_core.resolve_container_setup_script({"setup_script": str(tmp_path)})


def test_missing_packaged_default_message(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.sh")
    with pytest.raises(ValueError) as info:
        cvs_core.resolve_container_setup_script({"image": "x"}, default_script=missing)
    assert str(info.value) == (
        f"packaged default container setup script is missing: '{missing}' "
        "(broken cvs-core install?)"
    )


def test_resolve_cluster_placeholders_returns_new_structure(monkeypatch) -> None:
    monkeypatch.setenv("USER", "ann")
    src = {"a": ["{user-id}", {"{user-id}": 1}], "_c": "{user-id}"}
    out = cvs_core.resolve_cluster_placeholders(src)
    assert out == {"a": ["ann", {"ann": 1}], "_c": "ann"}
    assert src == {"a": ["{user-id}", {"{user-id}": 1}], "_c": "{user-id}"}
    assert cvs_core.resolve_cluster_placeholders(src, strip_comments=True) == {
        "a": ["ann", {"ann": 1}]
    }
    with pytest.raises(cvs_core.UnresolvedPlaceholderError) as info:
        cvs_core.resolve_cluster_placeholders({"x": [{"y": "<CHANGEME>"}]})
    assert info.value.path == "x[0].y"


def test_container_names() -> None:
    assert cvs_core.sanitize_container_name("rocm/cvs:latest") == "rocm_cvs_latest"
    assert cvs_core.default_container_name("rocm/cvs:latest", "root") == "root_rocm_cvs_latest"
    cvs_core.validate_container_name("cvs_c-1.2")
    for bad in ["", "a", "-x", "a b", "a;rm", "x/y"]:
        with pytest.raises(cvs_core.ConfigError, match=r"Docker|a-zA-Z0-9"):
            cvs_core.validate_container_name(bad)


def test_default_setup_script_skips_when_sshd_present(tmp_path: Path) -> None:
    fake = tmp_path / "sshd"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    res = subprocess.run(
        ["bash", cvs_core.DEFAULT_CONTAINER_SETUP_SCRIPT],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "sshd already present, nothing to install" in res.stdout


def _without_system_sshd() -> list[str]:
    """A command prefix under which /usr/sbin/sshd does not exist (a private mount namespace
    with an empty /usr/sbin), so the install branch runs on machines that have OpenSSH."""
    if not os.path.exists("/usr/sbin/sshd"):
        return []
    unshare = shutil.which("unshare") or "unshare"
    mount = shutil.which("mount") or "/bin/mount"
    probe = subprocess.run(
        [unshare, "-m", "/bin/sh", "-c", f"{mount} -t tmpfs none /usr/sbin"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("cannot hide /usr/sbin/sshd (needs root and unshare)")
    script = f'{mount} -t tmpfs none /usr/sbin && exec "$@"'
    return [unshare, "-m", "/bin/sh", "-c", script, "sh"]


def test_default_setup_script_installs_with_apt(tmp_path: Path) -> None:
    log = tmp_path / "apt.log"
    apt = tmp_path / "apt-get"
    apt.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    apt.chmod(0o755)
    res = subprocess.run(
        [*_without_system_sshd(), BASH, cvs_core.DEFAULT_CONTAINER_SETUP_SCRIPT],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert log.read_text().splitlines() == [
        "update",
        "install -y --no-install-recommends openssh-server",
    ]


def test_default_setup_script_fails_clearly_without_apt(tmp_path: Path) -> None:
    res = subprocess.run(
        [*_without_system_sshd(), BASH, cvs_core.DEFAULT_CONTAINER_SETUP_SCRIPT],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 1
    assert "apt-get is not available" in res.stderr
