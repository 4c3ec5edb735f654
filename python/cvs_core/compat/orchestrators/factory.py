"""CVS's ``cvs.core.orchestrators.factory``: ``OrchestratorConfig`` and ``OrchestratorFactory``.

Resolution is the Rust core's: ``cvs_core.resolve_container_lifetime``,
``cvs_core.resolve_container_setup_script`` and ``cvs_core.resolve_cluster_placeholders``, with
CVS's messages. The names CVS looks up per call are this module's globals, so callers may patch
them: ``DEFAULT_CONTAINER_SETUP_SCRIPT``, ``VALID_CONTAINER_LIFETIMES``, the two
``_resolve_container_*`` functions, ``BaremetalOrchestrator`` and ``ContainerOrchestrator``.
``from_configs`` imports ``cvs.lib.utils_lib.resolve_cluster_config_placeholders`` when it runs,
as CVS does; outside CVS (no ``cvs`` package) the core resolves the same way.

As in CVS, ``OrchestratorConfig(container=d)`` keeps the caller's dict ``d`` and fills
``lifetime`` and ``setup_script`` into it (seams O7), and keys it does not know are dropped.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import cvs_core

from .baremetal import BaremetalOrchestrator
from .container import ContainerOrchestrator

VALID_CONTAINER_LIFETIMES: tuple[str, ...] = tuple(cvs_core.VALID_CONTAINER_LIFETIMES)
# Run in each freshly launched container when container.setup_script is not set: installs
# openssh-server with apt unless sshd is already there.
DEFAULT_CONTAINER_SETUP_SCRIPT: str = cvs_core.DEFAULT_CONTAINER_SETUP_SCRIPT

_REQUIRED_KEYS = ("orchestrator", "node_dict", "username", "priv_key_file")
_MISSING_DEFAULT = "packaged default container setup script is missing:"


def _resolve_container_lifetime(container: Any) -> Any:
    """CVS's lifetime resolution: mutates and returns ``container`` (falsy: untouched).

    ``enabled`` and ``launch`` are removed fields (hard errors); ``lifetime`` must be one of
    ``VALID_CONTAINER_LIFETIMES`` (this module's, read now: seams B21) and defaults to
    ``per_run``.
    """
    valid = VALID_CONTAINER_LIFETIMES
    if (
        isinstance(container, dict)
        and "lifetime" in container
        and "enabled" not in container
        and "launch" not in container
    ):
        # The one check that reads the tuple; the removed fields and the default stay the core's.
        value = container["lifetime"]
        if value not in valid:
            raise ValueError(f"container.lifetime must be one of {valid}, got {value!r}")
        return container
    return cvs_core.resolve_container_lifetime(container)


def _resolve_container_setup_script(container: Any) -> Any:
    """CVS's setup_script resolution: mutates and returns ``container`` (falsy: untouched).

    A set path becomes absolute (``~`` expanded, relative to the working directory) and must be
    a file; unset, ``None`` or ``""`` becomes ``DEFAULT_CONTAINER_SETUP_SCRIPT``.
    """
    default = DEFAULT_CONTAINER_SETUP_SCRIPT
    try:
        return cvs_core.resolve_container_setup_script(container, default_script=default)
    except ValueError as exc:
        if str(exc).startswith(_MISSING_DEFAULT):
            # The core names cvs-core; CVS's message (which CVS users know) names CVS.
            raise ValueError(
                f"packaged default container setup script is missing: {default!r} "
                "(broken CVS install?)"
            ) from exc
        raise


def _load_document(doc: Any) -> Any:
    if isinstance(doc, (str, os.PathLike)):
        with open(doc) as f:
            return json.load(f)
    return doc


def _placeholder_banner(exc: Any) -> str:
    rule = "=" * 80
    return "\n".join(
        [
            rule,
            "ERROR: Unresolved placeholder found in cluster config!",
            rule,
            f"  Path:  {getattr(exc, 'path', None)}",
            f"  Value: {getattr(exc, 'value', None)}",
            "",
            "ACTION REQUIRED: replace every '<changeme>' in the cluster file with a real value",
            "(for example the node addresses, the SSH user and its private key) and rerun.",
            rule,
        ]
    )


def _cluster_resolver() -> Any:
    """CVS's ``resolve_cluster_config_placeholders``, imported now as CVS does (seams B23), so a
    patch of ``cvs.lib.utils_lib`` replaces cluster resolution; the core's otherwise."""
    try:
        from cvs.lib.utils_lib import (  # type: ignore[import-not-found]
            resolve_cluster_config_placeholders,
        )
    except ImportError:
        return _resolve_cluster
    return resolve_cluster_config_placeholders


def _resolve_cluster(cluster: Any) -> Any:
    log = logging.getLogger()  # CVS's globals.log is the root logger
    log.info(
        f"Resolving cluster path placeholders with system username: {cvs_core.placeholder_user()}"
    )
    try:
        return cvs_core.resolve_cluster_placeholders(cluster)
    except cvs_core.UnresolvedPlaceholderError as exc:
        log.error(_placeholder_banner(exc))
        sys.exit(1)


class OrchestratorConfig:
    """The orchestrator's view of the cluster + testsuite configuration.

    ``__init__`` is the single normalization point: a ``container`` block is resolved here
    whether the config came from ``from_configs`` or was built directly.
    """

    def __init__(self, **kwargs: Any) -> None:
        missing = [k for k in _REQUIRED_KEYS if k not in kwargs]
        if missing:
            raise ValueError(f"OrchestratorConfig missing required keys: {missing}")
        self.orchestrator = kwargs["orchestrator"]
        self.node_dict = kwargs["node_dict"]
        self.username = kwargs["username"]
        self.priv_key_file = kwargs["priv_key_file"]
        self.password = kwargs.get("password")
        self.head_node_dict = kwargs.get("head_node_dict", {})
        # The caller's dict itself, resolved in place (CVS: a later edit of it shows here too).
        container = kwargs.get("container", {})
        self.container = _resolve_container_setup_script(_resolve_container_lifetime(container))

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __repr__(self) -> str:
        return (
            f"OrchestratorConfig(orchestrator={self.orchestrator!r}, "
            f"hosts={len(self.node_dict or ())}, username={self.username!r})"
        )

    @classmethod
    def from_configs(cls, cluster_config: Any, testsuite_config: Any = None) -> OrchestratorConfig:
        """Build from a cluster config and an optional testsuite config (dicts or JSON paths).

        ``{user-id}`` is resolved and ``<changeme>`` refused (exit 1) in the cluster part only;
        the merge is CVS's shallow, top-level one (a testsuite ``container`` block replaces the
        cluster's).
        """
        cluster = _cluster_resolver()(_load_document(cluster_config))
        merged = dict(cluster)
        if testsuite_config:
            merged.update(_load_document(testsuite_config))
        required = {
            "orchestrator": merged.get("orchestrator", "baremetal"),
            "node_dict": merged.get("node_dict"),
            "username": merged.get("username"),
            "priv_key_file": merged.get("priv_key_file"),
            "password": merged.get("password"),
            "head_node_dict": merged.get("head_node_dict", {}),
            "container": merged.get("container", {}),
        }
        for key in ("node_dict", "username", "priv_key_file"):
            if required[key] is None:
                raise ValueError(f"{key} must be provided in configuration")
        return cls(**required)


class OrchestratorFactory:
    """Builds the orchestrator named in the config."""

    @staticmethod
    def create_orchestrator(log: Any, config: Any, stop_on_errors: bool = False) -> Any:
        if not isinstance(config, OrchestratorConfig):
            raise TypeError("config must be OrchestratorConfig instance")
        orchestrator_type = config.orchestrator.lower()
        if orchestrator_type == "baremetal":
            return BaremetalOrchestrator(log, config, stop_on_errors)
        if orchestrator_type == "container":
            return ContainerOrchestrator(log, config, stop_on_errors)
        raise ValueError(f"Unsupported orchestrator type: {orchestrator_type}")

    @staticmethod
    def get_supported_backends() -> list[str]:
        return ["baremetal", "container"]
