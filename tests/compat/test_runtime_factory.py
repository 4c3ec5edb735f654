"""compat ``runtimes`` package, ``runtimes.factory`` and the ``enroot`` stub (contract §4.1,
§4.2, §4.4)."""

from __future__ import annotations

import typing
from unittest import mock

import pytest

import cvs_core.compat.runtimes as runtimes
from cvs_core.compat.runtimes import base, docker, enroot, factory


def test_package_exports() -> None:
    assert set(runtimes.__all__) == {
        "ContainerRuntime",
        "DockerRuntime",
        "EnrootRuntime",
        "RuntimeFactory",
    }
    assert runtimes.DockerRuntime is docker.DockerRuntime
    assert runtimes.RuntimeFactory is factory.RuntimeFactory


def test_protocol_documents_the_runtime_surface() -> None:
    assert typing.Protocol in base.ContainerRuntime.__mro__
    for name in (
        "setup_containers",
        "teardown_containers",
        "image_sha_status",
        "is_running",
        "exec",
        "exec_on_head",
        "exec_cmd_list",
        "load_image",
    ):
        assert callable(getattr(base.ContainerRuntime, name))
        assert callable(getattr(docker.DockerRuntime, name))
        assert callable(getattr(enroot.EnrootRuntime, name))


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("docker", docker.DockerRuntime),
        ("Docker", docker.DockerRuntime),
        ("ENROOT", enroot.EnrootRuntime),
    ],
)
def test_create(log, name, cls) -> None:
    orch = mock.MagicMock()
    rt = factory.RuntimeFactory.create(name, log, orch)
    assert type(rt) is cls
    assert (rt.log, rt.orchestrator) == (log, orch)


def test_create_looks_up_classes_at_call_time(log) -> None:
    with mock.patch.object(factory, "DockerRuntime") as cls:
        assert factory.RuntimeFactory.create("docker", log, "o") is cls.return_value
    cls.assert_called_once_with(log, "o")


def test_create_unsupported(log) -> None:
    with pytest.raises(ValueError, match="Unsupported container runtime: podman"):
        factory.RuntimeFactory.create("podman", log, None)


def test_enroot_stub(log) -> None:
    orch = mock.MagicMock()
    rt = enroot.EnrootRuntime(log, orch)
    assert rt.setup_containers({"image": "i"}, "c") is False
    assert rt.teardown_containers("c") is True
    assert log.warning.call_args_list == [mock.call("Enroot runtime not yet implemented")] * 2
    assert rt.image_sha_status("c", "i") == {}
    assert rt.is_running("c") == {}
    assert rt.exec("c", "ls") == {}
    assert rt.exec_on_head("c", "ls", detailed=True) == {}
    assert rt.exec_cmd_list("c", ["ls"]) == {}
    assert log.error.call_count == 5
    assert {c.args[0] for c in log.error.call_args_list} == {"Enroot runtime not yet implemented"}
    orch.all.exec.assert_not_called()
