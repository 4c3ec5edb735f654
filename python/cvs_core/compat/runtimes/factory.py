"""CVS's ``cvs.core.runtimes.factory``: ``RuntimeFactory.create(name, log, orchestrator)``.

``DockerRuntime`` and ``EnrootRuntime`` are this module's globals, looked up per call, so a
caller may patch ``...runtimes.factory.DockerRuntime``.
"""

from __future__ import annotations

from typing import Any

from .docker import DockerRuntime
from .enroot import EnrootRuntime


class RuntimeFactory:
    """Builds the container runtime named in ``container.runtime.name``."""

    @staticmethod
    def create(runtime_name: str, log: Any, orchestrator: Any) -> Any:
        name = str(runtime_name).lower()
        if name == "docker":
            return DockerRuntime(log, orchestrator)
        if name == "enroot":
            return EnrootRuntime(log, orchestrator)
        raise ValueError(f"Unsupported container runtime: {name}")

    @staticmethod
    def get_supported_runtimes() -> list[str]:
        return ["docker", "enroot"]
