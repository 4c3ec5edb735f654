"""CVS's ``cvs.core.orchestrators`` package: where and how CVS runs commands on a cluster."""

from __future__ import annotations

from .baremetal import BaremetalOrchestrator
from .base import Orchestrator
from .container import ContainerOrchestrator
from .factory import OrchestratorConfig, OrchestratorFactory

__all__ = [
    "BaremetalOrchestrator",
    "ContainerOrchestrator",
    "Orchestrator",
    "OrchestratorConfig",
    "OrchestratorFactory",
]
