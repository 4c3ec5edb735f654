"""``ParallelSSHClient``: the part of parallel-ssh's client that CVS's ``Pssh`` drives, on
``cvs_core.Cluster``.

CVS's ``Pssh`` talks to its client through a small protocol, and CVS's tests (and its users')
put doubles exactly there (``shared/spec/cvs-test-seams.md`` §4). This class speaks that
protocol with cvs-core's engine behind it: one OpenSSH master per host, kept across calls, the
GIL released while waiting; no parallel-ssh, no gevent, no libssh2.

The protocol (what ``Pssh`` calls, nothing more):

- ``ParallelSSHClient(hosts, user=, password=, pkey=, keepalive_seconds=, timeout=,
  num_retries=, port=, pool_size=, proxy_host=/proxy_user=/proxy_port=)``. cvs-core extras, as
  keywords (CVS passes them through ``**ssh_client_kwargs``): ``ssh_config``, ``known_hosts``,
  ``host_key_policy`` (default from ``CVS_CORE_HOST_KEY_POLICY``, else ``accept-new``),
  ``idle_timeout``. Options parallel-ssh has and OpenSSH does not need (``num_retries``,
  ``retry_delay``, ``allow_agent``, ...) are accepted and ignored with a DEBUG line.
- ``run_command(command, stop_on_errors=True, host_args=None, read_timeout=None)`` returns a
  list of ``HostOutput`` in host order: ``host``, ``stdout``/``stderr`` (iterables of lines
  without their end of line), ``exit_code`` (None when unknown) and ``exception`` (assignable).
- ``copy_file(local, remote, recurse=False, copy_args=None)`` and
  ``copy_remote_file(remote, local, recurse=False, suffix_separator='_', copy_args=None)``
  return one ``Transfer`` per host, whose ``.get()`` returns None or raises the host's error;
  ``pool.join()`` waits for them.

How it differs from parallel-ssh, on purpose:

- Calls are synchronous: ``run_command`` returns once every host finished (or timed out), so
  every output is complete; ``pool.join()`` has nothing left to wait for.
- ``read_timeout`` bounds each host's command and kills its remote process tree (parallel-ssh
  only stopped reading). A host that timed out carries its own ``Timeout``: with
  ``stop_on_errors=True`` iterating its stdout raises it after the lines read so far (what
  parallel-ssh did); with ``stop_on_errors=False`` it is stored in ``exception`` instead, so
  CVS's ``_handle_timeout_exception`` never hands one host's timeout to the hosts read after it
  (contract §1.3, a CVS bug fixed where the seam leaves room).
- With ``stop_on_errors=True``, a host that could not be connected to (refused, unresolvable,
  authentication, host key) raises out of ``run_command``, as parallel-ssh did; a session lost
  mid-command is stored as ``SessionError`` on the host.
- No ~30 KB command cap: long commands travel on stdin.
- Thread-safe. ``close()`` waits for calls still running on the client; a call made on a closed
  client (a thread that read ``Pssh.client`` just before a prune replaced it) runs on a one-off
  connection that is closed right after, so nothing leaks.
- Passwords go to OpenSSH through ``SSH_ASKPASS`` and a file only the engine reads (never a
  command line, the environment or a log line); ``repr()`` never shows them.

Extensions cvs-core's own ``Pssh`` uses, which a double never sees: ``hosts=`` on the copy
methods (a subset of the client's hosts) and ``inactivity_timeout=`` on ``run_command``.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import io
import logging
import os
import shlex
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cvs_core import Cluster, _native

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
    "DEFAULT_HOST_KEY_POLICY",
    "ENV_HOST_KEY_POLICY",
    "ENV_KNOWN_HOSTS",
    "ENV_SSH_CONFIG",
    "EnginePool",
    "HostOutput",
    "ParallelSSHClient",
    "Transfer",
    "exception_for",
    "resolve_pkey",
    "shared_engines",
    "split_lines",
]

#: Environment variables read when a client is built.
ENV_HOST_KEY_POLICY = "CVS_CORE_HOST_KEY_POLICY"
ENV_KNOWN_HOSTS = "CVS_CORE_KNOWN_HOSTS"
ENV_SSH_CONFIG = "CVS_CORE_SSH_CONFIG"
DEFAULT_HOST_KEY_POLICY = "accept-new"
#: CVS's Pssh default; left untouched and absent, OpenSSH picks identities itself.
DEFAULT_PKEY = "id_rsa"
#: parallel-ssh's connect timeout is unbounded by default; OpenSSH needs a number.
DEFAULT_CONNECT_TIMEOUT_S = 10.0


def _log() -> logging.Logger:
    return logging.getLogger()


# -- results -----------------------------------------------------------------------------------


def split_lines(text: str) -> list[str]:
    """Lines as parallel-ssh yields them: split on ``\\n`` or ``\\r\\n`` (a lone ``\\r``, as in
    progress bars, stays in the line), no empty last line for a trailing newline."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


class _Lines:
    """A re-iterable stream of lines that raises ``error`` once the lines are exhausted (a read
    timeout met while reading, as parallel-ssh raised it)."""

    __slots__ = ("error", "lines")

    def __init__(self, lines: Sequence[str], error: BaseException | None = None) -> None:
        self.lines = list(lines)
        self.error = error

    def __iter__(self) -> Iterator[str]:
        yield from self.lines
        if self.error is not None:
            raise self.error

    def __repr__(self) -> str:
        return f"<lines: {len(self.lines)}{', then ' + repr(self.error) if self.error else ''}>"


class HostOutput:
    """One host's output, shaped like parallel-ssh's ``HostOutput``: ``host``, ``stdout`` and
    ``stderr`` (iterables of lines), ``exit_code`` (None when unknown) and ``exception`` (None
    or the host's error; CVS assigns to it). ``status`` and ``result`` keep the engine's view
    (None when built by hand)."""

    __slots__ = ("exception", "exit_code", "host", "result", "status", "stderr", "stdout")

    def __init__(
        self,
        host: str,
        stdout: Sequence[str] | _Lines = (),
        stderr: Sequence[str] | _Lines = (),
        exit_code: int | None = None,
        exception: BaseException | None = None,
        status: str | None = None,
        result: Any = None,
    ) -> None:
        self.host = host
        self.stdout = stdout if isinstance(stdout, _Lines) else list(stdout)
        self.stderr = stderr if isinstance(stderr, _Lines) else list(stderr)
        self.exit_code = exit_code
        self.exception = exception
        self.status = status
        self.result = result

    def __repr__(self) -> str:
        return (
            f"HostOutput(host={self.host!r}, exit_code={self.exit_code!r}, "
            f"exception={self.exception!r})"
        )


_COMMAND_OUTCOMES = frozenset({"ok", "exit_nonzero", "signal"})
#: Statuses that mean the command never started: parallel-ssh raised these out of run_command.
_CONNECT_FAILURES = frozenset({"unreachable", "auth_failed", "host_key_mismatch"})


def exception_for(result: Any) -> BaseException | None:
    """The parallel-ssh exception for a host the engine reports as failed (None when the command
    ran: a non-zero exit or a signal is the command's outcome, not a transport error)."""
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


class Transfer:
    """One host's copy, shaped like the greenlets parallel-ssh returns: ``get()`` returns None,
    or raises the host's error."""

    __slots__ = ("error", "host")

    def __init__(self, host: str, error: BaseException | None = None) -> None:
        self.host = host
        self.error = error

    def get(self, block: bool = True, timeout: float | None = None) -> None:
        if self.error is not None:
            raise self.error

    def successful(self) -> bool:
        return self.error is None

    def __repr__(self) -> str:
        return f"Transfer(host={self.host!r}, error={self.error!r})"


class _Pool:
    """parallel-ssh's greenlet pool: ``join()`` waits for the copies. Copies here finish before
    ``copy_file`` returns, so there is nothing to wait for."""

    def join(self, timeout: float | None = None) -> None:
        return None


# -- keys --------------------------------------------------------------------------------------


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


def _client_key(pkey: Any) -> str | None:
    if pkey is None:
        return None
    if pkey == DEFAULT_PKEY:
        try:
            return resolve_pkey(pkey)
        except PKeyFileError:
            # CVS's untouched default: let OpenSSH pick identities (ssh_config, agent,
            # ~/.ssh/id_*) rather than fail as parallel-ssh did without ./id_rsa.
            return None
    return resolve_pkey(pkey)


# -- shared engines (sharded MultiProcessPssh) --------------------------------------------------


class _Lease:
    __slots__ = ("cluster", "hosts", "refs", "retired")

    def __init__(self, cluster: Any, hosts: Sequence[str]) -> None:
        self.cluster = cluster
        self.hosts = frozenset(hosts)
        self.refs = 0
        self.retired = False


class EnginePool:
    """Engines (``cvs_core.Cluster``) kept across calls and shared by every client built with
    the same options while the pool is active (``shared_engines``).

    CVS's sharder built a fresh ``Pssh`` (and so a fresh client) per shard on every call, in
    spawned processes: every call reconnected every host. ``PsshSharder.execute_sharded`` keeps
    that call structure but runs it in this process with a pool active, so the clients those
    ``Pssh`` objects build are views of one engine whose connections outlive the call.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Any, _Lease] = {}
        self.universe: list[str] = []

    def lease(self, key: Any, hosts: Sequence[str], build: Any) -> _Lease:
        """An engine covering ``hosts`` for ``key``, built over ``universe`` when needed."""
        retire: _Lease | None = None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not entry.hosts.issuperset(hosts):
                # Every host this call may need, so the other shards reuse the same engine.
                wanted = list(dict.fromkeys([*self.universe, *hosts]))
                retire = entry
                entry = _Lease(build(wanted), wanted)
                self._entries[key] = entry
                if retire is not None:
                    retire.retired = True
                    retire = retire if retire.refs == 0 else None
            entry.refs += 1
        if retire is not None:
            retire.cluster.close()
        return entry

    def release(self, entry: _Lease) -> None:
        with self._lock:
            entry.refs -= 1
            done = entry.retired and entry.refs == 0
        if done:
            entry.cluster.close()

    def interrupt(self) -> None:
        """Stop the calls running on every engine, from any thread: each ends once its remote
        commands are killed, its hosts ``cancelled`` (Ctrl-C in the thread that waits for the
        shards; the shards' own threads never see the signal)."""
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            entry.cluster.interrupt()

    def close(self) -> None:
        """Close every engine now (calls still running on them fail)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            entry.retired = True
            entry.cluster.close()


_ACTIVE_POOL: contextvars.ContextVar[EnginePool | None] = contextvars.ContextVar(
    "cvs_core_compat_engine_pool", default=None
)


@contextlib.contextmanager
def shared_engines(pool: EnginePool, universe: Sequence[str] = ()) -> Iterator[EnginePool]:
    """Within the block (and in threads started with a copy of this context), clients lease
    their engine from ``pool`` instead of connecting on their own."""
    with pool._lock:
        pool.universe = list(dict.fromkeys(universe))
    token = _ACTIVE_POOL.set(pool)
    try:
        yield pool
    finally:
        _ACTIVE_POOL.reset(token)


# -- the client --------------------------------------------------------------------------------


class ParallelSSHClient:
    """parallel-ssh's ``ParallelSSHClient`` as CVS uses it, backed by ``cvs_core.Cluster``.

    See the module docstring for the protocol and the differences.
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
        keepalive_seconds: float | None = None,
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
        self.pool = _Pool()
        # On the Slurm transport (CVS_CORE_TRANSPORT, or auto inside an allocation) no SSH key
        # is used, so none has to exist: CVS runs unchanged inside salloc without keys.
        key = None if _native.effective_transport() == "slurm" else _client_key(pkey)
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
            "ssh_config": os.fspath(ssh_config or os.environ.get(ENV_SSH_CONFIG) or "") or None,
            "known_hosts": os.fspath(known_hosts or os.environ.get(ENV_KNOWN_HOSTS) or "") or None,
            "host_key_policy": host_key_policy
            or os.environ.get(ENV_HOST_KEY_POLICY)
            or DEFAULT_HOST_KEY_POLICY,
            "jump_host": jump,
            "connect_timeout": float(timeout) if timeout else DEFAULT_CONNECT_TIMEOUT_S,
            "max_parallel": int(pool_size) if pool_size else None,
            "password": password,
        }
        if keepalive_seconds:
            options["keepalive"] = float(keepalive_seconds)
        if idle_timeout is not None:
            options["idle_timeout"] = float(idle_timeout)
        self._spec = (user, key, options)
        self._lock = threading.Lock()
        self._inflight = 0
        self._closing = False
        self._closed = False
        self._lease: _Lease | None = None
        self._cluster: Any = None
        pool = _ACTIVE_POOL.get()
        if self.hosts and pool is not None:
            self._lease = pool.lease(self._pool_key(), self.hosts, self._build)
            self._cluster = self._lease.cluster
            self._pool: EnginePool | None = pool
        else:
            self._pool = None
            self._cluster = self._build(self.hosts) if self.hosts else None
        # Calls pass the host list only when the engine covers more hosts than this client.
        self._subset = self._lease is not None and set(self._lease.hosts) != set(self.hosts)

    def _pool_key(self) -> tuple[Any, ...]:
        user, key, options = self._spec
        return (user, key, tuple(sorted(options.items())))

    def _build(self, hosts: Sequence[str]) -> Any:
        user, key, options = self._spec
        # The module name, looked up per build: the unit tests' engine seam.
        return Cluster(list(hosts), user, key, **options)

    def __repr__(self) -> str:
        shown = self.hosts if len(self.hosts) <= 4 else [*self.hosts[:4], "..."]
        return f"ParallelSSHClient(hosts={shown}, user={self.user!r})"

    # -- lifetime --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _engine(self) -> Iterator[Any]:
        """The engine for one call: this client's, or a one-off one when it was closed."""
        with self._lock:
            closed = self._closed or self._closing
            if not closed:
                self._inflight += 1
        if not closed:
            try:
                yield self._cluster
            finally:
                self._leave()
            return
        one_off = self._build(self.hosts)
        try:
            yield one_off
        finally:
            one_off.close()

    def _leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            now = self._closing and self._inflight == 0 and not self._closed
            if now:
                self._closed = True
        if now:
            self._shutdown()

    def close(self) -> None:
        """End this client's connections, now or when the last call running on it returns."""
        with self._lock:
            self._closing = True
            now = self._inflight == 0 and not self._closed
            if now:
                self._closed = True
        if now:
            self._shutdown()

    disconnect = close

    def _shutdown(self) -> None:
        if self._lease is not None and self._pool is not None:
            self._pool.release(self._lease)  # a shared engine stays for the next call
        elif self._cluster is not None:
            self._cluster.close()

    def master_pids(self) -> list[int]:
        return self._cluster.master_pids() if self._cluster is not None else []

    def join(self, output: Any = None, consume_output: bool = False, timeout: Any = None) -> None:
        """Nothing to wait for: every call returns complete (parallel-ssh's ``join``)."""
        return None

    def _hosts_arg(self, hosts: Sequence[str] | None = None) -> list[str] | None:
        if hosts is not None:
            return list(hosts)
        return list(self.hosts) if self._subset else None

    # -- commands --------------------------------------------------------------------------
    def run_command(
        self,
        command: str,
        stop_on_errors: bool = True,
        host_args: Sequence[Any] | None = None,
        read_timeout: float | None = None,
        *,
        inactivity_timeout: float | None = None,
    ) -> list[HostOutput]:
        """Run ``command`` on every host (``command % host_args[i]`` on host ``i``); returns one
        ``HostOutput`` per host, in host order, once every host finished."""
        if host_args is not None:
            args = list(host_args)
            if len(args) != len(self.hosts):
                raise HostArgumentError(
                    "Number of host arguments provided does not match number of hosts "
                    f"({len(args)} arguments, {len(self.hosts)} hosts)"
                )
            commands = {h: command % a for h, a in zip(self.hosts, args)}
        if not self.hosts:
            return []
        with self._engine() as engine:
            if host_args is not None:
                results = engine.exec_per_host(
                    commands, timeout=read_timeout, inactivity_timeout=inactivity_timeout
                )
            else:
                results = engine.exec(
                    command,
                    hosts=self._hosts_arg(),
                    timeout=read_timeout,
                    inactivity_timeout=inactivity_timeout,
                )
        if stop_on_errors:
            for r in results:
                if r.status in _CONNECT_FAILURES:
                    raise exception_for(r)  # type: ignore[misc]
        return [self._output(r, stop_on_errors) for r in results]

    @staticmethod
    def _output(r: Any, stop_on_errors: bool) -> HostOutput:
        exc = exception_for(r)
        stdout: Sequence[str] | _Lines = split_lines(r.stdout)
        if isinstance(exc, Timeout) and stop_on_errors:
            # Raised while reading, after the lines that arrived (parallel-ssh's read timeout).
            return HostOutput(
                r.host, _Lines(stdout, exc), split_lines(r.stderr), None, None, r.status, r
            )
        code = None if exc is not None else r.exit_code
        return HostOutput(r.host, stdout, split_lines(r.stderr), code, exc, r.status, r)

    # -- files -----------------------------------------------------------------------------
    def copy_file(
        self,
        local_file: str,
        remote_file: str,
        recurse: bool = False,
        copy_args: Sequence[Mapping[str, Any]] | None = None,
        *,
        hosts: Sequence[str] | None = None,
    ) -> list[Transfer]:
        """Copy ``local_file`` to ``remote_file`` on every host (``hosts``: a subset, cvs-core's
        extension); with ``copy_args``, host ``i`` gets ``local_file % copy_args[i]``. Streamed,
        any size; the remote parent directory is created as parallel-ssh's SFTP did."""
        targets = self._targets(hosts)
        files = self._per_host(targets, local_file, remote_file, copy_args)
        if not files:
            return []
        with self._engine() as engine:
            outcome = _upload(engine, files, recurse)
        return [Transfer(h, outcome[h]) for h in targets]

    def copy_remote_file(
        self,
        remote_file: str,
        local_file: str,
        recurse: bool = False,
        suffix_separator: str = "_",
        copy_args: Sequence[Mapping[str, Any]] | None = None,
        *,
        hosts: Sequence[str] | None = None,
    ) -> list[Transfer]:
        """Copy ``remote_file`` from every host (or ``hosts``) to
        ``f"{local_file}{suffix_separator}{host}"``; with ``recurse``, a directory too."""
        targets = self._targets(hosts)
        files = self._per_host(targets, local_file, remote_file, copy_args)
        if not files:
            return []
        dests = {h: f"{loc}{suffix_separator}{h}" for h, (loc, _) in files.items()}
        remotes = {h: rem for h, (_, rem) in files.items()}
        with self._engine() as engine:
            if recurse:
                outcome = _download_any(engine, remotes, dests)
            else:
                outcome = _download_files(engine, remotes, dests)
        return [Transfer(h, outcome[h]) for h in targets]

    def _targets(self, hosts: Sequence[str] | None) -> list[str]:
        if hosts is None:
            return list(self.hosts)
        unknown = [h for h in hosts if h not in self.hosts]
        if unknown:
            raise HostArgumentError(f"hosts not in this client: {unknown}")
        return list(dict.fromkeys(hosts))

    @staticmethod
    def _per_host(
        targets: Sequence[str],
        local: str,
        remote: str,
        copy_args: Sequence[Mapping[str, Any]] | None,
    ) -> dict[str, tuple[str, str]]:
        local, remote = os.fspath(local), os.fspath(remote)
        if copy_args is None:
            return {h: (local, remote) for h in targets}
        if len(copy_args) != len(targets):
            raise HostArgumentError(
                "Number of per-host copy arguments provided does not match number of hosts "
                f"({len(copy_args)} arguments, {len(targets)} hosts)"
            )
        return {h: (local % a, remote % a) for h, a in zip(targets, copy_args)}


# -- transfers (engine calls) ------------------------------------------------------------------


def _quote(text: str) -> str:
    return shlex.quote(text)


def _remote_parent(path: str) -> str | None:
    # parallel-ssh's _remote_paths_split: the directory part, when there is one.
    sep = path.rfind("/")
    return path[:sep] if sep > 0 else None


def _transfer_error(result: Any, what: str) -> BaseException:
    exc = exception_for(result)
    if exc is None:
        detail = (result.stderr or result.error or f"exit code {result.exit_code}").strip()
        exc = SFTPIOError(f"{what} on host {result.host} - {detail}")
        exc.host = result.host  # type: ignore[attr-defined]
    return exc


def _upload(
    engine: Any, files: Mapping[str, tuple[str, str]], recurse: bool
) -> dict[str, BaseException | None]:
    outcome: dict[str, BaseException | None] = dict.fromkeys(files)
    plain: dict[str, tuple[str, str]] = {}
    trees: dict[str, dict[str, str]] = {}  # local dir -> {host: remote dir}
    for host, (local, remote) in files.items():
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
        mkdirs = {h: f"[ -d {_quote(p)} ] || mkdir -p -- {_quote(p)}" for h, p in parents.items()}
        for r in engine.exec_per_host(mkdirs):
            if r.status != "ok":
                outcome[r.host] = _transfer_error(r, "Error creating remote directory")
                plain.pop(r.host, None)
    if plain:
        for r in engine.upload_per_host(plain):
            if r.status != "ok":
                outcome[r.host] = _transfer_error(r, "Error writing to remote file")
    for local, remotes in trees.items():
        # A directory travels as a tar stream on stdin (held in memory: trees are small).
        data = _tar_directory(local)
        cmds = {
            h: f"mkdir -p -- {_quote(d)} && tar -xf - -C {_quote(d)}" for h, d in remotes.items()
        }
        for r in engine.exec_per_host(cmds, stdin=data):
            if r.status != "ok":
                outcome[r.host] = _transfer_error(r, "Error writing to remote directory")
    return outcome


def _download_files(
    engine: Any, remotes: Mapping[str, str], dests: Mapping[str, str]
) -> dict[str, BaseException | None]:
    outcome: dict[str, BaseException | None] = dict.fromkeys(dests)
    by_remote: dict[str, list[str]] = {}
    for host, remote in remotes.items():
        by_remote.setdefault(remote, []).append(host)
    for remote, hosts in by_remote.items():
        parent = os.path.dirname(os.path.abspath(dests[hosts[0]]))
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".cvs-core-download-", dir=parent)
        try:
            try:
                paths = dict(engine.download(remote, staging, hosts=hosts, check=True))
            except Exception as exc:
                results = getattr(exc, "results", None)
                if results is None:
                    raise
                paths = dict(exc.paths)  # type: ignore[attr-defined]
                for r in results:
                    if r.status != "ok":
                        outcome[r.host] = _transfer_error(r, f"Error reading remote file {remote}")
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
    engine: Any, remotes: Mapping[str, str], dests: Mapping[str, str]
) -> dict[str, BaseException | None]:
    """recurse=True: a file or a whole directory (tar on stdout, held in memory)."""
    outcome: dict[str, BaseException | None] = dict.fromkeys(dests)
    scripts = {}
    for host, remote in remotes.items():
        q = _quote(remote)
        scripts[host] = (
            f"if [ -d {q} ]; then printf D; exec tar -C {q} -cf - .; "
            f"elif [ -e {q} ]; then printf F; exec cat -- {q}; "
            f"else echo 'Remote file or directory '{q}' does not exist' >&2; exit 2; fi"
        )
    for r in engine.exec_per_host(scripts):
        if r.status != "ok":
            outcome[r.host] = _transfer_error(r, f"Error reading remote path {remotes[r.host]}")
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
