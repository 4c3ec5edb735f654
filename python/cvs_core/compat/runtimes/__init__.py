"""CVS's ``cvs.core.runtimes`` package: container runtimes driven by the container orchestrator."""

from __future__ import annotations

from .base import ContainerRuntime
from .docker import DockerRuntime
from .enroot import EnrootRuntime
from .factory import RuntimeFactory

__all__ = ["ContainerRuntime", "DockerRuntime", "EnrootRuntime", "RuntimeFactory"]
