"""cvs-core: the Rust core of AMD's Cluster Validation Suite transport and container layer.

Config resolution, container-lifetime decisions, command rendering and provisioning payloads
are implemented in Rust (``cvs_core._native``) and re-exported here.
"""

from __future__ import annotations

import os as _os

#: Absolute path of the packaged script run inside each freshly launched container when
#: ``container.setup_script`` is not set: it exits 0 when sshd is present, else installs
#: openssh-server with apt. Found relative to this file so wheel and editable installs agree.
DEFAULT_CONTAINER_SETUP_SCRIPT = _os.path.join(
    _os.path.dirname(_os.path.abspath(__file__)), "scripts", "default_container_setup.sh"
)

from ._native import (  # noqa: E402  (the constant above must exist before the core runs)
    CONTAINER_START_TIMEOUT_S,
    DEFAULT_CONTAINER_ARGS,
    DEFAULT_SSHD_PORT,
    INFINIBAND_EXPANSION,
    INFINIBAND_EXPANSION_GUARDED,
    MAX_INLINE_SETUP_SCRIPT_BYTES,
    STDIN_RUNNER,
    VALID_CONTAINER_LIFETIMES,
    Cluster,
    ClusterConfig,
    ConfigError,
    ContainerLifecycle,
    ContainerSpec,
    CvsError,
    HostReport,
    HostResult,
    InternalError,
    LifecycleReport,
    OutputGroup,
    Results,
    ScriptTooLargeError,
    SetupDecision,
    TransferError,
    UnresolvedPlaceholderError,
    cvs_docker_run_command,
    cvs_runtime_args,
    decide_setup,
    decide_teardown,
    default_container_name,
    docker_exec_command,
    docker_run_argv,
    docker_run_command,
    hosts_needing_sshd,
    image_exists_command,
    image_sha_status_command,
    is_running_command,
    load_config,
    load_image_command,
    parse_image_probe,
    parse_running_probe,
    placeholder_user,
    provision_command,
    provision_stdin_command,
    quote,
    remove_command,
    resolve_cluster_placeholders,
    resolve_container_lifetime,
    resolve_container_setup_script,
    sanitize_container_name,
    sshd_precheck_command,
    sshd_setup_commands,
    validate_container_name,
)

__all__ = [
    "CONTAINER_START_TIMEOUT_S",
    "DEFAULT_CONTAINER_ARGS",
    "DEFAULT_CONTAINER_SETUP_SCRIPT",
    "DEFAULT_SSHD_PORT",
    "INFINIBAND_EXPANSION",
    "INFINIBAND_EXPANSION_GUARDED",
    "MAX_INLINE_SETUP_SCRIPT_BYTES",
    "STDIN_RUNNER",
    "VALID_CONTAINER_LIFETIMES",
    "Cluster",
    "ClusterConfig",
    "ConfigError",
    "ContainerLifecycle",
    "ContainerSpec",
    "CvsError",
    "HostReport",
    "HostResult",
    "InternalError",
    "LifecycleReport",
    "OutputGroup",
    "Results",
    "ScriptTooLargeError",
    "SetupDecision",
    "TransferError",
    "UnresolvedPlaceholderError",
    "cvs_docker_run_command",
    "cvs_runtime_args",
    "decide_setup",
    "decide_teardown",
    "default_container_name",
    "docker_exec_command",
    "docker_run_argv",
    "docker_run_command",
    "hosts_needing_sshd",
    "image_exists_command",
    "image_sha_status_command",
    "is_running_command",
    "load_config",
    "load_image_command",
    "parse_image_probe",
    "parse_running_probe",
    "placeholder_user",
    "provision_command",
    "provision_stdin_command",
    "quote",
    "remove_command",
    "resolve_cluster_placeholders",
    "resolve_container_lifetime",
    "resolve_container_setup_script",
    "sanitize_container_name",
    "sshd_precheck_command",
    "sshd_setup_commands",
    "validate_container_name",
]

try:
    from importlib.metadata import version as _version

    __version__ = _version("cvs-core")
except Exception:  # not installed as a distribution (e.g. a bare source tree on sys.path)
    __version__ = "0.0.0"
