"""Fixtures for the compat orchestrator and runtime tests: CVS-style doubles (patched ``Pssh``
and ``RuntimeFactory``), nothing that touches the network."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

with warnings.catch_warnings():  # the parallel_ssh_lib shim warns on import, as CVS's does
    warnings.simplefilter("ignore", DeprecationWarning)
    from cvs_core.compat.orchestrators import baremetal, container, factory

HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def ok(*hosts: str, output: str = "") -> dict[str, dict[str, Any]]:
    """A detailed result where every host exited 0."""
    return {h: {"output": output, "exit_code": 0} for h in hosts or HOSTS}


def results(**codes: int) -> dict[str, dict[str, Any]]:
    """``results(h1=0, h2=1)`` with host names given as h1.. (mapped to HOSTS)."""
    return {HOSTS[int(k[1:]) - 1]: {"output": "", "exit_code": v} for k, v in codes.items()}


@pytest.fixture
def log() -> mock.MagicMock:
    return mock.MagicMock(name="log")


@pytest.fixture
def pssh() -> Iterator[mock.MagicMock]:
    """``baremetal.Pssh`` patched; each construction returns a fresh, named handle double."""
    counter = itertools.count()
    handles: list[mock.MagicMock] = []

    def build(*args: Any, **kwargs: Any) -> mock.MagicMock:
        handle = mock.MagicMock(name=f"pssh{next(counter)}")
        handle.host_list = list(args[1])
        handles.append(handle)
        return handle

    with mock.patch.object(baremetal, "Pssh", side_effect=build) as cls:
        cls.handles = handles  # every handle built, in order: head, all, then subsets
        yield cls


@pytest.fixture
def runtime_factory() -> Iterator[mock.MagicMock]:
    with mock.patch.object(container, "RuntimeFactory") as cls:
        yield cls


def make_config(orchestrator: str = "baremetal", hosts: list[str] | None = None, **extra: Any):
    return factory.OrchestratorConfig(
        orchestrator=orchestrator,
        node_dict={h: {"bmc_ip": "NA"} for h in (hosts or HOSTS)},
        username="cvsuser",
        priv_key_file="/home/cvsuser/.ssh/id_rsa",
        **extra,
    )


@pytest.fixture
def bare(log: mock.MagicMock, pssh: mock.MagicMock) -> baremetal.BaremetalOrchestrator:
    return baremetal.BaremetalOrchestrator(log, make_config())


@pytest.fixture
def make_container(log: mock.MagicMock, pssh: mock.MagicMock, runtime_factory: mock.MagicMock):
    """Build a ContainerOrchestrator with a mocked runtime: ``make_container(lifetime=...,
    hosts=..., **container_block)``."""

    def build(
        lifetime: str = "per_run", hosts: list[str] | None = None, **block: Any
    ) -> container.ContainerOrchestrator:
        block.setdefault("image", "rocm/cvs:latest")
        block.setdefault("name", "cvs_c")
        block["lifetime"] = lifetime
        cfg = make_config("container", hosts, container=block)
        return container.ContainerOrchestrator(log, cfg)

    return build


def logged(method: mock.MagicMock) -> list[str]:
    """Every message a mocked log method received."""
    return [str(c.args[0]) for c in method.call_args_list]
