"""CVS's ``cvs.core.runtimes.base``: the ``ContainerRuntime`` protocol (documentation only, as
in CVS: nothing checks it at run time)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class ContainerRuntime(Protocol):
    """What the container orchestrator needs from a runtime (docker, enroot, ...)."""

    def setup_containers(self, container_config: dict[str, Any], container_name: str) -> bool:
        """Start one container per host; True when every host started it."""
        ...

    def teardown_containers(self, container_name: str) -> bool:
        """Remove the container on every host; True when every removal succeeded."""
        ...

    def image_sha_status(self, container_name: str, image_name: str) -> dict[str, dict[str, str]]:
        """``{host: {'container_sha', 'image_sha'}}``, ``''`` where unreadable."""
        ...

    def is_running(self, container_name: str) -> dict[str, dict[str, Any]]:
        """``{host: {'running': bool, 'name': str, 'exit_code': int}}``."""
        ...

    def exec(
        self,
        container_name: str,
        cmd: str,
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        detailed: bool = False,
        print_console: bool = True,
    ) -> dict[str, Any]:
        """Run ``cmd`` inside the container on ``hosts`` (all when None)."""
        ...

    def exec_on_head(
        self,
        container_name: str,
        cmd: str,
        timeout: float | None = None,
        detailed: bool = False,
        print_console: bool = True,
    ) -> dict[str, Any]:
        """Run ``cmd`` inside the head node's container."""
        ...

    def exec_cmd_list(
        self,
        container_name: str,
        cmd_list: Sequence[str],
        timeout: float | None = None,
        print_console: bool = True,
    ) -> dict[str, str]:
        """``cmd_list[i]`` inside the container on host ``i`` (CVS main)."""
        ...

    def load_image(self, tar_path: str, timeout: float | None = None) -> dict[str, Any]:
        """Load an image tarball on every host."""
        ...
