"""CVS's ``cvs.lib.parallel.pssh``: ``Pssh``, driving a parallel-ssh-shaped client.

``Pssh`` is CVS's class seam for seam (``shared/spec/cvs-test-seams.md`` §3-§4): it builds its
client through this module's ``ParallelSSHClient`` name, looked up at call time (1 construction
at init, +1 per prune that removes a host, +1 per ``check_connectivity``), and drives it only
through ``run_command``, ``copy_file``, ``copy_remote_file`` and ``pool.join()``, with CVS's
call forms. Pruning, ``check_connectivity``, ``print_console``, ``detailed=``, download
suffixes and error aggregation are CVS's, on whatever the client returns; every method reads
only the attributes CVS's reads, so it works on an object whose ``__init__`` was replaced.

The client behind the name is cvs-core's own (``client.ParallelSSHClient``: one OpenSSH master
per host on ``cvs_core.Cluster``, no parallel-ssh, no gevent), so what the compat layer fixed in
CVS holds wherever the seams leave room: no ~30 KB command cap, one host's timeout never marks
the others, connections reused across calls, safe from several threads, pruned and probe
clients closed. The exception classes are ``pssh.exceptions``' when parallel-ssh is importable
(see ``exceptions``).

Where a CVS bug and a seam collide, the seam is kept (each is noted where it lives):
``exec_cmd_list`` passes the caller's list as ``host_args`` unchanged, so a list built for the
original hosts raises ``HostArgumentError`` after a prune on a foreign client; a
``stop_on_errors=True`` handle formats an exception stored on an item instead of raising it;
after ``destroy_clients()`` the handle has no ``client`` and a later call raises
``AttributeError``. cvs-core's own client re-aligns the list by host (an extension no double
sees).

Host keys: CVS never checked them. Here known keys ARE checked and unknown hosts are learned
(``accept-new``). Overrides: ``CVS_CORE_HOST_KEY_POLICY`` (strict|accept-new|off),
``CVS_CORE_KNOWN_HOSTS``, ``CVS_CORE_SSH_CONFIG``, or the same names in ``**ssh_client_kwargs``
(``host_key_policy=``, ``known_hosts=``, ``ssh_config=``). Passwords work (OpenSSH reads them
through ``SSH_ASKPASS``), but keys are preferred.
"""

from __future__ import annotations

import logging
import shlex
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from .client import (
    DEFAULT_HOST_KEY_POLICY,
    ENV_HOST_KEY_POLICY,
    ENV_KNOWN_HOSTS,
    ENV_SSH_CONFIG,
    HostOutput,
    ParallelSSHClient,
    exception_for,
    resolve_pkey,
    split_lines,
)
from .exceptions import AuthenticationError, ConnectionError, SessionError, Timeout

__all__ = [
    "DEFAULT_HOST_KEY_POLICY",
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
    "exception_for",
    "resolve_pkey",
    "split_lines",
]

# The engine's own client, captured before anyone patches the module name: only clients of this
# class take cvs-core's extensions (subset copies, re-aligned host_args, close()).
_ENGINE_CLIENT: type = ParallelSSHClient

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


def _engine(client: Any) -> bool:
    # type(), not isinstance: a Mock(spec=ParallelSSHClient) claims to be one.
    return issubclass(type(client), _ENGINE_CLIENT)


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


# -- Pssh ------------------------------------------------------------------------------------


def _tabs(text: str) -> str:
    return text.replace("\t", "   ")


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
        self.ssh_client_kwargs = ssh_client_kwargs
        self.env_prefix = build_env_prefix(env_vars)
        if password is None:
            # CVS's three lines (the key path at INFO is CVS's; log-grep tooling reads it).
            self.log.info(f"Connecting to hosts: {self.reachable_hosts}")
            self.log.info(f"User: {user}")
            self.log.info(f"Private key: {pkey}")
        self.client = self._new_client(self.reachable_hosts)

    # -- clients -----------------------------------------------------------------------------
    def _new_client(self, hosts: Sequence[str]) -> Any:
        """CVS's two construction forms, through the module name (looked up at call time)."""
        if self.password is None:
            return ParallelSSHClient(
                hosts,
                user=self.user,
                pkey=self.pkey,
                keepalive_seconds=30,
                **self.ssh_client_kwargs,
            )
        return ParallelSSHClient(
            hosts,
            user=self.user,
            password=self.password,
            keepalive_seconds=30,
            **self.ssh_client_kwargs,
        )

    def _state_lock(self) -> threading.RLock:
        # Created on first use: callers build Pssh objects with __init__ replaced.
        lock = self.__dict__.get("_cvs_core_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_cvs_core_lock", threading.RLock())
        return lock

    # -- commands ----------------------------------------------------------------------------
    def exec(
        self,
        cmd: str,
        timeout: float | None = None,
        print_console: bool = True,
        detailed: bool = False,
        inactivity_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run ``cmd`` on every reachable host. ``timeout`` caps the whole command on each host;
        ``inactivity_timeout`` (CVS main) caps the silence between output and replaces
        ``timeout``. Either kills the remote command on that host only."""
        full_cmd = f"{self.env_prefix} ; {cmd}" if self.env_prefix else cmd
        self.log.info(f"cmd = {full_cmd}")
        self.log.debug(f"Executing on {len(self.reachable_hosts)} hosts, timeout={timeout}")
        extra = _inactivity(inactivity_timeout)
        if extra:
            timeout = None
        if timeout is None:
            output = self.client.run_command(full_cmd, stop_on_errors=self.stop_on_errors, **extra)
        else:
            output = self.client.run_command(
                full_cmd, read_timeout=timeout, stop_on_errors=self.stop_on_errors, **extra
            )
        cmd_output = self._process_output(
            output, cmd=full_cmd, print_console=print_console, include_exit_codes=detailed
        )
        for host in cmd_output:
            self.log.debug(f"Command completed on {host}: {full_cmd}")
        return cmd_output

    def exec_cmd_list(
        self,
        cmd_list: Sequence[str],
        timeout: float | None = None,
        print_console: bool = True,
        inactivity_timeout: float | None = None,
    ) -> dict[str, str]:
        """Run ``cmd_list[i]`` on reachable host ``i``; returns ``{host: str}``.

        CVS passes the list to the client as is (a length mismatch after a prune raises
        ``HostArgumentError``); cvs-core's own client gets it re-aligned by host when it was
        built for the original ``host_list``.
        """
        if self.env_prefix:
            cmd_list = [f"{self.env_prefix} ; {c}" for c in cmd_list]
        client = self.client
        host_args = self._aligned(client, cmd_list)
        extra = _inactivity(inactivity_timeout)
        if extra:
            timeout = None
        if timeout is None:
            output = client.run_command(
                "%s", host_args=host_args, stop_on_errors=self.stop_on_errors, **extra
            )
        else:
            output = client.run_command(
                "%s",
                host_args=host_args,
                read_timeout=timeout,
                stop_on_errors=self.stop_on_errors,
                **extra,
            )
        return self._process_output(
            output,
            cmd_list=host_args,
            print_console=print_console and self.process_output,
        )

    def _aligned(self, client: Any, cmd_list: Sequence[str]) -> Sequence[str]:
        if not _engine(client):
            return cmd_list
        hosts = client.hosts
        if len(cmd_list) == len(hosts) or len(cmd_list) != len(self.host_list):
            return cmd_list
        per_host = dict(zip(self.host_list, cmd_list))
        if not all(h in per_host for h in hosts):
            return cmd_list
        return [per_host[h] for h in hosts]

    def _process_output(
        self,
        output: Sequence[Any],
        cmd: str | None = None,
        cmd_list: Sequence[str] | None = None,
        print_console: bool = True,
        include_exit_codes: bool = False,
    ) -> dict[str, Any]:
        """Per host: stdout lines, then stderr lines (tabs as three spaces, each line ending in
        ``\\n``), then the exception text (``ABORT: Timeout Error in Host: <h>`` after a
        timeout), then a final ``\\n``. With ``stop_on_errors=False``, prunes and reports the
        unreachable hosts afterwards (CVS's order, through ``self``)."""
        log = self.log
        cmd_output: dict[str, Any] = {}
        for i, item in enumerate(output):
            host = item.host
            log.info(BANNER)
            log.info(f"Host == {host} ==")
            log.info(BANNER)
            log.debug(cmd_list[i] if cmd_list else cmd)
            text: list[str] = []
            try:
                for stream in (item.stdout, item.stderr):
                    for line in stream or ():
                        if print_console:
                            log.info("%s", line)
                        text.append(_tabs(line) + "\n")
            except Timeout as e:
                if self.stop_on_errors:
                    raise
                # CVS: the same exception on every item that has none yet. cvs-core's client
                # never raises here with stop_on_errors=False (each host carries its own).
                self._handle_timeout_exception(output, e)
            exc = item.exception
            if exc:
                exc_text = _tabs(str(exc) or repr(exc))
                if isinstance(exc, Timeout):
                    exc_text += TIMEOUT_ABORT.format(host=host)
                text.append(exc_text)
                log.warning(f"Host {host}: {exc_text}")
            text.append("\n")
            out = "".join(text)
            if include_exit_codes:
                code = -1 if exc else item.exit_code
                cmd_output[host] = {"output": out, "exit_code": -1 if code is None else code}
            else:
                cmd_output[host] = out
        if not self.stop_on_errors:
            self.prune_unreachable_hosts(output)
            self.inform_unreachability(cmd_output, include_exit_codes)
        return cmd_output

    def _handle_timeout_exception(self, output: Sequence[Any], e: BaseException) -> None:
        """CVS: give ``e`` to every item that has no exception yet."""
        for item in output:
            if item.exception is None:
                item.exception = e

    # -- unreachable hosts ---------------------------------------------------------------------
    def check_connectivity(self, hosts: Sequence[str]) -> list[str]:
        """The hosts of ``hosts`` that fail ``echo 1`` on a temporary client (connect 2 s, read
        2 s, no retries). Fixed: CVS never closed that client; cvs-core's is closed."""
        if not hosts:
            return []
        temp = ParallelSSHClient(
            hosts,
            user=self.user,
            pkey=(self.pkey if self.password is None else None),
            password=self.password,
            **{**self.ssh_client_kwargs, "timeout": PROBE_TIMEOUT_S, "num_retries": 0},
        )
        try:
            output = temp.run_command("echo 1", stop_on_errors=False, read_timeout=PROBE_TIMEOUT_S)
            unreachable = [item.host for item in output if item.exception]
        finally:
            if _engine(temp):
                temp.close()
        self.log.debug(f"Connectivity probe of {list(hosts)}: unreachable {unreachable}")
        return unreachable

    def prune_unreachable_hosts(self, output: Sequence[Any]) -> list[str]:
        """Re-probe the hosts that failed with a connection error, a timeout or a session error
        and prune those still failing. Authentication errors never prune (as in CVS)."""
        failed = [
            item.host
            for item in output
            if item.exception
            and isinstance(item.exception, (ConnectionError, Timeout, SessionError))
        ]
        # Through self, even with no candidate: callers replace check_connectivity.
        unreachable = self.check_connectivity(failed)
        return self.prune_nodes(unreachable)

    def prune_nodes(self, nodes_to_remove: Sequence[str]) -> list[str]:
        """Move hosts from ``reachable_hosts`` to ``unreachable_hosts`` and rebuild the client
        once; returns the hosts removed, in ``reachable_hosts`` order (``[]``, no rebuild, when
        none)."""
        if not nodes_to_remove:
            return []
        drop = {n for n in nodes_to_remove if n}
        old = None
        with self._state_lock():
            removed = [h for h in self.reachable_hosts if h in drop]
            if not removed:
                return []
            for host in removed:
                self.log.warning(f"Host {host} is unreachable, pruning from reachable hosts list.")
            self.reachable_hosts = [h for h in self.reachable_hosts if h not in drop]
            for host in removed:
                if host not in self.unreachable_hosts:
                    self.unreachable_hosts.append(host)
            old = self.__dict__.get("client")
            self.client = self._new_client(self.reachable_hosts)
        if _engine(old):
            old.close()  # deferred until calls still running on it return
        return removed

    def inform_unreachability(
        self, cmd_output: dict[str, Any], include_exit_codes: bool = False
    ) -> None:
        """Append ``ABORT: Host Unreachable Error`` for every pruned host, on every call (new
        entries come after the live hosts)."""
        for host in list(self.unreachable_hosts):
            if include_exit_codes:
                entry = cmd_output.get(host)
                if not isinstance(entry, dict):
                    entry = {"output": "", "exit_code": -1}
                entry["output"] = entry.get("output", "") + UNREACHABLE_ABORT
                entry["exit_code"] = -1
                cmd_output[host] = entry
            else:
                cmd_output[host] = (cmd_output.get(host) or "") + UNREACHABLE_ABORT

    # -- files -------------------------------------------------------------------------------
    def scp_file(self, local_file: str, remote_file: str, recurse: bool = False) -> None:
        self.log.info(f"About to copy local file {local_file} to remote {remote_file} on all Hosts")
        self.upload_file(local_file, remote_file, recurse=recurse)

    def upload_file(self, local_file: str, remote_file: str, recurse: bool = False) -> None:
        """Copy ``local_file`` to ``remote_file`` on every reachable host. Raises
        ``IOError("upload_file '<l>' -> '<r>' failed on k/n hosts: [(host, exc), ...]")``."""
        hosts = list(self.reachable_hosts)
        self.log.info(f"SFTP upload of {local_file} to {remote_file} on {len(hosts)} hosts")
        client = self.client
        cmds = client.copy_file(local_file, remote_file, recurse=recurse)
        client.pool.join()
        failures = _failures(cmds, hosts)
        if failures:
            raise OSError(
                f"upload_file '{local_file}' -> '{remote_file}' failed on "
                f"{len(failures)}/{len(hosts)} hosts: {failures}"
            ) from failures[0][1]

    def upload_file_list(self, node_path_map: Mapping[str, tuple[str, str]]) -> dict[str, str]:
        """Copy ``{host: (local, remote)}`` to the reachable hosts among them; returns
        ``{host: "<host>: SUCCESS" | "<host>: FAILED - <exc>"}``. cvs-core's own client also
        takes a subset of its hosts (parallel-ssh raised ``HostArgumentError``)."""
        if not node_path_map:
            return {}
        targets = [h for h in self.reachable_hosts if h in node_path_map]
        if not targets:
            return {}
        copy_args = [
            {"local_file": node_path_map[h][0], "remote_file": node_path_map[h][1]} for h in targets
        ]
        self.log.info(f"SFTP upload of per-host files to {len(targets)} hosts")
        client = self.client
        subset = {"hosts": targets} if _engine(client) and targets != client.hosts else {}
        cmds = client.copy_file("%(local_file)s", "%(remote_file)s", copy_args=copy_args, **subset)
        client.pool.join()
        results: dict[str, str] = {}
        for cmd, host in zip(cmds, targets):
            try:
                cmd.get()
                results[host] = f"{host}: SUCCESS"
            except Exception as exc:
                results[host] = f"{host}: FAILED - {exc}"
                self.log.error(results[host])
        return results

    def download_file(
        self,
        remote_file: str,
        local_file: str,
        recurse: bool = False,
        suffix_separator: str = "_",
        hosts: Sequence[str] | None = None,
    ) -> dict[str, str]:
        """Copy ``remote_file`` from every reachable host (or ``hosts``, CVS main) to
        ``f"{local_file}{suffix_separator}{host}"``; returns ``{host: that path}``. Raises
        ``ValueError("SFTP download requested unreachable host(s): [...]")`` for unknown or
        pruned hosts and ``IOError("download_file '<r>' -> '<l>' failed on k/n hosts: ...")``
        when a host fails (nothing partial is returned)."""
        targets = self._select_reachable_hosts(hosts)
        self.log.info(f"SFTP download of {remote_file} from {len(targets)} hosts")
        client = self.client
        kwargs: dict[str, Any] = {"recurse": recurse, "suffix_separator": suffix_separator}
        if hosts is not None and targets != list(self.reachable_hosts):
            if _engine(client):
                kwargs["hosts"] = targets
            else:
                client = self._new_client(targets)  # CVS main: a temporary client
        cmds = client.copy_remote_file(remote_file, local_file, **kwargs)
        client.pool.join()
        failures = _failures(cmds, targets)
        if failures:
            raise OSError(
                f"download_file '{remote_file}' -> '{local_file}' failed on "
                f"{len(failures)}/{len(targets)} hosts: {failures}"
            ) from failures[0][1]
        return {h: f"{local_file}{suffix_separator}{h}" for h in targets}

    def _select_reachable_hosts(self, hosts: Sequence[str] | None) -> list[str]:
        reachable = list(self.reachable_hosts)
        if hosts is None:
            return reachable
        wanted = list(dict.fromkeys(hosts))
        bad = [h for h in wanted if h not in reachable]
        if bad:
            raise ValueError(f"SFTP download requested unreachable host(s): {bad}")
        return wanted

    # -- connections -------------------------------------------------------------------------
    def reboot_connections(self) -> None:
        """Send ``reboot -f`` to every reachable host without reading the output (CVS)."""
        self.log.info("Rebooting Connections")
        client = self.client
        if not _engine(client):
            client.run_command("reboot -f", stop_on_errors=self.stop_on_errors)
            return
        # cvs-core's client returns when the command ends, which for a reboot is when the host
        # drops the connection: run it in the background, bounded, as parallel-ssh's
        # fire-and-forget call behaved.
        stop = self.stop_on_errors

        def run() -> None:
            try:
                client.run_command("reboot -f", stop_on_errors=stop, read_timeout=REBOOT_TIMEOUT_S)
            except Exception as exc:  # nobody reads this call's outcome
                self.log.debug(f"reboot -f: {exc}")

        threading.Thread(target=run, name="cvs-core-reboot", daemon=True).start()

    def destroy_clients(self) -> None:
        """Drop the client (CVS: ``del self.client``; a later call raises AttributeError).
        cvs-core's client is also closed: CVS at fa4ca32e leaked its sessions (contract §9.2)."""
        self.log.info("Destroying Current phdl connections ..")
        with self._state_lock():
            client = self.__dict__.pop("client", None)
        if _engine(client):
            client.close()


def _inactivity(inactivity_timeout: float | None) -> dict[str, Any]:
    """CVS main's ``inactivity_timeout``, passed on only when the caller gave one, so the call
    forms stay fa4ca32e's otherwise."""
    return {} if inactivity_timeout is None else {"inactivity_timeout": inactivity_timeout}


def _failures(cmds: Sequence[Any], hosts: Sequence[str]) -> list[tuple[str, BaseException]]:
    """``(host, exc)`` for every copy whose ``.get()`` raised, paired by position (CVS)."""
    failures = []
    for cmd, host in zip(cmds, hosts):
        try:
            cmd.get()
        except Exception as exc:
            failures.append((host, exc))
    return failures
