"""CVS's ``cvs.core.runtimes.docker``: ``DockerRuntime`` and ``CONTAINER_START_TIMEOUT_S``.

Every host command goes through ``orchestrator.all.exec`` (``orchestrator.head.exec`` for the
head-only path), in CVS fa4ca32e's call forms and with no call beyond fa4ca32e's list
(``shared/spec/cvs-test-seams.md`` §8.3). The command strings are cvs_core's renderers
(``cvs_core.docker_exec_command``, ``is_running_command``, ``image_sha_status_command``,
``remove_command``, ``image_exists_command``, ``load_image_command``,
``cvs_docker_run_command``): with ordinary values they are CVS's strings byte for byte, and
every value is quoted once (CPython ``shlex.quote`` rules), so a volume with a space or an
environment value with ``$`` reaches docker as written instead of being split or expanded by
the host shell (CVS interpolated them unquoted). ``docker exec``'s command is quoted with this
module's ``shlex`` (seams B19).

The privilege prefix is fa4ca32e's literal ``sudo``. ``CVS_CORE_DOCKER_SUDO=probe`` asks
``orchestrator.sudo_prefix()`` instead (CVS main: ``sudo -n `` or nothing, probed once with one
extra ``all.exec``), ``none`` drops it (docker group). The probe is never made unasked: it would
consume an answer that code driving ``all.exec`` with a ``side_effect`` list meant for docker.

A host subset (``exec(hosts=[...])``) gets a new ``cvs.lib.parallel_ssh_lib.Pssh``, looked up
at call time, on every call, never closed, as in CVS (A3, R5); only when that class is
cvs-core's engine, unpatched, does it reuse a handle kept by the orchestrator instead of
opening (and leaking) connections on every call. ``hosts=[]`` runs on every host, as CVS's
truthiness test does. CVS main's ``registry_login``, ``pull_image`` and ``exec_cmd_list`` are
here too; the first two run only for a ``runtime.args.registry`` key, which fa4ca32e ignored.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from typing import Any

import cvs_core
from cvs_core.compat._engine import is_engine_class
from cvs_core.compat._results import console_kw as _console_kw
from cvs_core.compat._results import failed_hosts as _failed

# A cold node pulls a multi-GB image inside ``docker run`` (fa4ca32e; main went to 120 s plus
# an explicit pull).
CONTAINER_START_TIMEOUT_S = 900

#: CVS's InfiniBand device expansion, skipping the glob when no device matches it.
GUARDED_INFINIBAND_EXPANSION = cvs_core.INFINIBAND_EXPANSION_GUARDED
PROBE_TIMEOUT_S = 30
LOAD_TIMEOUT_S = 600

SETUP_LOAD_TIMEOUT_S = 300
PULL_TIMEOUT_S = 600
LOGIN_TIMEOUT_S = 30


ENV_DOCKER_SUDO = "CVS_CORE_DOCKER_SUDO"
_SUDO_MODES = ("sudo", "probe", "none")


def _all_ok(results: Any) -> bool:
    # CVS's all() over the exit codes: an empty result is success (seams R2).
    return isinstance(results, dict) and not _failed(results)


def _q(value: Any) -> str:
    return cvs_core.quote(str(value))


def _prefix_text(prefix: str) -> str:
    words = prefix.split()
    return " ".join(_q(w) for w in words) + " " if words else ""


class DockerRuntime:
    """Docker on every host, driven through the orchestrator's SSH handles."""

    def __init__(self, log: Any, orchestrator: Any) -> None:
        self.log = log
        self.orchestrator = orchestrator

    # -- helpers ---------------------------------------------------------------------------
    def _prefix(self) -> str:
        mode = os.environ.get(ENV_DOCKER_SUDO, "").strip().lower() or "sudo"
        if mode == "none":
            return ""
        if mode != "probe":
            if mode != "sudo":
                self.log.warning(
                    f"{ENV_DOCKER_SUDO}={mode!r} is not one of {list(_SUDO_MODES)}; using 'sudo'"
                )
            return "sudo"
        probe = getattr(self.orchestrator, "sudo_prefix", None)
        if callable(probe):
            try:
                prefix = probe()
            except Exception as exc:
                self.log.debug(f"sudo_prefix() failed, using 'sudo': {exc}")
                prefix = None
            if isinstance(prefix, str):
                return prefix
        return "sudo"

    def _wrap(self, container_name: Any, cmd: str, prefix: str) -> str:
        """``<prefix> docker exec <name> bash -c <shlex.quote(cmd)>``; the name is CVS's
        f-string text (``None`` without a container)."""
        wrapped = cvs_core.docker_exec_command(str(container_name), cmd, prefix=prefix)
        quoted = shlex.quote(cmd)  # this module's shlex, looked up now
        native = cvs_core.quote(cmd)
        if quoted != native:  # a patched shlex: what it returned, in CVS's place
            wrapped = wrapped[: len(wrapped) - len(native)] + quoted
        return wrapped

    def _exec_subset(
        self,
        exec_cmd: str,
        hosts: Sequence[str],
        timeout: float | None,
        detailed: bool,
        print_console: Any,
    ) -> Any:
        # Imported here, as CVS does: a patch of parallel_ssh_lib.Pssh reaches this path only.
        from cvs_core.compat import parallel_ssh_lib
        from cvs_core.compat.orchestrators import baremetal

        orch = self.orchestrator
        cls = parallel_ssh_lib.Pssh
        kw = _console_kw(print_console)
        engine = is_engine_class(cls, baremetal._ENGINE_PSSH)
        if engine and issubclass(type(orch), baremetal.BaremetalOrchestrator):
            # getattr: an orchestrator built with __init__ replaced may lack either.
            handle = getattr(orch, "all", None)
            every_host = set(hosts) == set(getattr(orch, "hosts", None) or ())
            if not (every_host and issubclass(type(handle), baremetal._ENGINE_PSSH)):
                handle = orch._kept_subset_handle(hosts)
            return handle.exec(exec_cmd, timeout=timeout, detailed=detailed, **kw)
        handle = cls(
            orch.log,
            hosts,
            user=orch.user,
            password=orch.password,
            pkey=orch.pkey,
            host_key_check=False,
            stop_on_errors=orch.stop_on_errors,
        )
        if not engine:
            # CVS fa4ca32e: never destroyed. Whoever replaced the class sees only calls.
            return handle.exec(exec_cmd, timeout=timeout, detailed=detailed, **kw)
        try:  # an engine handle without an orchestrator to keep it: close its connections
            return handle.exec(exec_cmd, timeout=timeout, detailed=detailed, **kw)
        finally:
            try:
                handle.destroy_clients()
            except Exception as exc:
                self.log.debug(f"destroy_clients failed: {exc}")

    # -- images ----------------------------------------------------------------------------
    def check_image_exists(self, image: str) -> bool:
        """True when every host has ``image`` as ``repository:tag`` (untagged never matches)."""
        cmd = cvs_core.image_exists_command(image, prefix=self._prefix())
        results = self.orchestrator.all.exec(cmd, timeout=PROBE_TIMEOUT_S, detailed=True)
        return _all_ok(results)

    def load_image(self, tar_path: str, timeout: float | None = None) -> Any:
        if timeout is None:
            timeout = LOAD_TIMEOUT_S
        cmd = cvs_core.load_image_command(tar_path, prefix=self._prefix())
        return self.orchestrator.all.exec(cmd, timeout=timeout, detailed=True)

    def pull_image(self, image: str, timeout: float | None = None) -> Any:
        """``docker pull`` on every host (CVS main), with the orchestrator's privilege prefix."""
        if timeout is None:
            timeout = PULL_TIMEOUT_S
        cmd = f"{_prefix_text(self._prefix())}docker pull {_q(image)}"
        return self.orchestrator.all.exec(cmd, timeout=timeout, detailed=True)

    def registry_login(self, registry: Any) -> bool:
        """``docker login`` on every host from ``runtime.args.registry`` (CVS main)."""
        cfg = registry if isinstance(registry, dict) else {}
        username, password_file = cfg.get("username"), cfg.get("password_file")
        if not username or not password_file:
            self.log.error("registry_login requires 'username' and 'password_file'")
            return False
        server = cfg.get("server") or cfg.get("url") or cfg.get("registry") or ""
        login = ["docker", "login"] + ([_q(server)] if server else [])
        inner = (
            f"cat {_q(password_file)} | {' '.join(login)} --username {_q(username)} "
            "--password-stdin"
        )
        # sh -c so the privilege prefix covers the whole pipeline (docker reads the password).
        cmd = f"{_prefix_text(self._prefix())}sh -c {_q(inner)}"
        results = self.orchestrator.all.exec(
            cmd, timeout=LOGIN_TIMEOUT_S, detailed=True, print_console=False
        )
        failed = _failed(results)
        if failed:
            self.log.error(f"docker login failed on hosts: {failed}")
            return False
        return True

    # -- lifecycle -------------------------------------------------------------------------
    def setup_containers(
        self,
        container_config: dict[str, Any],
        container_name: str,
        volumes: Sequence[str] | None = None,
        devices: Sequence[str] | None = None,
        capabilities: Sequence[str] | None = None,
        security_opts: Sequence[str] | None = None,
        environment: dict[str, Any] | None = None,
        groups: Sequence[str] | None = None,
        ulimits: Sequence[str] | None = None,
        device_expansion: str | None = None,
    ) -> bool:
        """Start ``container_name`` from the configured image on every host (replacing any
        container of that name); False, with the failing hosts logged, otherwise."""
        if not container_config or not container_config.get("image"):
            self.log.warning("No container config or image specified, skipping container start")
            return False
        image = container_config["image"]
        try:
            cvs_core.validate_container_name(container_name)
        except ValueError as exc:
            self.log.error(f"Cannot start container: {exc}")
            return False
        if image.startswith("-") or any(c.isspace() for c in image):
            self.log.error(f"Cannot start container: invalid image {image!r}")
            return False

        runtime = container_config.get("runtime") or {}
        runtime_args = dict(runtime.get("args") or {})  # a copy: the caller's config is not ours
        if volumes is None:
            volumes = container_config.get("volumes") or []
        if environment is None:
            environment = container_config.get("env") or {}
        for key, value in (
            ("devices", devices),
            ("cap_add", capabilities),
            ("security_opt", security_opts),
            ("group_add", groups),
            ("ulimit", ulimits),
        ):
            if value is not None:
                runtime_args[key] = value
        runtime_args.pop("volumes", None)  # already in ``volumes``: no duplicate -v flags

        if device_expansion and device_expansion not in (
            cvs_core.INFINIBAND_EXPANSION,
            cvs_core.INFINIBAND_EXPANSION_GUARDED,
        ):
            self.log.error("Cannot start container: unknown device_expansion shell code")
            return False

        registry = runtime_args.get("registry")
        if "image_tar" in container_config:  # the key, as CVS tests it, not its value
            if not self.check_image_exists(image):
                failed = _failed(
                    self.load_image(container_config["image_tar"], timeout=SETUP_LOAD_TIMEOUT_S)
                )
                if failed:
                    self.log.error(f"Failed to load image tar on hosts: {failed}")
                    return False
            else:
                self.log.info(f"Image {image} already present on all hosts, skipping tar load")
        elif registry:
            if not self.registry_login(registry):
                return False
            if not self.check_image_exists(image):
                failed = _failed(self.pull_image(image))
                if failed:
                    self.log.error(f"Failed to pull image on hosts: {failed}")
                    return False

        prefix = self._prefix()
        self.orchestrator.all.exec(
            cvs_core.remove_command(container_name, prefix=prefix), timeout=30, print_console=False
        )
        # CVS's assembly and flag order, rendered by the core (every value quoted once; the
        # InfiniBand expansion as the orchestrator chose it).
        run_cmd = cvs_core.cvs_docker_run_command(
            container_name,
            image,
            prefix=prefix,
            volumes=list(volumes),
            environment=environment,
            runtime_args=runtime_args,
            device_expansion=device_expansion or None,
        )
        results = self.orchestrator.all.exec(
            run_cmd, timeout=CONTAINER_START_TIMEOUT_S, detailed=True
        )
        failed = _failed(results)
        if failed:
            self.log.error(f"Container startup failed on hosts: {failed}")
            self.teardown_containers(container_name)
            return False
        self.log.info(f"Containers started successfully: {container_name}")
        return True

    def teardown_containers(self, container_name: str) -> bool:
        if not container_name:
            self.log.info("No container to stop")
            return True
        cmd = cvs_core.remove_command(container_name, prefix=self._prefix(), quiet=True)
        results = self.orchestrator.all.exec(
            cmd, timeout=PROBE_TIMEOUT_S, print_console=False, detailed=True
        )
        if _failed(results):
            self.log.warning("Container stop had issues on some hosts")
            return False
        return True

    # -- probes ----------------------------------------------------------------------------
    def is_running(self, container_name: str) -> dict[str, dict[str, Any]]:
        """``{host: {'exit_code', 'running', 'name'}}``: running means the probe succeeded
        and printed exactly the name."""
        cmd = cvs_core.is_running_command(container_name, prefix=self._prefix())
        # CVS writes this filter unquoted; the core quotes it. A name that passed the core's
        # validation is all [a-zA-Z0-9_.-], which the shell reads the same either way, so keep
        # CVS's text (users grep logs for it).
        cmd = cmd.replace(f"'name=^{container_name}$'", f"name=^{container_name}$")
        results = self.orchestrator.all.exec(cmd, timeout=PROBE_TIMEOUT_S, detailed=True)
        return cvs_core.parse_running_probe(
            container_name, results if isinstance(results, dict) else {}
        )

    def image_sha_status(self, container_name: str, image_name: str) -> dict[str, dict[str, str]]:
        """``{host: {'container_sha', 'image_sha'}}``, ``''`` where unreadable."""
        cmd = cvs_core.image_sha_status_command(container_name, image_name, prefix=self._prefix())
        results = self.orchestrator.all.exec(cmd, timeout=PROBE_TIMEOUT_S, detailed=True)
        return cvs_core.parse_image_probe(results if isinstance(results, dict) else {})

    # -- commands --------------------------------------------------------------------------
    def exec(
        self,
        container_name: str,
        cmd: str,
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        detailed: bool = False,
        print_console: bool = True,
    ) -> Any:
        """Run ``cmd`` in the container's shell (``docker exec <n> bash -c <cmd>``) on ``hosts``,
        every host when ``hosts`` is falsy (``None`` or ``[]``, CVS's truthiness test)."""
        exec_cmd = self._wrap(container_name, cmd, self._prefix())
        if hosts:
            return self._exec_subset(exec_cmd, hosts, timeout, detailed, print_console)
        return self.orchestrator.all.exec(
            exec_cmd, timeout=timeout, detailed=detailed, **_console_kw(print_console)
        )

    def exec_on_head(
        self,
        container_name: str,
        cmd: str,
        timeout: float | None = None,
        detailed: bool = False,
        print_console: bool = True,
    ) -> Any:
        exec_cmd = self._wrap(container_name, cmd, self._prefix())
        kwargs: dict[str, Any] = {"detailed": True} if detailed else {}
        kwargs.update(_console_kw(print_console))
        return self.orchestrator.head.exec(exec_cmd, timeout=timeout, **kwargs)

    def exec_cmd_list(
        self,
        container_name: str,
        cmd_list: Sequence[str],
        timeout: float | None = None,
        print_console: bool = True,
    ) -> Any:
        """``cmd_list[i]`` in the container on host ``i`` (CVS main); ``{host: str}``."""
        prefix = self._prefix()
        wrapped = [self._wrap(container_name, c, prefix) for c in cmd_list]
        return self.orchestrator.all.exec_cmd_list(
            wrapped, timeout=timeout, print_console=print_console
        )

    @staticmethod
    def _build_runtime_args(runtime_args: dict[str, Any] | None) -> list[Any]:
        """``runtime.args`` as CVS's list of docker argument words, in CVS's order; unknown
        keys are ignored. Kept with CVS's ``env`` bug (seams R4): the loop unpacks the dict's
        keys as ``(k, v)`` pairs, so a 2-character key becomes ``-e K=V`` from its two
        characters and any other key raises ValueError. ``setup_containers`` does not use this
        list: the core renders ``docker run``, with ``env`` as written."""
        d = runtime_args or {}
        args: list[Any] = []
        for volume in d.get("volumes") or []:
            args.extend(["-v", volume])
        for device in d.get("devices") or []:
            args.extend(["--device", device])
        for key, value in d.get("env") or {}:
            args.extend(["-e", f"{key}={value}"])
        for cap in d.get("cap_add") or []:
            args.extend(["--cap-add", cap])
        for opt in d.get("security_opt") or []:
            args.extend(["--security-opt", opt])
        for group in d.get("group_add") or []:
            args.extend(["--group-add", group])
        if d.get("network"):
            args.extend(["--network", d["network"]])
        if d.get("ipc"):
            args.extend(["--ipc", d["ipc"]])
        for limit in d.get("ulimit") or []:
            args.extend(["--ulimit", limit])
        if d.get("privileged"):
            args.append("--privileged")
        return args
