"""compat ``orchestrators.factory``: lifetime and setup_script resolution, OrchestratorConfig,
from_configs (dicts, paths, placeholders) and OrchestratorFactory dispatch (contract §3.5, §5)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from unittest import mock

import pytest

import cvs_core
from cvs_core.compat.orchestrators import factory

from .conftest import HOSTS, make_config

ENABLED_MSG = (
    "container.enabled is removed; delete the field and set container.lifetime to one of "
    "'no_launch', 'per_run', 'persistent'"
)
LAUNCH_MSG = (
    "container.launch is removed; delete the field and set container.lifetime "
    "('launch: true' -> 'per_run', 'launch: false' -> 'no_launch')"
)


# -- lifetime ----------------------------------------------------------------------------------
def test_valid_lifetimes_constant() -> None:
    assert factory.VALID_CONTAINER_LIFETIMES == ("no_launch", "per_run", "persistent")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"enabled": True}, ENABLED_MSG),
        ({"enabled": False, "lifetime": "per_run"}, ENABLED_MSG),
        ({"launch": True}, LAUNCH_MSG),
        # launch fires even next to a valid lifetime: a stale flag must not hide.
        ({"launch": False, "lifetime": "persistent"}, LAUNCH_MSG),
        # enabled is checked before launch.
        ({"enabled": True, "launch": True}, ENABLED_MSG),
        (
            {"lifetime": "external"},
            "container.lifetime must be one of ('no_launch', 'per_run', 'persistent'), "
            "got 'external'",
        ),
        (
            {"lifetime": None},
            "container.lifetime must be one of ('no_launch', 'per_run', 'persistent'), got None",
        ),
    ],
)
def test_lifetime_errors(block: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        factory._resolve_container_lifetime(block)
    assert str(info.value) == message


@pytest.mark.parametrize("lifetime", ["no_launch", "per_run", "persistent"])
def test_lifetime_valid_values_are_kept(lifetime: str) -> None:
    block = {"image": "i", "lifetime": lifetime}
    assert factory._resolve_container_lifetime(block) == {"image": "i", "lifetime": lifetime}


def test_lifetime_defaults_to_per_run_and_mutates_in_place() -> None:
    block = {"image": "i"}
    out = factory._resolve_container_lifetime(block)
    assert out is block
    assert block["lifetime"] == "per_run"


@pytest.mark.parametrize("falsy", [{}, None])
def test_lifetime_falsy_block_untouched(falsy) -> None:
    assert factory._resolve_container_lifetime(falsy) is falsy


# -- setup_script ------------------------------------------------------------------------------
def test_packaged_default_script_exists_and_installs_sshd() -> None:
    path = factory.DEFAULT_CONTAINER_SETUP_SCRIPT
    assert os.path.isabs(path) and os.path.isfile(path)
    assert path.endswith(os.path.join("scripts", "default_container_setup.sh"))
    text = Path(path).read_text()
    assert "openssh-server" in text and "set -euo pipefail" in text


@pytest.mark.parametrize("block", [{"image": "i"}, {"setup_script": None}, {"setup_script": ""}])
def test_setup_script_falsy_uses_default_looked_up_at_call_time(block, tmp_path: Path) -> None:
    fake_default = tmp_path / "default.sh"
    fake_default.write_text("true\n")
    with mock.patch.object(factory, "DEFAULT_CONTAINER_SETUP_SCRIPT", str(fake_default)):
        out = factory._resolve_container_setup_script(block)
    assert out is block
    assert block["setup_script"] == str(fake_default)


def test_setup_script_missing_user_path_raises(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:
        factory._resolve_container_setup_script({"setup_script": "nope.sh"})
    assert str(info.value) == (
        f"container.setup_script not found: 'nope.sh' (resolved to '{tmp_path / 'nope.sh'}')"
    )


def test_setup_script_relative_and_tilde_paths_become_absolute(tmp_path: Path, monkeypatch):
    (tmp_path / "s.sh").write_text("true\n")
    monkeypatch.chdir(tmp_path)
    assert factory._resolve_container_setup_script({"setup_script": "s.sh"}) == {
        "setup_script": str(tmp_path / "s.sh")
    }
    monkeypatch.setenv("HOME", str(tmp_path))
    assert factory._resolve_container_setup_script({"setup_script": "~/s.sh"}) == {
        "setup_script": str(tmp_path / "s.sh")
    }


def test_setup_script_missing_default_names_cvs(tmp_path: Path) -> None:
    gone = str(tmp_path / "gone.sh")
    with mock.patch.object(factory, "DEFAULT_CONTAINER_SETUP_SCRIPT", gone):
        with pytest.raises(ValueError) as info:
            factory._resolve_container_setup_script({"image": "i"})
    assert str(info.value) == (
        f"packaged default container setup script is missing: {gone!r} (broken CVS install?)"
    )


def test_setup_script_falsy_block_untouched() -> None:
    assert factory._resolve_container_setup_script({}) == {}
    assert factory._resolve_container_setup_script(None) is None


# -- OrchestratorConfig ------------------------------------------------------------------------
def test_config_missing_keys() -> None:
    with pytest.raises(ValueError) as info:
        factory.OrchestratorConfig(orchestrator="baremetal", username="u")
    assert (
        str(info.value)
        == "OrchestratorConfig missing required keys: ['node_dict', 'priv_key_file']"
    )


def test_config_attributes_and_get() -> None:
    cfg = make_config()
    assert cfg.orchestrator == "baremetal"
    assert list(cfg.node_dict) == HOSTS
    assert cfg.username == "cvsuser"
    assert cfg.password is None
    assert cfg.head_node_dict == {}
    assert cfg.container == {}
    assert cfg.get("username") == "cvsuser"
    assert cfg.get("nope", 7) == 7


def test_config_resolves_the_callers_container_dict_in_place() -> None:
    # CVS keeps the caller's dict and fills lifetime/setup_script into it (seams O7).
    block = {"image": "rocm/cvs:latest", "runtime": {"args": {"volumes": ["/a:/b"]}}}
    cfg = make_config("container", container=block)
    assert cfg.container is block
    assert block["lifetime"] == "per_run"
    assert block["setup_script"] == factory.DEFAULT_CONTAINER_SETUP_SCRIPT


def test_config_rejects_legacy_container_keys() -> None:
    with pytest.raises(ValueError, match=r"container\.launch is removed"):
        make_config("container", container={"image": "i", "launch": True})


# -- from_configs ------------------------------------------------------------------------------
@pytest.fixture
def cluster(user: str) -> dict:
    return {
        "username": "{user-id}",
        "priv_key_file": "/home/{user-id}/.ssh/id_rsa",
        "node_dict": {"10.0.0.1": {}, "10.0.0.2": {}},
        "orchestrator": "container",
        "container": {"image": "rocm/cvs:latest", "name": "c_{user-id}", "lifetime": "persistent"},
    }


def test_from_configs_dicts_resolves_user_id_and_keeps_inputs(cluster: dict) -> None:
    before = json.loads(json.dumps(cluster))
    cfg = factory.OrchestratorConfig.from_configs(cluster)
    assert cfg.username == "cvsuser"
    assert cfg.priv_key_file == "/home/cvsuser/.ssh/id_rsa"
    assert cfg.orchestrator == "container"
    assert cfg.container["name"] == "c_cvsuser"
    assert cfg.container["lifetime"] == "persistent"
    assert cluster == before


def test_from_configs_paths(cluster: dict, write_json) -> None:
    cluster_path = write_json("cluster.json", cluster)
    suite_path = write_json("suite.json", {"orchestrator": "baremetal", "extra": "{user-id}"})
    cfg = factory.OrchestratorConfig.from_configs(cluster_path, suite_path)
    assert cfg.orchestrator == "baremetal"
    assert cfg.username == "cvsuser"
    cfg2 = factory.OrchestratorConfig.from_configs(Path(cluster_path))
    assert cfg2.orchestrator == "container"


def test_from_configs_shallow_merge_and_testsuite_not_resolved(cluster: dict) -> None:
    suite = {"container": {"image": "other:1", "name": "keep_{user-id}"}}
    cfg = factory.OrchestratorConfig.from_configs(cluster, suite)
    # The testsuite block replaces the cluster's whole container block (CVS's shallow merge),
    # and testsuite values are not placeholder-resolved (#190).
    assert cfg.container["image"] == "other:1"
    assert cfg.container["name"] == "keep_{user-id}"
    assert cfg.container["lifetime"] == "per_run"


def test_from_configs_defaults(cluster: dict) -> None:
    del cluster["orchestrator"], cluster["container"]
    cfg = factory.OrchestratorConfig.from_configs(cluster)
    assert cfg.orchestrator == "baremetal"
    assert cfg.container == {}
    assert cfg.head_node_dict == {}


@pytest.mark.parametrize("key", ["node_dict", "username", "priv_key_file"])
def test_from_configs_requires_keys(cluster: dict, key: str) -> None:
    del cluster[key]
    with pytest.raises(ValueError) as info:
        factory.OrchestratorConfig.from_configs(cluster)
    assert str(info.value) == f"{key} must be provided in configuration"


def test_from_configs_changeme_exits_1_with_banner(cluster: dict, caplog) -> None:
    cluster["node_dict"] = {"<changeme>": {}}
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as info:
        factory.OrchestratorConfig.from_configs(cluster)
    assert info.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    banner = errors[0]
    assert "ERROR: Unresolved placeholder found in cluster config!" in banner
    assert "node_dict.<changeme>" in banner
    assert "ACTION REQUIRED" in banner
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "Resolving cluster path placeholders with system username: cvsuser" in infos


def test_from_configs_changeme_in_value_any_case(cluster: dict) -> None:
    cluster["container"]["runtime"] = {"args": {"volumes": ["<CHANGEME>:/data"]}}
    with pytest.raises(SystemExit):
        factory.OrchestratorConfig.from_configs(cluster)


def test_from_configs_testsuite_changeme_is_not_guarded(cluster: dict) -> None:
    cfg = factory.OrchestratorConfig.from_configs(cluster, {"note": "<changeme>"})
    assert cfg.get("note") is None  # only the 7 orchestrator keys are taken


# -- OrchestratorFactory -----------------------------------------------------------------------
def test_factory_type_check(log) -> None:
    with pytest.raises(TypeError, match="config must be OrchestratorConfig instance"):
        factory.OrchestratorFactory.create_orchestrator(log, {"orchestrator": "baremetal"})


@pytest.mark.parametrize(
    ("kind", "attr"),
    [
        ("baremetal", "BaremetalOrchestrator"),
        ("BareMetal", "BaremetalOrchestrator"),
        ("container", "ContainerOrchestrator"),
        ("CONTAINER", "ContainerOrchestrator"),
    ],
)
def test_factory_dispatch_uses_module_globals(log, kind: str, attr: str) -> None:
    cfg = make_config(kind, container={"image": "i"} if "ontainer" in kind.lower() else {})
    with mock.patch.object(factory, attr) as cls:
        out = factory.OrchestratorFactory.create_orchestrator(log, cfg, stop_on_errors=True)
    assert out is cls.return_value
    cls.assert_called_once_with(log, cfg, True)


def test_factory_unsupported(log) -> None:
    with pytest.raises(ValueError, match="Unsupported orchestrator type: slurm"):
        factory.OrchestratorFactory.create_orchestrator(log, make_config("slurm"))


def test_factory_builds_real_orchestrators(log, pssh, runtime_factory) -> None:
    bare = factory.OrchestratorFactory.create_orchestrator(log, make_config())
    assert type(bare).__name__ == "BaremetalOrchestrator"
    cont = factory.OrchestratorFactory.create_orchestrator(
        log, make_config("container", container={"image": "i"})
    )
    assert type(cont).__name__ == "ContainerOrchestrator"
    assert cont.stop_on_errors is False


def test_supported_backends() -> None:
    assert factory.OrchestratorFactory.get_supported_backends() == ["baremetal", "container"]


def test_core_constants_reexported() -> None:
    assert cvs_core.VALID_CONTAINER_LIFETIMES == factory.VALID_CONTAINER_LIFETIMES
