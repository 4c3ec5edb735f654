"""CVS's ``cvs.core.orchestrators.base``: the abstract ``Orchestrator``.

The abstract set is CVS's (``exec``, ``exec_on_head``, ``setup_env``, ``cleanup``), so a class
CVS or its tests derive from it must implement exactly what it did before.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Orchestrator(ABC):
    """Where and how CVS runs commands on a cluster (bare hosts or per-node containers)."""

    def __init__(self, log: Any, config: Any, stop_on_errors: bool = False) -> None:
        self.log = log
        self.config = config
        self.stop_on_errors = stop_on_errors

    @abstractmethod
    def exec(self, cmd: str, hosts: list[str] | None = None, timeout: float | None = None) -> Any:
        """Run ``cmd`` on ``hosts`` (all when None); ``{host: output}``."""

    @abstractmethod
    def exec_on_head(self, cmd: str, timeout: float | None = None, detailed: bool = False) -> Any:
        """Run ``cmd`` on the head node only."""

    @abstractmethod
    def setup_env(self, hosts: list[str], env_script: str | None = None) -> bool:
        """Run an environment script on ``hosts``; True when it succeeded everywhere."""

    @abstractmethod
    def cleanup(self, hosts: list[str]) -> bool:
        """Release what this orchestrator set up on ``hosts``."""

    def distribute_using_mpi(
        self,
        rank_cmd: str,
        mpi_hosts: list[str],
        ranks_per_host: int,
        env_vars: dict[str, Any],
        mpi_install_dir: str,
        mpi_extra_args: Any = None,
    ) -> Any:
        raise NotImplementedError(f"MPI distribution not supported by {self.__class__.__name__}")
