"""CVS's ``cvs.core.runtimes.enroot``: a stub, as in CVS (every call reports it is missing).

``setup_containers`` keeps CVS's two parameters, so ``ContainerOrchestrator.setup_containers``
with ``runtime.name: enroot`` raises ``TypeError`` (the docker keywords), as it does in CVS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NOT_IMPLEMENTED = "Enroot runtime not yet implemented"


class EnrootRuntime:
    """Placeholder runtime: setup fails, teardown succeeds, probes and execs return ``{}``."""

    def __init__(self, log: Any, orchestrator: Any) -> None:
        self.log = log
        self.orchestrator = orchestrator

    def setup_containers(self, container_config: Any, container_name: str) -> bool:
        # CVS's two-argument signature (seams R6): the container orchestrator's launch passes
        # the docker keywords, so it raises TypeError here, as in CVS.
        self.log.warning(NOT_IMPLEMENTED)
        return False

    def teardown_containers(self, container_name: str) -> bool:
        self.log.warning(NOT_IMPLEMENTED)
        return True

    def image_sha_status(self, container_name: str, image_name: str) -> dict[str, Any]:
        self.log.error(NOT_IMPLEMENTED)
        return {}

    def is_running(self, container_name: str) -> dict[str, Any]:
        self.log.error(NOT_IMPLEMENTED)
        return {}

    def exec(
        self,
        container_name: str,
        cmd: str,
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        detailed: bool = False,
        print_console: bool = True,
    ) -> dict[str, Any]:
        self.log.error(NOT_IMPLEMENTED)
        return {}

    def exec_on_head(
        self,
        container_name: str,
        cmd: str,
        timeout: float | None = None,
        detailed: bool = False,
        print_console: bool = True,
    ) -> dict[str, Any]:
        self.log.error(NOT_IMPLEMENTED)
        return {}

    def exec_cmd_list(
        self,
        container_name: str,
        cmd_list: Sequence[str],
        timeout: float | None = None,
        print_console: bool = True,
    ) -> dict[str, Any]:
        self.log.error(NOT_IMPLEMENTED)
        return {}

    def load_image(self, tar_path: str, timeout: float | None = None) -> dict[str, Any]:
        self.log.error(NOT_IMPLEMENTED)
        return {}
