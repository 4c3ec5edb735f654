"""load_config, ClusterConfig and ContainerSpec through the Python API."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import cvs_core
from conftest import REPO, deep, write_key


def test_load_config_resolves_and_types(cluster: dict, user: str, tmp_path: Path) -> None:
    cfg = cvs_core.load_config(cluster)
    assert isinstance(cfg, cvs_core.ClusterConfig)
    assert cfg.orchestrator == "container"
    assert cfg.hosts == ["10.0.0.1", "10.0.0.2"]
    assert cfg.head_node == "10.0.0.1"
    assert cfg.username == user
    assert cfg.priv_key_file == f"{tmp_path}/{user}/.ssh/id_rsa"
    assert cfg.password is None
    assert cfg.head_node_dict == {}
    spec = cfg.container
    assert isinstance(spec, cvs_core.ContainerSpec)
    assert spec.lifetime == "persistent"
    assert spec.image == "rocm/cvs:latest"
    assert spec.name == f"{user}_rocm_cvs_latest"
    assert spec.runtime == "docker"
    assert spec.setup_script == cvs_core.DEFAULT_CONTAINER_SETUP_SCRIPT
    assert spec.volumes == [f"/home/{user}:/workspace", f"/home/{user}/.ssh:/host_ssh"]
    assert spec.devices == ["/dev/kfd", "/dev/dri", "/dev/infiniband"]
    assert spec.capabilities == ["SYS_PTRACE", "IPC_LOCK", "SYS_ADMIN"]
    assert spec.environment == {"GPUS": "8", "MULTINODE": "true"}
    assert (spec.network, spec.ipc, spec.privileged) == ("host", "host", True)


def test_config_is_immutable(cluster: dict) -> None:
    cfg = cvs_core.load_config(cluster)
    with pytest.raises(AttributeError):
        cfg.hosts = ["x"]  # type: ignore[misc]
    cfg.hosts.append("mutated copy")
    assert cfg.hosts == ["10.0.0.1", "10.0.0.2"]
    cfg.to_dict()["username"] = "changed"
    assert cfg.username != "changed"


def test_caller_dicts_are_never_mutated(cluster: dict) -> None:
    testsuite = {"_c": "x", "container": {"image": "img:1", "runtime": {"args": {"volumes": []}}}}
    before_cluster, before_ts = deep(cluster), deep(testsuite)
    cvs_core.load_config(cluster, testsuite)
    assert cluster == before_cluster
    assert testsuite == before_ts


def test_to_dict_is_the_resolved_file_shape(cluster: dict, user: str) -> None:
    d = cvs_core.load_config(cluster).to_dict()
    assert "_comment" not in d
    assert d["username"] == user
    assert d["container"] == {
        "image": "rocm/cvs:latest",
        "lifetime": "persistent",
        "setup_script": cvs_core.DEFAULT_CONTAINER_SETUP_SCRIPT,
    }
    assert list(d["node_dict"]) == ["10.0.0.1", "10.0.0.2"]


def test_json_file_paths_and_pathlike(cluster: dict, write_json) -> None:
    cpath = write_json("cluster.json", cluster)
    tpath = write_json("suite.json", {"container": {"image": "other:2", "name": "pinned"}})
    cfg = cvs_core.load_config(cpath, Path(tpath))
    assert cfg.container.image == "other:2"
    assert cfg.container.name == "pinned"
    # Shallow merge: the testsuite block replaced the cluster block, lifetime included.
    assert cfg.container.lifetime == "per_run"


def test_missing_file_and_bad_json_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(cvs_core.ConfigError, match="cannot read configuration file"):
        cvs_core.load_config(str(tmp_path / "absent.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{ nope")
    with pytest.raises(cvs_core.ConfigError, match=r"bad\.json: invalid JSON at line 1"):
        cvs_core.load_config(str(bad))
    with pytest.raises(cvs_core.ConfigError, match="must be a dict or a JSON file path"):
        cvs_core.load_config(42)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"USER": "u1", "LOGNAME": "u2", "USERNAME": "u3"}, "u1"),
        ({"USER": "", "LOGNAME": "u2", "USERNAME": "u3"}, "u2"),
        ({"USERNAME": "u3"}, "u3"),
        ({}, "root"),
    ],
)
def test_user_id_placeholder_order(
    monkeypatch, cluster: dict, env: dict, expected: str, tmp_path: Path
) -> None:
    for var in ("USER", "LOGNAME", "USERNAME"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    write_key(tmp_path / expected / ".ssh" / "id_rsa")  # the fixture's key path names the user
    assert cvs_core.placeholder_user() == expected
    assert cvs_core.load_config(cluster).username == expected


def test_placeholders_in_keys_and_nested_values(cluster: dict, user: str) -> None:
    cluster["node_dict"] = {"{user}-node": {}, "n-{user-id}": {"x": ["{user-id}"]}}
    cfg = cvs_core.load_config(cluster)
    assert cfg.hosts == ["{user}-node", f"n-{user}"]
    assert cfg.to_dict()["node_dict"][f"n-{user}"] == {"x": [user]}


def test_changeme_names_the_path(cluster: dict) -> None:
    cluster["container"]["runtime"] = {"args": {"volumes": ["/a:/b", "/x/<ChangeMe>:/y"]}}
    with pytest.raises(cvs_core.UnresolvedPlaceholderError) as info:
        cvs_core.load_config(cluster)
    err = info.value
    assert err.path == "container.runtime.args.volumes[1]"
    assert err.value == "/x/<ChangeMe>:/y"
    assert "container.runtime.args.volumes[1]" in str(err)
    assert isinstance(err, cvs_core.ConfigError)
    assert isinstance(err, ValueError)


def test_changeme_in_a_key(cluster: dict) -> None:
    cluster["node_dict"] = {"<changeme>": {}}
    with pytest.raises(cvs_core.UnresolvedPlaceholderError) as info:
        cvs_core.load_config(cluster)
    assert info.value.path == "node_dict.<changeme>"


def test_testsuite_part_is_not_placeholder_resolved(cluster: dict) -> None:
    cfg = cvs_core.load_config(cluster, {"notes": "<changeme>", "extra": "{user-id}"})
    assert cfg.to_dict()["notes"] == "<changeme>"
    assert cfg.to_dict()["extra"] == "{user-id}"


def test_missing_required_keys_use_cvs_messages() -> None:
    with pytest.raises(cvs_core.ConfigError) as info:
        cvs_core.load_config({"node_dict": None})
    messages = [m for _, m in info.value.issues]
    assert messages == [
        "node_dict must be provided in configuration",
        "username must be provided in configuration",
        "priv_key_file must be provided in configuration",
    ]
    assert info.value.path == "node_dict"


def test_orchestrator_defaults_to_baremetal(cluster: dict) -> None:
    del cluster["orchestrator"]
    del cluster["container"]
    cfg = cvs_core.load_config(cluster)
    assert cfg.orchestrator == "baremetal"
    assert cfg.container is None


def test_list_node_dict_uses_mgmt_ip(cluster: dict) -> None:
    cluster["node_dict"] = [{"mgmt_ip": "h2"}, {"mgmt_ip": "h1"}]
    cfg = cvs_core.load_config(cluster)
    assert cfg.hosts == ["h2", "h1"]
    assert cfg.head_node == "h2"


def test_errors_are_collected_with_paths(cluster: dict) -> None:
    cluster["container"] = {
        "image": "img",
        "name": "bad name",
        "runtime": {"args": {"ulimit": ["nofile=1", 5], "devices": "/dev/kfd"}},
    }
    with pytest.raises(cvs_core.ConfigError) as info:
        cvs_core.load_config(cluster)
    paths = [p for p, _ in info.value.issues]
    assert paths == [
        "container.name",
        "container.runtime.args.devices",
        "container.runtime.args.ulimit[1]",
    ]
    assert "container.runtime.args.ulimit[1]: expected a string, got 5" in str(info.value)


def test_unknown_keys_are_warnings(cluster: dict) -> None:
    cluster["container"]["runtime"] = {"args": {"shm_size": "1g"}}
    cfg = cvs_core.load_config(cluster)
    assert cfg.warnings == [
        "container.runtime.args.shm_size: unknown key, ignored (check the spelling)"
    ]


def test_runtime_defaults_false_drops_cvs_defaults(cluster: dict) -> None:
    cluster["container"]["runtime"] = {
        "defaults": False,
        "args": {"network": "host", "volumes": ["/srv:/srv"]},
    }
    spec = cvs_core.load_config(cluster).container
    assert spec.use_defaults is False
    assert spec.volumes == ["/srv:/srv"]
    assert spec.devices == spec.capabilities == spec.ulimits == spec.groups == []
    assert spec.environment == {}
    assert (spec.network, spec.ipc, spec.privileged) == ("host", None, False)


def test_container_spec_from_dict_validates_alone(user: str) -> None:
    block = {"image": "a/b:c", "lifetime": "no_launch"}
    spec = cvs_core.ContainerSpec.from_dict(block)
    assert spec.name == f"{user}_a_b_c"
    assert spec.lifetime == "no_launch"
    assert block == {"image": "a/b:c", "lifetime": "no_launch"}
    with pytest.raises(cvs_core.ConfigError, match=r"container\.image"):
        cvs_core.ContainerSpec.from_dict({"lifetime": "per_run"})
    assert (
        cvs_core.ContainerSpec.from_dict({"lifetime": "per_run"}, require_image=False).image is None
    )


def test_sample_cluster_file_validates(user: str, tmp_path: Path) -> None:
    sample = str(REPO / "examples" / "cluster_container.json")
    # The sample names /home/<user>/.ssh/id_rsa, which this machine need not have.
    cfg = cvs_core.load_config(sample, require_key_file=False)
    assert cfg.orchestrator == "container"
    assert cfg.container.name == f"cvs_{user}_persistent"
    assert cfg.container.volumes[-1] == f"/home/{user}/cvs:/cvs"
    assert not any(k.startswith("_") for k in cfg.to_dict()["container"])
    if not os.path.exists(f"/home/{user}/.ssh/id_rsa"):
        assert [w.split(":")[0] for w in cfg.warnings] == ["priv_key_file"]
    key = write_key(tmp_path / "id_ed25519")
    cfg = cvs_core.load_config(sample, {"priv_key_file": str(key)})
    assert cfg.warnings == []


def test_non_json_values_are_rejected_with_path(cluster: dict) -> None:
    cluster["container"]["env"] = {"A": object()}
    with pytest.raises(cvs_core.ConfigError, match=r"container\.env\.A"):
        cvs_core.load_config(cluster)
    cluster["container"]["env"] = {1: "x"}
    with pytest.raises(cvs_core.ConfigError, match="keys must be strings"):
        cvs_core.load_config(cluster)


def test_relative_setup_script_resolves_against_cwd(
    cluster: dict, tmp_path: Path, monkeypatch
) -> None:
    script = tmp_path / "prov.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    monkeypatch.chdir(tmp_path)
    cluster["container"]["setup_script"] = "prov.sh"
    assert cvs_core.load_config(cluster).container.setup_script == str(script)
    cluster["container"]["setup_script"] = "./nope.sh"
    with pytest.raises(cvs_core.ConfigError) as info:
        cvs_core.load_config(cluster)
    assert str(info.value) == (
        f"container.setup_script not found: './nope.sh' (resolved to '{tmp_path}/nope.sh')"
    )


def test_default_setup_script_is_packaged_executable_bash() -> None:
    path = cvs_core.DEFAULT_CONTAINER_SETUP_SCRIPT
    assert os.path.isabs(path)
    assert os.path.isfile(path)
    assert os.access(path, os.X_OK)
    text = Path(path).read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert "openssh-server" in text


# -- validation that tells the truth: every case names its path ---------------------------------


def _issue(exc: pytest.ExceptionInfo, path: str) -> str:
    """The message of the issue at ``path`` (the test fails if there is none)."""
    found = dict(exc.value.issues)
    assert path in found, f"{path} not in {list(found)}"
    return found[path]


def test_duplicate_host_key_in_a_json_file(cluster: dict, tmp_path: Path) -> None:
    text = json.dumps(cluster).replace(
        '"10.0.0.2": {"bmc_ip": "NA"}', '"10.0.0.2": {"bmc_ip": "NA"}, "10.0.0.1": {"x": 1}'
    )
    path = tmp_path / "dup.json"
    path.write_text(text)
    with pytest.raises(cvs_core.ConfigError) as info:
        cvs_core.load_config(str(path))
    assert info.value.path == "node_dict.10.0.0.1"
    assert "host '10.0.0.1' is listed twice in" in _issue(info, "node_dict.10.0.0.1")
    # Any other key given twice is ambiguous too; repeated `_` comments are fine.
    path.write_text(text.replace('"lifetime": "persistent"', '"image": "x", "_c": 1, "_c": 2'))
    with pytest.raises(cvs_core.ConfigError) as info:
        cvs_core.load_config(str(path))
    assert [p for p, _ in info.value.issues] == ["node_dict.10.0.0.1", "container.image"]
    # Without duplicates the file order is kept (preserve_order).
    path.write_text(json.dumps({**cluster, "node_dict": {"b": {}, "a": {}, "c": {}}}))
    assert cvs_core.load_config(str(path)).hosts == ["b", "a", "c"]


def test_duplicate_hosts_in_a_list_and_after_substitution(cluster: dict, user: str) -> None:
    cluster["node_dict"] = [{"mgmt_ip": "10.0.0.1"}, {"mgmt_ip": "h"}, {"mgmt_ip": "10.0.0.1"}]
    with pytest.raises(cvs_core.ConfigError) as info:
        cvs_core.load_config(cluster)
    assert info.value.path == "node_dict[2].mgmt_ip"
    assert "listed twice (first at node_dict[0].mgmt_ip)" in str(info.value)
    cluster["node_dict"] = {"n-{user-id}": {}, f"n-{user}": {}}
    with pytest.raises(cvs_core.ConfigError) as info:
        cvs_core.load_config(cluster)
    assert info.value.path == f"node_dict.n-{user}"
    assert "once {user-id} is substituted" in str(info.value)
    cluster["node_dict"] = {"Node1.example": {}, "node1.EXAMPLE": {}}
    with pytest.raises(cvs_core.ConfigError) as info:
        cvs_core.load_config(cluster)
    assert info.value.path == "node_dict.node1.EXAMPLE"


@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (lambda p: None, "does not exist; create the key (ssh-keygen -t ed25519 -f"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: write_key(p, mode=0o644), "UNPROTECTED PRIVATE KEY FILE): run chmod 600"),
        (lambda p: write_key(p, mode=0o604), "(mode 0604)"),
        (lambda p: write_key(p, text="ssh-ed25519 AAAAC3 u@h\n"), "it looks like a public key"),
        (lambda p: write_key(p, text="hello\n"), "is not a private key"),
        (lambda p: write_key(p, text=""), "is empty"),
    ],
)
def test_priv_key_file_must_be_a_private_key(cluster: dict, tmp_path: Path, make, phrase) -> None:
    key = tmp_path / "keys" / "id"
    key.parent.mkdir()
    make(key)
    cluster["priv_key_file"] = str(key)
    with pytest.raises(cvs_core.ConfigError) as info:
        cvs_core.load_config(cluster)
    assert info.value.path == "priv_key_file"
    assert phrase in _issue(info, "priv_key_file")


def test_priv_key_file_forms_that_are_fine(cluster: dict, tmp_path: Path, monkeypatch) -> None:
    for text in (
        "\n-----BEGIN RSA PRIVATE KEY-----\nMIIE\n",
        "-----BEGIN PRIVATE KEY-----\nMIIE\n",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIE\n",
        "-----BEGIN EC PRIVATE KEY-----\nMHc\n",
    ):
        cluster["priv_key_file"] = str(write_key(tmp_path / "k", text=text))
        assert cvs_core.load_config(cluster).priv_key_file == str(tmp_path / "k")
    # `~` is expanded for the check; the configured text is kept (ssh expands it too).
    monkeypatch.setenv("HOME", str(tmp_path))
    cluster["priv_key_file"] = "~/k"
    assert cvs_core.load_config(cluster).priv_key_file == "~/k"
    cluster["priv_key_file"] = "~/absent"
    with pytest.raises(cvs_core.ConfigError, match=f"resolved to '{tmp_path}/absent'"):
        cvs_core.load_config(cluster)
    # Away from the control host: a missing key is a warning; a bad one is still an error.
    cfg = cvs_core.load_config(cluster, require_key_file=False)
    assert cfg.warnings[0].startswith("priv_key_file: '~/absent'")
    assert "refuse to run until it does" in cfg.warnings[0]
    cluster["priv_key_file"] = str(write_key(tmp_path / "open", mode=0o640))
    with pytest.raises(cvs_core.ConfigError, match="chmod 600"):
        cvs_core.load_config(cluster, require_key_file=False)


def test_container_name_length_limit(cluster: dict) -> None:
    cluster["container"]["name"] = "a" * 300
    with pytest.raises(cvs_core.ConfigError) as info:
        cvs_core.load_config(cluster)
    assert info.value.path == "container.name"
    assert "is 300 characters long; the limit is 128" in str(info.value)
    cluster["container"]["name"] = "a" * 128
    assert cvs_core.load_config(cluster).container.name == "a" * 128
    with pytest.raises(cvs_core.ConfigError, match="the limit is 128"):
        cvs_core.validate_container_name("a" * 129)
    with pytest.raises(cvs_core.CvsError, match="the limit is 128"):
        cvs_core.docker_exec_command("a" * 129, "true")


def test_setup_script_directory_empty_string_and_empty_file(
    cluster: dict, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "empty.sh").write_text("")
    cases = [
        ("scripts", f"'scripts' (resolved to '{tmp_path}/scripts') is a directory"),
        ("", "is an empty string; omit the key (or set it to null) to use the packaged default"),
        ("empty.sh", "is empty (0 bytes)"),
        (False, "expected a path string or null, got False"),
    ]
    for value, phrase in cases:
        cluster["container"]["setup_script"] = value
        with pytest.raises(cvs_core.ConfigError) as info:
            cvs_core.load_config(cluster)
        assert info.value.path == "container.setup_script"
        assert phrase in str(info.value), value
    cluster["container"]["setup_script"] = None
    default = cvs_core.DEFAULT_CONTAINER_SETUP_SCRIPT
    assert cvs_core.load_config(cluster).container.setup_script == default
    # CVS's own resolver keeps CVS's rule: falsy is the packaged default.
    assert cvs_core.resolve_container_setup_script({"setup_script": ""}) == {
        "setup_script": default
    }


@pytest.mark.parametrize("value", [8, 1.5, True, None, {"a": "b"}, ["x"]])
def test_env_values_must_be_strings(cluster: dict, value) -> None:
    cluster["container"]["env"] = {"FOO": value, "OK": "1"}
    with pytest.raises(cvs_core.ConfigError) as info:
        cvs_core.load_config(cluster)
    assert [p for p, _ in info.value.issues] == ["container.env.FOO"]
    assert "container.env.FOO: expected a string, got" in str(info.value)
    cluster["container"]["env"] = {"FOO": "8"}
    cluster["env_vars"] = {"BAR": value}
    with pytest.raises(cvs_core.ConfigError) as info:
        cvs_core.load_config(cluster)
    assert info.value.path == "env_vars.BAR"


def test_a_bad_lifetime_does_not_hide_the_other_errors(cluster: dict) -> None:
    cluster["container"] = {
        "image": "img",
        "lifetime": "forever",
        "name": "bad name",
        "runtime": {"args": {"ulimit": [5]}},
    }
    with pytest.raises(cvs_core.ConfigError) as info:
        cvs_core.load_config(cluster)
    assert [p for p, _ in info.value.issues] == [
        "container.lifetime",
        "container.name",
        "container.runtime.args.ulimit[0]",
    ]
    assert "container.lifetime must be one of ('no_launch', 'per_run', 'persistent')" in str(
        info.value
    )
    # The legacy keys are collected the same way, first, in CVS's words.
    cluster["container"]["enabled"] = True
    with pytest.raises(cvs_core.ConfigError) as info:
        cvs_core.load_config(cluster)
    assert [p for p, _ in info.value.issues][:2] == ["container.enabled", "container.lifetime"]


def test_nesting_past_the_json_limit_is_a_config_error_not_a_crash() -> None:
    deep: object = "x"
    for _ in range(20_000):
        deep = {"a": deep}
    with pytest.raises(cvs_core.ConfigError, match="nested 128 levels deep"):
        cvs_core.load_config(deep)
    loop: dict = {}
    loop["container"] = loop
    with pytest.raises(cvs_core.ConfigError, match="contains itself") as info:
        cvs_core.resolve_cluster_placeholders(loop)
    assert info.value.path.startswith("container.container.")
    ok: object = "x"
    for _ in range(126):  # 127 levels with the outer dict: what a JSON file may have too
        ok = [ok]
    assert cvs_core.resolve_cluster_placeholders({"a": ok}) == {"a": ok}


def test_a_key_that_is_not_utf8_is_named_as_such() -> None:
    with pytest.raises(cvs_core.ConfigError, match="is not valid UTF-8"):
        cvs_core.load_config({"\ud800": 1})
