"""CVS's ``cvs.lib.parallel.pssh``: ``Pssh``, on the cvs_core fan-out engine.

Same surface, result strings and log lines as CVS (contract §1, §2.3, §7.2), but every host's
command runs through one ``cvs_core.Cluster`` (one OpenSSH master per host, kept across calls,
GIL released while waiting): no parallel-ssh, no gevent, no process pool.

Mapping decisions (details at each place in the code):

- Per-host statuses become parallel-ssh-like exceptions stored on the host's output item:
  ``unreachable`` -> ``ConnectionError``, ``auth_failed`` -> ``AuthenticationError``,
  ``host_key_mismatch`` -> ``HostKeyError`` (a ``ConnectionError``), ``timeout`` and
  ``inactivity_timeout`` -> ``Timeout`` (text, then ``ABORT: Timeout Error in Host: <h>``,
  exit -1), ``error``/``cancelled`` -> ``SessionError``. ``exit_nonzero`` and ``signal`` are
  command outcomes (no exception; a signal's exit code is -1).
- ``stop_on_errors=True`` raises the first host's exception (transport errors first, as
  parallel-ssh raised them before any output was read), with no partial results.
  ``stop_on_errors=False`` prunes hosts that fail a short re-probe and reports them as
  ``ABORT: Host Unreachable Error`` on this and every later call.
- Host keys: CVS never checked them. Here known keys ARE checked and unknown hosts are learned
  (``accept-new``), so CVS users keep working on first contact. Environment overrides:
  ``CVS_CORE_HOST_KEY_POLICY`` (strict|accept-new|off), ``CVS_CORE_KNOWN_HOSTS`` (a
  known_hosts path), ``CVS_CORE_SSH_CONFIG`` (an ssh_config path). The same names are accepted
  as ``**ssh_client_kwargs`` (``host_key_policy=``, ``known_hosts=``, ``ssh_config=``).
  ``host_key_check`` is stored and ignored, as in CVS.
- ``pkey`` is resolved like parallel-ssh (``~`` expanded, relative to the working directory,
  ``PKeyFileError`` when missing); a bare name not found there is looked up as
  ``~/.ssh/<name>``; the untouched default ``'id_rsa'`` falls back to OpenSSH's own identities
  (ssh_config, agent) instead of failing. Passwords are refused (``cvs_core.CvsError``): the
  engine runs OpenSSH in batch mode.
- ``**ssh_client_kwargs``: ``port``, ``timeout`` (connect timeout), ``pool_size`` (max
  parallel hosts) and ``proxy_host``/``proxy_user``/``proxy_port`` (jump host) are mapped; the
  rest (``num_retries``, ``retry_delay``, ``keepalive_seconds``, ...) are ignored with a DEBUG
  log.

CVS bugs fixed here (contract §9): one host's timeout never marks other hosts as timed out; a
timed-out host's stderr is kept; no ~30 KB command cap; the key path is never logged at INFO;
sessions never leak (a rebuilt, probed or destroyed client closes its connections, deferred
until calls still running on it finish); ``exec_cmd_list`` and ``upload_file_list`` work after
pruning and on host subsets; one ``Pssh`` is safe to use from several threads.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shlex
import shutil
import tarfile
import tempfile
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from cvs_core import Cluster

from .exceptions import (
    AuthenticationError,
    ConnectionError,
    HostArgumentError,
    HostKeyError,
    PKeyFileError,
    SessionError,
    SFTPIOError,
    Timeout,
)

__all__ = [
    "ENV_HOST_KEY_POLICY",
    "ENV_KNOWN_HOSTS",
    "ENV_SSH_CONFIG",
    "AuthenticationError",
    "ConnectionError",
    "HostOutput",
    "ParallelSSHClient",
    "Pssh",
    "SessionError",
    "Timeout",
    "build_env_prefix",
]

#: Environment variables read when a client is built (see the module docstring).
ENV_HOST_KEY_POLICY = "CVS_CORE_HOST_KEY_POLICY"
ENV_KNOWN_HOSTS = "CVS_CORE_KNOWN_HOSTS"
ENV_SSH_CONFIG = "CVS_CORE_SSH_CONFIG"
DEFAULT_HOST_KEY_POLICY = "accept-new"

DEFAULT_PKEY = "id_rsa"
BANNER = "#" + "-" * 58 + "#"
TIMEOUT_ABORT = "\nABORT: Timeout Error in Host: {host}"
UNREACHABLE_ABORT = "\nABORT: Host Unreachable Error"
#: check_connectivity's probe, as CVS: connect 2 s, read 2 s, no retries.
PROBE_TIMEOUT_S = 2
#: reboot_connections does not wait for output (as CVS); this bounds the background call.
REBOOT_TIMEOUT_S = 60


def _log() -> logging.Logger:
    # CVS's globals.log is the root logger; log-grep tooling reads these lines there.
    return logging.getLogger()


# -- env prefix (cvs/lib/env_lib.py::build_env_prefix, contract §1.5) ---------------------------


def build_env_prefix(env_vars: Mapping[str, Any] | None) -> str:
    """``export K=...`` statements joined with ``" ; "``; ``""`` when there are none.

    ``"<p>:$K"`` prepends to ``$K`` and ``"$K:<s>"`` appends; anything else is exported quoted,
    so ``$OTHER``, ``$(...)`` and ``${...}`` stay literal. Fixed: CVS called ``.endswith`` before
    ``str()``, so a non-string value (an int from JSON) raised ``AttributeError``; it is
    exported as its ``str()`` here.
    """
    if not env_vars:
        return ""
    parts = []
    for key, value in env_vars.items():
        text = value if isinstance(value, str) else str(value)
        own = f"${key}"
        if text.endswith(f":{own}"):
            head = text[: -len(own) - 1]
            parts.append(f"export {key}={shlex.quote(head)}:{own}")
        elif text.startswith(f"{own}:"):
            tail = text[len(own) + 1 :]
            parts.append(f"export {key}={own}:{shlex.quote(tail)}")
        else:
            parts.append(f"export {key}={shlex.quote(text)}")
    return " ; ".join(parts)


# -- output items ----------------------------------------------------------------------------


class HostOutput:
    """One host's output, shaped like parallel-ssh's ``HostOutput`` (the seam
    ``_process_output`` and the pruning methods read): ``host``, ``stdout`` and ``stderr``
    (lists of lines without their end-of-line), ``exit_code`` (None when unknown) and
    ``exception``. ``status`` and ``result`` keep the engine's view (None when built by hand).
    """

    __slots__ = ("exception", "exit_code", "host", "result", "status", "stderr", "stdout")

    def __init__(
        self,
        host: str,
        stdout: Sequence[str] = (),
        stderr: Sequence[str] = (),
        exit_code: int | None = None,
        exception: BaseException | None = None,
        status: str | None = None,
        result: Any = None,
    ) -> None:
        self.host = host
        self.stdout = list(stdout)
        self.stderr = list(stderr)
        self.exit_code = exit_code
        self.exception = exception
        self.status = status
        self.result = result

    @classmethod
    def from_result(cls, result: Any) -> HostOutput:
        exc = exception_for(result)
        return cls(
            result.host,
            split_lines(result.stdout),
            split_lines(result.stderr),
            None if exc is not None else result.exit_code,
            exc,
            result.status,
            result,
        )

    def __repr__(self) -> str:
        return (
            f"HostOutput(host={self.host!r}, exit_code={self.exit_code!r}, "
            f"exception={self.exception!r})"
        )


def split_lines(text: str) -> list[str]:
    """Lines as parallel-ssh yields them: split on ``\\n`` or ``\\r\\n`` (a lone ``\\r``, as in
    progress bars, stays in the line), no empty last line for a trailing newline."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


_COMMAND_OUTCOMES = frozenset({"ok", "exit_nonzero", "signal"})


def exception_for(result: Any) -> BaseException | None:
    """The parallel-ssh-like exception for a failed host (None for a command outcome)."""
    status = result.status
    if status in _COMMAND_OUTCOMES:
        return None
    host = result.host
    detail = result.error or status
    exc: BaseException
    if status == "unreachable":
        exc = ConnectionError(f"Error connecting to host '{host}' - {detail}")
    elif status == "auth_failed":
        exc = AuthenticationError(
            f"Authentication error while connecting to host '{host}' - {detail}"
        )
    elif status == "host_key_mismatch":
        exc = HostKeyError(f"Host key verification failed for host '{host}' - {detail}")
    elif status in ("timeout", "inactivity_timeout"):
        exc = Timeout(detail)
    else:
        exc = SessionError(f"SSH session error on host '{host}' - {detail}")
    exc.host = host  # type: ignore[attr-defined]
    return exc


def _raise_first_error(output: Sequence[HostOutput]) -> None:
    """stop_on_errors=True: parallel-ssh raised connection and authentication errors out of
    run_command before any output was read, and CVS re-raised a Timeout met while reading."""
    for kinds in ((ConnectionError, AuthenticationError), (BaseException,)):
        for item in output:
            if item.exception is not None and isinstance(item.exception, kinds):
                raise item.exception


# -- the client factory ----------------------------------------------------------------------


def resolve_pkey(pkey: str | os.PathLike[str]) -> str:
    """A private key path as parallel-ssh resolves it (``~`` expanded, relative to the working
    directory), else ``~/.ssh/<name>`` for a bare name; ``PKeyFileError`` when neither exists."""
    if not isinstance(pkey, (str, os.PathLike)):
        raise PKeyFileError(
            "in-memory private keys are not supported by cvs_core; pass a key file path"
        )
    raw = os.fspath(pkey)
    path = os.path.normpath(os.path.expanduser(raw))
    if os.path.exists(path):
        return os.path.abspath(path)
    if os.sep not in raw:
        in_ssh_dir = os.path.join(os.path.expanduser("~"), ".ssh", raw)
        if os.path.exists(in_ssh_dir):
            return in_ssh_dir
    raise PKeyFileError(
        f"File {path} does not exist. Please use either absolute or relative to user directory "
        "paths like '~/.ssh/my_key' for pkey parameter"
    )


class ParallelSSHClient:
    """A parallel-ssh-shaped constructor over one ``cvs_core.Cluster``.

    ``Pssh`` builds its client through this module-level name, looked up at call time, so a
    test patching ``cvs.lib.parallel.pssh.ParallelSSHClient`` counts constructions as with
    CVS (1 at init, +1 per prune rebuild, +1 per connectivity probe). It is not parallel-ssh's
    client: it has no ``run_command``; its methods mirror ``cvs_core.Cluster`` and return
    lists of ``cvs_core.HostResult``.

    ``close()`` is deferred while calls are running on the client (``_enter``/``_leave``), so a
    prune in one thread never kills another thread's commands, and nothing leaks.
    """

    def __init__(
        self,
        hosts: Sequence[str],
        user: str | None = None,
        password: str | None = None,
        port: int | None = None,
        pkey: str | os.PathLike[str] | None = None,
        num_retries: int | None = None,
        timeout: float | None = None,
        pool_size: int | None = None,
        *,
        proxy_host: str | None = None,
        proxy_port: int | None = None,
        proxy_user: str | None = None,
        ssh_config: str | os.PathLike[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        host_key_policy: str | None = None,
        idle_timeout: float | None = None,
        **ignored: Any,
    ) -> None:
        # parallel-ssh accepts a host twice; the engine does not (and CVS's dicts collapse it).
        self.hosts = list(dict.fromkeys(hosts))
        self.user = user
        self.port = port
        self.pkey = resolve_pkey(pkey) if pkey is not None else None
        if num_retries is not None:
            # OpenSSH connects once per call; a failed host is retried by the next call.
            ignored["num_retries"] = num_retries
        if ignored:
            _log().debug("cvs_core compat: ignoring ssh client options %s", sorted(ignored))
        jump = None
        if proxy_host:
            jump = f"{proxy_user}@{proxy_host}" if proxy_user else proxy_host
            if proxy_port and int(proxy_port) != 22:
                jump = f"{jump}:{int(proxy_port)}"
        options: dict[str, Any] = {
            "port": int(port) if port is not None else None,
            "ssh_config": ssh_config or os.environ.get(ENV_SSH_CONFIG) or None,
            "known_hosts": known_hosts or os.environ.get(ENV_KNOWN_HOSTS) or None,
            "host_key_policy": host_key_policy
            or os.environ.get(ENV_HOST_KEY_POLICY)
            or DEFAULT_HOST_KEY_POLICY,
            "jump_host": jump,
            # parallel-ssh's `timeout` is its connect/session timeout (None: 10 s here).
            "connect_timeout": float(timeout) if timeout else 10.0,
            "max_parallel": int(pool_size) if pool_size else None,
            "password": password,
        }
        if idle_timeout is not None:
            options["idle_timeout"] = float(idle_timeout)
        self._lock = threading.Lock()
        self._inflight = 0
        self._closing = False
        self._closed = False
        # Module-level name looked up at call time: the unit tests' engine seam.
        self._cluster = Cluster(self.hosts, user, self.pkey, **options) if self.hosts else None

    # -- lifetime --------------------------------------------------------------------------
    def _enter(self) -> None:
        with self._lock:
            self._inflight += 1

    def _leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            now = self._closing and self._inflight == 0 and not self._closed
            if now:
                self._closed = True
        if now:
            self._shutdown()

    def close(self) -> None:
        """End every connection, now or when the last running call finishes."""
        with self._lock:
            self._closing = True
            now = self._inflight == 0 and not self._closed
            if now:
                self._closed = True
        if now:
            self._shutdown()

    disconnect = close

    def _shutdown(self) -> None:
        if self._cluster is not None:
            self._cluster.close()

    def master_pids(self) -> list[int]:
        return self._cluster.master_pids() if self._cluster is not None else []

    # -- calls (cvs_core.Cluster's, returning lists) ----------------------------------------
    def exec(
        self,
        cmd: str,
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        inactivity_timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> list[Any]:
        if self._cluster is None or (hosts is not None and not hosts):
            return []
        return list(
            self._cluster.exec(
                cmd,
                hosts=None if hosts is None else list(hosts),
                timeout=timeout,
                inactivity_timeout=inactivity_timeout,
                stdin=stdin,
            )
        )

    def exec_per_host(
        self,
        commands: Mapping[str, str],
        timeout: float | None = None,
        inactivity_timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> list[Any]:
        if self._cluster is None or not commands:
            return []
        return list(
            self._cluster.exec_per_host(
                dict(commands),
                timeout=timeout,
                inactivity_timeout=inactivity_timeout,
                stdin=stdin,
            )
        )

    def upload_per_host(self, files: Mapping[str, tuple[str, str]]) -> list[Any]:
        if self._cluster is None or not files:
            return []
        return list(self._cluster.upload_per_host(dict(files)))

    def download(
        self, remote: str, local_dir: str, hosts: Sequence[str] | None = None
    ) -> tuple[dict[str, str], list[Any]]:
        """``({host: local_dir/host/basename}, [failed HostResult, ...])``."""
        if self._cluster is None or (hosts is not None and not hosts):
            return {}, []
        try:
            paths = self._cluster.download(
                remote, local_dir, hosts=None if hosts is None else list(hosts), check=True
            )
        except Exception as exc:
            results = getattr(exc, "results", None)
            if results is None:
                raise
            return dict(exc.paths), [r for r in results if r.status != "ok"]
        return dict(paths), []


# -- Pssh ------------------------------------------------------------------------------------


def _tabs(text: str) -> str:
    return text.replace("\t", "   ")


def _remote_parent(path: str) -> str | None:
    # parallel-ssh's _remote_paths_split: the directory part, when there is one.
    sep = path.rfind("/")
    return path[:sep] if sep > 0 else None


def _quote(text: str) -> str:
    return shlex.quote(text)


class Pssh:
    """Run commands on many hosts in parallel (CVS's single-process ``Pssh``).

    ``exec`` returns ``{host: str}`` or, with ``detailed=True``,
    ``{host: {'output': str, 'exit_code': int}}``; ``-1`` means unknown or aborted.
    """

    def __init__(
        self,
        log: Any,
        host_list: Sequence[str],
        user: str | None = None,
        password: str | None = None,
        pkey: str = DEFAULT_PKEY,
        host_key_check: bool = False,
        stop_on_errors: bool = True,
        env_vars: Mapping[str, Any] | None = None,
        process_output: bool = True,
        **ssh_client_kwargs: Any,
    ) -> None:
        if log is not None:
            warnings.warn(
                "Pssh's 'log' argument is deprecated and ignored: output is logged through the "
                "root logger (globals.log)",
                DeprecationWarning,
                stacklevel=2,
            )
        self.log = _log()
        # Snapshot and working copy: the caller's list is never mutated (CVS regression B2).
        self.host_list = list(host_list)
        self.reachable_hosts = list(host_list)
        self.user = user
        self.pkey = pkey
        self.password = password
        self.host_key_check = host_key_check  # stored, never used (as in CVS)
        self.stop_on_errors = stop_on_errors
        self.process_output = process_output
        self.unreachable_hosts: list[str] = []
        self.ssh_client_kwargs = dict(ssh_client_kwargs)
        self.env_prefix = build_env_prefix(env_vars)
        self._lock = threading.RLock()
        if password is None:
            self.log.info(f"Connecting to hosts {self.host_list} as user {user}")
            # CVS logged the key path at INFO (contract §9.8): DEBUG at most.
            self.log.debug(f"Using private key {pkey}")
        else:
            self.log.info(f"Connecting to hosts {self.host_list} as user {user} with a password")
        self.client = self._make_client(self.reachable_hosts)

    # -- clients -----------------------------------------------------------------------------
    def _client_pkey(self) -> str | None:
        if self.pkey == DEFAULT_PKEY:
            try:
                return resolve_pkey(self.pkey)
            except PKeyFileError:
                # The untouched default: let OpenSSH pick identities (ssh_config, agent,
                # ~/.ssh/id_*) rather than fail as parallel-ssh did without ./id_rsa.
                return None
        return self.pkey

    def _make_client(self, hosts: Sequence[str], **overrides: Any) -> Any:
        kwargs = {"keepalive_seconds": 30, **self.ssh_client_kwargs, **overrides}
        if self.password is None:
            pkey = self._client_pkey()
            return ParallelSSHClient(list(hosts), user=self.user, pkey=pkey, **kwargs)
        return ParallelSSHClient(list(hosts), user=self.user, password=self.password, **kwargs)

    def _acquire(self) -> Any:
        """The current client, marked in use (a concurrent prune defers its close)."""
        with self._lock:
            client = self.__dict__.get("client")
            if client is None:
                # After destroy_clients() CVS raised AttributeError; reconnect instead.
                client = self.client = self._make_client(self.reachable_hosts)
            client._enter()
        return client

    @staticmethod
    def _release(client: Any) -> None:
        client._leave()

    def _with_env(self, cmd: str) -> str:
        return f"{self.env_prefix} ; {cmd}" if self.env_prefix else cmd

    # -- commands ----------------------------------------------------------------------------
    def exec(
        self,
        cmd: str,
        timeout: float | None = None,
        print_console: bool = True,
        detailed: bool = False,
        inactivity_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run ``cmd`` on every reachable host. ``timeout`` caps the whole command;
        ``inactivity_timeout`` (main) caps the silence between output and, as on main, replaces
        ``timeout`` when given. Either kills the remote command on that host only."""
        stop_on_errors = self.stop_on_errors
        full_cmd = self._with_env(cmd)
        if inactivity_timeout is not None:
            timeout = None
        self.log.info(f"cmd = {full_cmd}")
        client = self._acquire()
        try:
            self.log.debug(
                f"Running on {len(client.hosts)} hosts, timeout={timeout}, "
                f"inactivity_timeout={inactivity_timeout}"
            )
            results = client.exec(full_cmd, timeout=timeout, inactivity_timeout=inactivity_timeout)
        finally:
            self._release(client)
        output = [HostOutput.from_result(r) for r in results]
        return self._finish(output, stop_on_errors, print_console, detailed, cmd=full_cmd)

    def exec_cmd_list(
        self,
        cmd_list: Sequence[str],
        timeout: float | None = None,
        print_console: bool = True,
        inactivity_timeout: float | None = None,
    ) -> dict[str, str]:
        """Run ``cmd_list[i]`` on reachable host ``i``; returns ``{host: str}``.

        A list built from the original ``host_list`` is accepted too and re-aligned to the
        reachable hosts, where parallel-ssh raised ``HostArgumentError`` after a prune.
        """
        stop_on_errors = self.stop_on_errors
        if inactivity_timeout is not None:
            timeout = None
        client = self._acquire()
        try:
            hosts = list(client.hosts)
            cmds = [self._with_env(c) for c in self._align(cmd_list, hosts)]
            self.log.debug(f"Running a command list on {len(hosts)} hosts, timeout={timeout}")
            results = client.exec_per_host(
                dict(zip(hosts, cmds)), timeout=timeout, inactivity_timeout=inactivity_timeout
            )
        finally:
            self._release(client)
        output = [HostOutput.from_result(r) for r in results]
        by_host = dict(zip(hosts, cmds))
        aligned = [by_host.get(item.host, "") for item in output]
        return self._finish(output, stop_on_errors, print_console, False, cmd_list=aligned)

    def _align(self, cmd_list: Sequence[str], hosts: Sequence[str]) -> list[str]:
        cmds = list(cmd_list)
        if len(cmds) == len(hosts):
            return cmds
        if len(cmds) == len(self.host_list):
            per_host = dict(zip(self.host_list, cmds))
            if all(h in per_host for h in hosts):
                return [per_host[h] for h in hosts]
        raise HostArgumentError(
            "Number of host arguments provided does not match number of hosts "
            f"(cmd_list={len(cmds)}, reachable_hosts={len(hosts)}, "
            f"host_list={len(self.host_list)})"
        )

    def _finish(
        self,
        output: list[HostOutput],
        stop_on_errors: bool,
        print_console: bool,
        detailed: bool,
        cmd: str | None = None,
        cmd_list: list[str] | None = None,
    ) -> dict[str, Any]:
        if stop_on_errors:
            _raise_first_error(output)
        cmd_output = self._process_output(
            output,
            cmd=cmd,
            cmd_list=cmd_list,
            print_console=print_console,
            include_exit_codes=detailed,
        )
        if not stop_on_errors:
            self.prune_unreachable_hosts(output)
            self.inform_unreachability(cmd_output, detailed)
        per_host = dict(zip((item.host for item in output), cmd_list or ()))
        for host in cmd_output:
            self.log.debug(f"Command completed on {host}: {per_host.get(host, cmd)}")
        return cmd_output

    def _process_output(
        self,
        output: Sequence[HostOutput],
        cmd: str | None = None,
        cmd_list: Sequence[str] | None = None,
        print_console: bool = True,
        include_exit_codes: bool = False,
    ) -> dict[str, Any]:
        """Per host: stdout lines, then stderr lines (tabs as three spaces, each line ending
        in ``\\n``), then the exception text (``ABORT: Timeout Error in Host: <h>`` after a
        timeout), then a final ``\\n``.

        Fixed (contract §1.3, §9.5): CVS's ``_handle_timeout_exception`` gave one host's
        Timeout to every host read after it, and never read the timed-out host's stderr. The
        engine times each host independently, so each item carries only its own outcome.
        """
        log = self.log
        loud = self.process_output
        cmd_output: dict[str, Any] = {}
        for i, item in enumerate(output):
            host = item.host
            if loud:
                log.info(BANNER)
                log.info(f"Host == {host} ==")
                log.info(BANNER)
                log.debug(cmd_list[i] if cmd_list and i < len(cmd_list) else cmd)
            text = []
            for stream in (item.stdout, item.stderr):
                for line in stream:
                    if print_console and loud:
                        log.info(line)
                    text.append(_tabs(line) + "\n")
            exc = item.exception
            if exc is not None:
                exc_text = _tabs(str(exc) or repr(exc))
                if isinstance(exc, Timeout):
                    exc_text += TIMEOUT_ABORT.format(host=host)
                text.append(exc_text)
                log.warning(f"Host {host}: {exc_text}")
            text.append("\n")
            out = "".join(text)
            if include_exit_codes:
                if exc is not None or item.exit_code is None:
                    code = -1
                else:
                    code = item.exit_code
                cmd_output[host] = {"output": out, "exit_code": code}
            else:
                cmd_output[host] = out
        return cmd_output

    def _handle_timeout_exception(self, output: Sequence[HostOutput], e: BaseException) -> None:
        """CVS's helper, kept for callers: gives ``e`` to every item without an exception.
        Never called here (see ``_process_output``)."""
        for item in output:
            if item.exception is None:
                item.exception = e

    # -- unreachable hosts ---------------------------------------------------------------------
    def check_connectivity(self, hosts: Sequence[str]) -> list[str]:
        """The hosts of ``hosts`` that fail ``echo 1`` on a fresh client (connect 2 s, read 2 s,
        no retries). Fixed: CVS never closed that temporary client; it is closed here."""
        hosts = list(hosts)
        if not hosts:
            return []
        probe = self._make_client(hosts, timeout=PROBE_TIMEOUT_S, num_retries=0)
        probe._enter()
        try:
            results = probe.exec("echo 1", timeout=PROBE_TIMEOUT_S)
        finally:
            probe._leave()
            probe.close()
        failed = [r.host for r in results if exception_for(r) is not None]
        self.log.debug(f"Connectivity probe of {hosts}: unreachable {failed}")
        return failed

    def prune_unreachable_hosts(self, output: Sequence[HostOutput]) -> list[str]:
        """Re-probe hosts that failed with a connection error, a timeout or a session error, and
        prune those still failing. Authentication errors never prune (as in CVS)."""
        candidates = [
            item.host
            for item in output
            if isinstance(item.exception, (ConnectionError, Timeout, SessionError))
        ]
        if not candidates:
            return []
        # Looked up on the instance: callers replace check_connectivity.
        unreachable = self.check_connectivity(candidates)
        return self.prune_nodes(unreachable)

    def prune_nodes(self, nodes_to_remove: Sequence[str]) -> list[str]:
        """Move hosts from ``reachable_hosts`` to ``unreachable_hosts`` and rebuild the client;
        returns the hosts actually removed (``[]``, and no rebuild, when none)."""
        removed: list[str] = []
        old = None
        with self._lock:
            for node in nodes_to_remove or []:
                if node not in self.reachable_hosts:
                    continue
                self.reachable_hosts.remove(node)
                if node not in self.unreachable_hosts:
                    self.unreachable_hosts.append(node)
                removed.append(node)
                self.log.warning(f"Host {node} is unreachable, pruning from reachable hosts list.")
            if removed:
                old = self.__dict__.get("client")
                self.client = self._make_client(self.reachable_hosts)
        if old is not None:
            old.close()  # deferred until calls still running on it finish
        return removed

    def inform_unreachability(
        self, cmd_output: dict[str, Any], include_exit_codes: bool = False
    ) -> dict[str, Any]:
        """Append ``ABORT: Host Unreachable Error`` for every pruned host, on every call (new
        entries come after the live hosts)."""
        with self._lock:
            unreachable = list(self.unreachable_hosts)
        for host in unreachable:
            if include_exit_codes:
                entry = cmd_output.get(host)
                if not isinstance(entry, dict):
                    entry = {"output": entry or "", "exit_code": -1}
                entry["output"] = entry.get("output", "") + UNREACHABLE_ABORT
                entry["exit_code"] = -1
                cmd_output[host] = entry
            else:
                cmd_output[host] = (cmd_output.get(host) or "") + UNREACHABLE_ABORT
        return cmd_output

    # -- files -------------------------------------------------------------------------------
    def scp_file(self, local_file: str, remote_file: str, recurse: bool = False) -> None:
        self.log.info(f"About to copy local file {local_file} to remote {remote_file} on all Hosts")
        self.upload_file(local_file, remote_file, recurse=recurse)

    def upload_file(self, local_file: str, remote_file: str, recurse: bool = False) -> None:
        """Copy ``local_file`` to ``remote_file`` on every reachable host (streamed, any size;
        the parent directory is created as parallel-ssh did). Raises
        ``IOError("upload_file '<l>' -> '<r>' failed on k/n hosts: [(host, exc), ...]")``."""
        client = self._acquire()
        try:
            hosts = list(client.hosts)
            self.log.info(f"SFTP upload of {local_file} to {remote_file} on {len(hosts)} hosts")
            outcome = self._upload(client, {h: (local_file, remote_file) for h in hosts}, recurse)
        finally:
            self._release(client)
        failures = [(h, e) for h, e in outcome.items() if e is not None]
        if failures:
            raise OSError(
                f"upload_file '{local_file}' -> '{remote_file}' failed on "
                f"{len(failures)}/{len(hosts)} hosts: {failures}"
            ) from failures[0][1]

    def upload_file_list(self, node_path_map: Mapping[str, tuple[str, str]]) -> dict[str, str]:
        """Copy ``{host: (local, remote)}`` to the reachable hosts among them (any subset);
        returns ``{host: "<host>: SUCCESS" | "<host>: FAILED - <exc>"}``, never raises."""
        if not node_path_map:
            return {}
        client = self._acquire()
        try:
            targets = [h for h in client.hosts if h in node_path_map]
            if not targets:
                return {}
            self.log.info(f"SFTP upload of per-host files to {len(targets)} hosts")
            try:
                outcome = self._upload(
                    client, {h: tuple(node_path_map[h]) for h in targets}, recurse=False
                )
            except Exception as exc:  # never raises, as CVS: every host fails with the cause
                outcome = {h: exc for h in targets}
        finally:
            self._release(client)
        result = {}
        for host, exc in outcome.items():
            if exc is None:
                result[host] = f"{host}: SUCCESS"
            else:
                result[host] = f"{host}: FAILED - {exc}"
                self.log.error(result[host])
        return result

    def _upload(
        self, client: Any, files: Mapping[str, tuple[str, str]], recurse: bool
    ) -> dict[str, BaseException | None]:
        outcome: dict[str, BaseException | None] = dict.fromkeys(files)
        plain: dict[str, tuple[str, str]] = {}
        trees: dict[str, dict[str, str]] = {}  # local dir -> {host: remote dir}
        for host, (local, remote) in files.items():
            local = os.fspath(local)
            if os.path.isdir(local):
                if recurse:
                    trees.setdefault(local, {})[host] = remote
                else:
                    outcome[host] = ValueError("Recurse must be true if local_file is a directory.")
            elif not os.path.exists(local):
                outcome[host] = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), local)
            else:
                plain[host] = (local, remote)
        parents = {h: p for h, (_, r) in plain.items() if (p := _remote_parent(r))}
        if parents:
            mkdirs = {
                h: f"[ -d {_quote(p)} ] || mkdir -p -- {_quote(p)}" for h, p in parents.items()
            }
            for r in client.exec_per_host(mkdirs):
                if r.status != "ok":
                    outcome[r.host] = self._transfer_error(r, "Error creating remote directory")
                    plain.pop(r.host, None)
        for r in client.upload_per_host(plain):
            if r.status != "ok":
                outcome[r.host] = self._transfer_error(r, "Error writing to remote file")
        for local, remotes in trees.items():
            # A directory travels as a tar stream on stdin (held in memory: trees are small).
            data = _tar_directory(local)
            cmds = {
                h: f"mkdir -p -- {_quote(d)} && tar -xf - -C {_quote(d)}"
                for h, d in remotes.items()
            }
            for r in client.exec_per_host(cmds, stdin=data):
                if r.status != "ok":
                    outcome[r.host] = self._transfer_error(r, "Error writing to remote directory")
        return outcome

    @staticmethod
    def _transfer_error(result: Any, what: str) -> BaseException:
        exc = exception_for(result)
        if exc is None:
            detail = (result.stderr or result.error or f"exit code {result.exit_code}").strip()
            exc = SFTPIOError(f"{what} on host {result.host} - {detail}")
            exc.host = result.host  # type: ignore[attr-defined]
        return exc

    def download_file(
        self,
        remote_file: str,
        local_file: str,
        recurse: bool = False,
        suffix_separator: str = "_",
        hosts: Sequence[str] | None = None,
    ) -> dict[str, str]:
        """Copy ``remote_file`` from every reachable host (or ``hosts``, main) to
        ``f"{local_file}{suffix_separator}{host}"``; returns ``{host: that path}``. Raises
        ``ValueError("SFTP download requested unreachable host(s): [...]")`` for unknown or
        pruned hosts and ``IOError("download_file '<r>' -> '<l>' failed on k/n hosts: ...")``
        when a host fails (files from the other hosts are in place, as with parallel-ssh)."""
        client = self._acquire()
        try:
            targets = self._select_reachable_hosts(hosts, list(client.hosts))
            self.log.info(f"SFTP download of {remote_file} from {len(targets)} hosts")
            dests = {h: f"{local_file}{suffix_separator}{h}" for h in targets}
            if recurse:
                outcome = self._download_any(client, remote_file, dests)
            else:
                outcome = self._download_files(client, remote_file, local_file, dests)
        finally:
            self._release(client)
        failures = [(h, e) for h, e in outcome.items() if e is not None]
        if failures:
            raise OSError(
                f"download_file '{remote_file}' -> '{local_file}' failed on "
                f"{len(failures)}/{len(targets)} hosts: {failures}"
            ) from failures[0][1]
        return dests

    def _select_reachable_hosts(
        self, hosts: Sequence[str] | None, reachable: list[str]
    ) -> list[str]:
        if hosts is None:
            return reachable
        wanted = list(dict.fromkeys(hosts))
        bad = [h for h in wanted if h not in reachable]
        if bad:
            raise ValueError(f"SFTP download requested unreachable host(s): {bad}")
        return wanted

    def _download_files(
        self, client: Any, remote: str, local_file: str, dests: dict[str, str]
    ) -> dict[str, BaseException | None]:
        outcome: dict[str, BaseException | None] = dict.fromkeys(dests)
        if not dests:
            return outcome
        parent = os.path.dirname(os.path.abspath(local_file))
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".cvs-core-download-", dir=parent)
        try:
            paths, failed = client.download(remote, staging, hosts=list(dests))
            for r in failed:
                outcome[r.host] = self._transfer_error(r, f"Error reading remote file {remote}")
            for host, path in paths.items():
                try:
                    os.makedirs(os.path.dirname(os.path.abspath(dests[host])), exist_ok=True)
                    os.replace(path, dests[host])
                except OSError as exc:
                    outcome[host] = exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return outcome

    def _download_any(
        self, client: Any, remote: str, dests: dict[str, str]
    ) -> dict[str, BaseException | None]:
        """recurse=True: a file or a whole directory (tar on stdout, held in memory)."""
        outcome: dict[str, BaseException | None] = dict.fromkeys(dests)
        q = _quote(remote)
        script = (
            f"if [ -d {q} ]; then printf D; exec tar -C {q} -cf - .; "
            f"elif [ -e {q} ]; then printf F; exec cat -- {q}; "
            f"else echo 'Remote file or directory {remote} does not exist' >&2; exit 2; fi"
        )
        for r in client.exec(script, hosts=list(dests)):
            if r.status != "ok":
                outcome[r.host] = self._transfer_error(r, f"Error reading remote path {remote}")
                continue
            data = r.stdout_bytes
            dest = dests[r.host]
            try:
                os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
                if data[:1] == b"D":
                    os.makedirs(dest, exist_ok=True)
                    with tarfile.open(fileobj=io.BytesIO(data[1:]), mode="r:") as tar:
                        _extract(tar, dest)
                else:
                    with open(dest, "wb") as fh:
                        fh.write(data[1:])
            except (OSError, tarfile.TarError) as exc:
                outcome[r.host] = exc
        return outcome

    # -- connections -------------------------------------------------------------------------
    def reboot_connections(self) -> None:
        """Send ``reboot -f`` to every reachable host without waiting for output (as CVS)."""
        self.log.info("Rebooting Connections")
        client = self._acquire()

        def run() -> None:
            try:
                client.exec("reboot -f", timeout=REBOOT_TIMEOUT_S)
            except Exception as exc:  # nobody reads this call's outcome
                self.log.debug(f"reboot -f: {exc}")
            finally:
                self._release(client)

        threading.Thread(target=run, name="cvs-core-reboot", daemon=True).start()

    def destroy_clients(self) -> None:
        """Close every connection of this handle. Fixed (contract §9.2): CVS only dropped the
        client at fa4ca32e and relied on parallel-ssh internals on main. A later call
        reconnects."""
        self.log.info("Destroying Current phdl connections ..")
        with self._lock:
            client = self.__dict__.pop("client", None)
        if client is not None:
            client.close()


def _tar_directory(path: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted(os.listdir(path)):
            tar.add(os.path.join(path, name), arcname=name)
    return buf.getvalue()


def _extract(tar: tarfile.TarFile, dest: str) -> None:
    # The "data" filter (3.12+, backported) refuses absolute paths, links out of dest, devices.
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = os.path.realpath(dest)
    for member in tar.getmembers():
        target = os.path.realpath(os.path.join(dest, member.name))
        if not (target == root or target.startswith(root + os.sep)) or member.isdev():
            raise tarfile.TarError(f"refusing to extract {member.name!r} outside {dest}")
    tar.extractall(dest)
