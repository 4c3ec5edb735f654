"""CVS's ``cvs.core.orchestrators.container``: one long-lived container per host.

The lifetime decisions (``no_launch`` / ``per_run`` / ``persistent``), the probe parsing, the
sshd and provisioning commands and the teardown rule come from the Rust core
(``cvs_core.decide_setup``, ``decide_teardown``, ``hosts_needing_sshd``, ``provision_command``,
``sshd_precheck_command``, ``sshd_setup_commands``); this module runs them through the runtime
and logs CVS's lines.

Seams kept from CVS (``shared/spec/cvs-test-seams.md``): ``RuntimeFactory``, ``getpass``,
``base64``, ``re``, ``DEFAULT_CONTAINER_ARGS`` and ``MAX_INLINE_SETUP_SCRIPT_BYTES`` are module
globals looked up per call; ``self.exec`` calls
``self.runtime.exec(self.container_id, cmd, hosts, timeout, detailed)`` positionally (callers
read ``call_args[0][1]``); ``setup_sshd`` does ``import time`` and calls ``time.sleep(2)``; the
setup script is read with the builtin ``open``. Where a CVS bug sits on a seam, the seam wins
and the bug stays (each is noted where it lives): ``_launch_containers`` writes into the
caller's ``runtime.args``; ``exec_on_head`` without a container runs in container ``None``;
``cleanup()`` removes the containers whatever the lifetime; an unknown lifetime launches and
removes like ``per_run``; the in-container hostfile ``rm`` uses ``sudo``, unchecked.

Fixed here where no seam is touched (contract §9): persistent setup refuses when a host that
answered the probe reports a failed probe (CVS fa4ca32e cold-started with ``docker rm -f``
everywhere, §9.12); ``setup_env`` runs every branch on the hosts (CVS ran the head-only branch
in the container, where it raised TypeError at fa4ca32e).
"""

from __future__ import annotations

import base64
import copy
import getpass
import os
import re
from collections.abc import Sequence
from typing import Any

import cvs_core

from ..runtimes.factory import RuntimeFactory
from .baremetal import BaremetalOrchestrator, _console_kw, _exit_code

DEFAULT_CONTAINER_ARGS: dict[str, Any] = copy.deepcopy(cvs_core.DEFAULT_CONTAINER_ARGS)
# The command line carrying a setup script travels through SSH and ``bash -c``.
MAX_INLINE_SETUP_SCRIPT_BYTES: int = cvs_core.MAX_INLINE_SETUP_SCRIPT_BYTES
# The in-container sshd port (CVS main d7ad7ad7); also mpirun's ``-p``.
DEFAULT_SSHD_PORT: int = cvs_core.DEFAULT_SSHD_PORT
SETUP_SCRIPT_TIMEOUT_S = 600
SSHD_STEP_TIMEOUT_S = 10
SSHD_SETTLE_S = 2
MPI_TIMEOUT_S = 600
NO_CONTAINERS = "No containers running. Call setup_containers() first."
# Which InfiniBand expansion ``docker run`` ends with: ``cvs`` (the default) is CVS's literal,
# which passes the unmatched glob to docker on hosts without /dev/infiniband devices, so docker
# refuses to start; ``guarded`` keeps only devices that exist.
ENV_INFINIBAND_EXPANSION = "CVS_CORE_INFINIBAND_EXPANSION"
_EXPANSIONS = {
    "cvs": cvs_core.INFINIBAND_EXPANSION,
    "guarded": cvs_core.INFINIBAND_EXPANSION_GUARDED,
}
_ECHO = "set -o pipefail; echo "


def sshd_port_listen_probe_cmd(port: int = DEFAULT_SSHD_PORT) -> str:
    """Shell that prints ``OK`` when something listens on TCP ``port``, else ``NO`` (CVS main):
    ``ss``, else ``netstat``, else bash's ``/dev/tcp``."""
    p = int(port)
    pattern = f"':{p}([^0-9]|$)'"
    return (
        f"if command -v ss >/dev/null 2>&1; then "
        f"ss -ltn 2>/dev/null | grep -qE {pattern} && echo OK || echo NO; "
        f"elif command -v netstat >/dev/null 2>&1; then "
        f"netstat -ltn 2>/dev/null | grep -qE {pattern} && echo OK || echo NO; "
        f"elif (exec 3<>/dev/tcp/127.0.0.1/{p}) 2>/dev/null; then echo OK; else echo NO; fi"
    )


def sshd_port_listen_ok(output: Any) -> bool:
    """Whether ``sshd_port_listen_probe_cmd`` output (a string or a detailed entry) says OK."""
    if isinstance(output, dict):
        output = output.get("output", "")
    lines = [line.strip() for line in str(output or "").splitlines() if line.strip()]
    return bool(lines) and lines[-1] == "OK"


def _probe_table(status: Any) -> dict[str, dict[str, Any]]:
    """A runtime probe result as the core reads it; an entry that is not a dict is no answer."""
    if not isinstance(status, dict):
        return {}
    return {h: v for h, v in status.items() if isinstance(h, str) and isinstance(v, dict)}


def _hosts_of(status: dict[str, dict[str, Any]]) -> list[str]:
    return list(status)


class ContainerOrchestrator(BaremetalOrchestrator):
    """Runs commands inside one container per host, started and kept per ``container.lifetime``."""

    def __init__(self, log: Any, config: Any, stop_on_errors: bool = False) -> None:
        super().__init__(log, config, stop_on_errors)
        self.orchestrator_type = "container"
        self.ssh_port = DEFAULT_SSHD_PORT
        self.container_config = config.get("container", {})
        if not self.container_config:
            raise ValueError(
                "ContainerOrchestrator requires 'container' config in OrchestratorConfig"
            )
        self.container_id: str | None = None
        runtime_name = (self.container_config.get("runtime") or {}).get("name") or "docker"
        self.runtime = RuntimeFactory.create(runtime_name, log, self)
        self.log.info(f"ContainerOrchestrator initialized with runtime: {runtime_name}")

    # -- configuration getters (defaults + config additions, new lists each call) ----------
    def _runtime_args(self) -> dict[str, Any]:
        return (self.container_config.get("runtime") or {}).get("args") or {}

    def _lifetime(self) -> str:
        return self.container_config.get("lifetime", "per_run")

    def get_volumes(self) -> list[str]:
        # CVS's defaults: the control host's user and /home/<user> (contract §9.15).
        user = getpass.getuser()
        defaults = [f"/home/{user}:/workspace", f"/home/{user}/.ssh:/host_ssh"]
        return defaults + list(self._runtime_args().get("volumes") or [])

    def _defaults_plus(self, default_key: str, args_key: str) -> list[str]:
        """CVS's default list for ``default_key`` with ``runtime.args[args_key]`` appended."""
        return list(DEFAULT_CONTAINER_ARGS[default_key]) + list(
            self._runtime_args().get(args_key) or []
        )

    def get_devices(self) -> list[str]:
        return self._defaults_plus("devices", "devices")

    def get_capabilities(self) -> list[str]:
        return self._defaults_plus("capabilities", "cap_add")

    def get_security_opts(self) -> list[str]:
        return self._defaults_plus("security_opts", "security_opt")

    def get_groups(self) -> list[str]:
        return self._defaults_plus("groups", "group_add")

    def get_ulimits(self) -> list[str]:
        return self._defaults_plus("ulimits", "ulimit")

    def get_environment(self) -> dict[str, Any]:
        # container.env, as CVS's code reads it (its docstring said runtime.args.env).
        env = dict(DEFAULT_CONTAINER_ARGS["environment"])
        env.update(self.container_config.get("env") or {})
        return env

    def get_network_mode(self) -> Any:
        return self._runtime_args().get("network", DEFAULT_CONTAINER_ARGS["network_mode"])

    def get_ipc_mode(self) -> Any:
        return self._runtime_args().get("ipc", DEFAULT_CONTAINER_ARGS["ipc_mode"])

    def is_privileged(self) -> Any:
        return self._runtime_args().get("privileged", DEFAULT_CONTAINER_ARGS["privileged"])

    @staticmethod
    def sanitize_container_name(image: str) -> str:
        # This module's ``re``, as CVS's (seams B19): a patch of it reaches the name.
        return re.sub(r"[^a-zA-Z0-9_]", "_", image)

    @staticmethod
    def get_container_name(container_config: dict[str, Any], image: str) -> str:
        """``container.name``, else ``<control user>_<sanitized image>``."""
        name = (container_config or {}).get("name")
        if name:
            return name
        return f"{getpass.getuser()}_{ContainerOrchestrator.sanitize_container_name(image)}"

    # -- lifecycle -------------------------------------------------------------------------
    def setup_containers(
        self,
        volumes: Sequence[str] | None = None,
        devices: Sequence[str] | None = None,
        capabilities: Sequence[str] | None = None,
        security_opts: Sequence[str] | None = None,
        environment: dict[str, Any] | None = None,
        groups: Sequence[str] | None = None,
        ulimits: Sequence[str] | None = None,
    ) -> bool:
        """Bring the containers to what ``container.lifetime`` asks for; True on success."""
        lifetime = self._lifetime()
        image = self.container_config.get("image")
        if not image:
            self.log.error("Container image not specified in config")
            return False
        container_name = self.get_container_name(self.container_config, image)
        launch = {
            "volumes": volumes,
            "devices": devices,
            "capabilities": capabilities,
            "security_opts": security_opts,
            "environment": environment,
            "groups": groups,
            "ulimits": ulimits,
        }
        # Any other value (config resolution rejects them; a hand-edited container_config does
        # not) takes the per_run path, as in CVS (seams O4).
        if lifetime == "no_launch":
            return self.verify_containers_running(container_name)
        if lifetime == "persistent":
            return self._setup_persistent(container_name, image, launch)
        return self._launch_containers(*launch.values())

    def _answered(self, raw: Any, status: dict[str, dict[str, Any]], what: str) -> list[str]:
        """The hosts CVS decides over: those present in the probe's results (a configured host
        missing from them is ignored, as CVS does, with a warning naming it). A host that is
        present but whose probe failed still refuses a persistent setup (cvs-core's fix), and so
        does an answer that is not a result at all (every configured host counts as failed)."""
        if not isinstance(raw, dict):
            return list(getattr(self, "hosts", None) or ())
        missing = [h for h in getattr(self, "hosts", None) or () if h not in status]
        if missing:
            self.log.warning(
                f"{what}: no result for configured hosts {missing}; deciding over the hosts "
                f"that answered {_hosts_of(status)}"
            )
        return _hosts_of(status)

    def _setup_persistent(self, container_name: str, image: str, launch: dict[str, Any]) -> bool:
        raw = self.runtime.is_running(container_name)
        status = _probe_table(raw)
        hosts = self._answered(raw, status, f"Persistent container '{container_name}' probe")
        if not hosts:
            # CVS: running nowhere, so a cold start.
            self.log.info("Persistent container not running on any host, launching...")
            return self._launch_containers(*launch.values())
        decision = cvs_core.decide_setup(
            "persistent", status, hosts=hosts, name=container_name, image=image
        )
        if decision.kind == "launch":
            self.log.info(decision.message)
            return self._launch_containers(*launch.values())
        if decision.kind == "need_image_status":
            self.container_id = container_name
            self.log.info(f"Attaching to running container '{container_name}'")
            return self._verify_persistent_image(container_name, image)
        # refuse_probe_failed / refuse_partial: acting could destroy a live overlay.
        self.log.error(decision.message)
        return False

    def _partition_by_status(self, status: Any) -> tuple[list[str], list[str], list[str]]:
        """``(running, absent, probe_failed)`` over the expected hosts (CVS main): a host the
        probe did not answer for, or whose probe failed, is probe_failed."""
        d = cvs_core.decide_setup("no_launch", _probe_table(status), hosts=self.hosts)
        return d.running_hosts, d.missing_hosts, d.failed_hosts

    def _verify_persistent_image(self, container_name: str, image: str) -> bool:
        """Attach only if every host's running image is known and the same (warn if the local
        tag moved on since: the overlay may be stale)."""
        raw = self.runtime.image_sha_status(container_name, image)
        images = _probe_table(raw)
        hosts = self._answered(raw, images, f"Image check of container '{container_name}'")
        if not hosts:
            return True  # CVS: nothing unreadable and no skew
        running = {h: {"running": True, "exit_code": 0, "name": container_name} for h in hosts}
        decision = cvs_core.decide_setup(
            "persistent", running, images, hosts=hosts, name=container_name, image=image
        )
        if decision.kind == "refuse_unreadable_sha":
            self.log.error(decision.message)
            return False
        if decision.kind == "refuse_image_skew":
            # CVS logs each host's stale-image warning before the skew error.
            for host in hosts:
                one = cvs_core.decide_setup(
                    "persistent",
                    {host: running[host]},
                    {host: images[host]},
                    name=container_name,
                    image=image,
                )
                for warning in one.warnings:
                    self.log.warning(warning)
            self.log.error(decision.message)
            return False
        for warning in decision.warnings:
            self.log.warning(warning)
        return decision.proceeds

    def _launch_containers(
        self,
        volumes: Sequence[str] | None = None,
        devices: Sequence[str] | None = None,
        capabilities: Sequence[str] | None = None,
        security_opts: Sequence[str] | None = None,
        environment: dict[str, Any] | None = None,
        groups: Sequence[str] | None = None,
        ulimits: Sequence[str] | None = None,
    ) -> bool:
        """Start fresh containers on every host, then run the setup script in them. CVS's
        call form: the seven launch arguments positionally; the name is derived here."""
        container_name = self.get_container_name(
            self.container_config, self.container_config.get("image")
        )
        # Set before launching (CVS): a per_run teardown then removes a half-started set.
        self.container_id = container_name
        volumes = self.get_volumes() if volumes is None else volumes
        devices = self.get_devices() if devices is None else devices
        capabilities = self.get_capabilities() if capabilities is None else capabilities
        security_opts = self.get_security_opts() if security_opts is None else security_opts
        environment = self.get_environment() if environment is None else environment
        groups = self.get_groups() if groups is None else groups
        ulimits = self.get_ulimits() if ulimits is None else ulimits

        # CVS's shallow copy (seams O6): ``runtime.args`` is the caller's dict, and network, ipc
        # and privileged are written into it, so ``self.container_config`` shows them afterwards.
        launch_config = self.container_config.copy()
        args = launch_config.setdefault("runtime", {}).setdefault("args", {})
        args["network"] = self.get_network_mode()
        args["ipc"] = self.get_ipc_mode()
        args["privileged"] = self.is_privileged()

        started = self.runtime.setup_containers(
            launch_config,
            container_name,
            volumes=volumes,
            devices=devices,
            capabilities=capabilities,
            security_opts=security_opts,
            environment=environment,
            groups=groups,
            ulimits=ulimits,
            device_expansion=self._device_expansion(),
        )
        if not started:
            return False
        return self._provision_container()

    def _device_expansion(self) -> str:
        choice = os.environ.get(ENV_INFINIBAND_EXPANSION, "").strip().lower() or "cvs"
        expansion = _EXPANSIONS.get(choice)
        if expansion is None:
            self.log.warning(
                f"{ENV_INFINIBAND_EXPANSION}={choice!r} is not one of {sorted(_EXPANSIONS)}; "
                "using CVS's InfiniBand expansion"
            )
            return _EXPANSIONS["cvs"]
        return expansion

    def _provision_container(self) -> bool:
        """Run ``container.setup_script`` in every freshly launched container."""
        script = self.container_config.get("setup_script")
        if not script:
            return True
        try:
            with open(script, "rb") as f:
                payload = f.read()
        except OSError as exc:
            self.log.error(f"Cannot read container setup_script '{script}': {exc}")
            return False
        if isinstance(payload, str):
            payload = payload.encode()
        label = f"container.setup_script '{script}'"
        # This module's constant, read now (seams B17): a caller may move the limit either way.
        limit = MAX_INLINE_SETUP_SCRIPT_BYTES
        try:
            cmd = cvs_core.provision_command(payload, label=label, limit=limit)
        except cvs_core.ScriptTooLargeError as exc:
            self.log.error(str(exc))
            return False
        cmd = _with_encoding(cmd, base64.b64encode(payload).decode())
        results = self.exec(cmd, timeout=SETUP_SCRIPT_TIMEOUT_S, detailed=True)
        failed = False
        for host, result in (results if isinstance(results, dict) else {}).items():
            code = _exit_code(result)
            if code == 0:
                continue
            failed = True  # keep going: every failing host is logged
            output = str(result.get("output") or "").strip() if isinstance(result, dict) else ""
            detail = f": {output}" if output else ""
            self.log.error(
                f"Container provisioning failed on {host} (setup_script: {script}, "
                f"exit_code: {code}){detail}"
            )
        if failed:
            return False
        self.log.info("Container provisioning succeeded on all hosts")
        return True

    def setup_sshd(self) -> bool:
        """Start sshd on ``ssh_port`` in the containers that do not run it yet."""
        if not self.container_id:
            raise RuntimeError(NO_CONTAINERS)
        # fa4ca32e runs the precheck on a single node too (seams O2; CVS main skips it).
        import time

        precheck_cmd = cvs_core.sshd_precheck_command(self.ssh_port)
        precheck = self.exec(precheck_cmd, timeout=SSHD_STEP_TIMEOUT_S, detailed=True)
        answers = precheck if isinstance(precheck, dict) else {}
        # CVS: the hosts of the precheck's results; one that is missing is named in a warning.
        answered = self._answered(precheck, answers, "SSH daemon precheck")
        needing = cvs_core.hosts_needing_sshd(
            {h: answers[h] if isinstance(answers.get(h), (dict, int)) else -1 for h in answered}
        )
        if not needing:
            self.log.info("SSH daemon already running on all hosts, skipping setup")
            return True
        for cmd in cvs_core.sshd_setup_commands(self.ssh_port):
            results = self.exec(cmd, hosts=needing, timeout=SSHD_STEP_TIMEOUT_S, detailed=True)
            results = results if isinstance(results, dict) else {}
            for host in results:  # CVS checks the items of each step's own result
                if _exit_code(results.get(host)) != 0:
                    self.log.error(f"SSH setup command failed on {host}: {cmd}")
                    return False
        time.sleep(SSHD_SETTLE_S)
        validation = self.exec(precheck_cmd, timeout=SSHD_STEP_TIMEOUT_S, detailed=True)
        validation = validation if isinstance(validation, dict) else {}
        for host in validation:
            if _exit_code(validation.get(host)) != 0:
                self.log.error(f"SSH daemon validation failed on {host}")
                return False
            self.log.info(f"SSH daemon started successfully on {host}")
        return True

    def verify_containers_running(self, container_name: str) -> bool:
        """True, and ``container_id`` set, when the container runs on every host."""
        raw = self.runtime.is_running(container_name)
        status = _probe_table(raw)
        hosts = self._answered(raw, status, f"Container '{container_name}' probe")
        if not hosts:
            self.container_id = container_name  # CVS: nothing failed
            return True
        decision = cvs_core.decide_setup("no_launch", status, hosts=hosts, name=container_name)
        if decision.kind == "verify_ok":
            self.log.info(f"Verified container '{container_name}' is running on all hosts")
            self.container_id = container_name
            return True
        # fa4ca32e's per-host reasons, then CVS main's partition, in one line: logs are grepped
        # for both wordings.
        self.log.error(
            f"{decision.message}; not running on all hosts: not running on "
            f"{decision.missing_hosts}, probe failed on {decision.failed_hosts}"
        )
        return False

    def teardown_containers(self) -> bool:
        """Remove the containers unless the lifetime keeps them (no_launch, persistent); any
        other value, even one config resolution would reject, removes them, as in CVS (O4)."""
        lifetime = self._lifetime()
        if lifetime in ("no_launch", "persistent"):
            self.log.debug(
                f"Container lifetime is '{lifetime}': leaving container "
                f"'{self.container_id}' in place"
            )
            return True
        self.log.info("Tearing down containers...")
        if not cvs_core.decide_teardown("per_run", self.container_id):
            return True
        self.log.info(f"Stopping containers: {self.container_id}")
        result = self.runtime.teardown_containers(self.container_id)
        self.container_id = None
        return result

    def cleanup(self, hosts: Sequence[str] | None) -> bool:
        """Remove the containers whatever the lifetime, as CVS does (seams O5): this removes a
        ``no_launch`` or ``persistent`` container too. ``teardown_containers()`` is the call
        that follows the lifetime."""
        self.log.info(f"Cleaning up on {len(hosts or ())} hosts")
        self._close_subset_handles()
        if not self.container_id:
            return True
        self.log.info(f"Stopping containers: {self.container_id}")
        result = self.runtime.teardown_containers(self.container_id)
        if result:
            self.container_id = None
        return result

    # -- commands in the container ---------------------------------------------------------
    def exec(
        self,
        cmd: str,
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        detailed: bool = False,
        print_console: bool = True,
    ) -> Any:
        """Run ``cmd`` in the containers on ``hosts`` (all when None)."""
        if not self.container_id:
            raise RuntimeError(NO_CONTAINERS)
        return self.runtime.exec(
            self.container_id, cmd, hosts, timeout, detailed, **_console_kw(print_console)
        )

    def exec_on_head(
        self,
        cmd: str,
        timeout: float | None = None,
        detailed: bool = False,
        print_console: bool = True,
    ) -> Any:
        # No container check, as CVS (seams O3): without a container the runtime is asked to
        # run in container None (docker answers "No such container").
        kwargs: dict[str, Any] = {"detailed": True} if detailed else {}
        kwargs.update(_console_kw(print_console))
        return self.runtime.exec_on_head(self.container_id, cmd, timeout, **kwargs)

    def exec_cmd_list(
        self, cmd_list: Sequence[str], timeout: float | None = None, print_console: bool = True
    ) -> Any:
        """``cmd_list[i]`` in the container on host ``i`` (CVS main)."""
        if not self.container_id:
            raise RuntimeError(NO_CONTAINERS)
        return self.runtime.exec_cmd_list(
            self.container_id, cmd_list, timeout=timeout, print_console=print_console
        )

    def setup_env(self, hosts: Sequence[str] | None, env_script: str | None = None) -> bool:
        # Every branch on the hosts, where the script path is (see the module docstring).
        return self._setup_env(
            hosts, env_script, lambda cmd, **kw: BaremetalOrchestrator.exec_on_head(self, cmd, **kw)
        )

    # -- MPI -------------------------------------------------------------------------------
    def distribute_using_mpi(
        self,
        rank_cmd: str,
        mpi_hosts: Sequence[str],
        ranks_per_host: int,
        env_vars: Any,
        mpi_install_dir: str,
        mpi_extra_args: Any = None,
        no_of_global_ranks: int | None = None,
    ) -> Any:
        full_cmd = self.build_mpi_cmd(
            rank_cmd,
            mpi_hosts,
            ranks_per_host,
            env_vars,
            mpi_install_dir,
            mpi_extra_args,
            no_of_global_ranks,
        )
        return self.exec_on_head(full_cmd, timeout=MPI_TIMEOUT_S)


def _with_encoding(cmd: str, encoded: str) -> str:
    """The core's provisioning command with CVS's base64 text (this module's ``base64``, seams
    B19) in place of the core's: the same for any real script; a patched encoder is honoured,
    and an empty script is ``echo  |`` as in CVS rather than the core's ``echo '' |``."""
    native = cmd[len(_ECHO) :].split(" | base64 -d | bash", 1)[0]
    if native == encoded:
        return cmd
    return cmd.replace(f"{_ECHO}{native} |", f"{_ECHO}{encoded} |", 1)
