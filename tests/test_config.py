"""load_config, ClusterConfig and ContainerSpec through the Python API."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cvs_core
from conftest import REPO, deep


def test_load_config_resolves_and_types(cluster: dict, user: str) -> None:
    cfg = cvs_core.load_config(cluster)
    assert isinstance(cfg, cvs_core.ClusterConfig)
    assert cfg.orchestrator == "container"
    assert cfg.hosts == ["10.0.0.1", "10.0.0.2"]
    assert cfg.head_node == "10.0.0.1"
    assert cfg.username == user
    assert cfg.priv_key_file == f"/home/{user}/.ssh/id_rsa"
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
def test_user_id_placeholder_order(monkeypatch, cluster: dict, env: dict, expected: str) -> None:
    for var in ("USER", "LOGNAME", "USERNAME"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
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


def test_sample_cluster_file_validates(user: str) -> None:
    cfg = cvs_core.load_config(str(REPO / "examples" / "cluster_container.json"))
    assert cfg.orchestrator == "container"
    assert cfg.container.name == f"cvs_{user}_persistent"
    assert cfg.container.volumes[-1] == f"/home/{user}/cvs:/cvs"
    assert cfg.warnings == []
    assert not any(k.startswith("_") for k in cfg.to_dict()["container"])


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
