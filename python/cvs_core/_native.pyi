"""Type stubs for the Rust extension module ``cvs_core._native`` (hand-written)."""

from asyncio import Future
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from os import PathLike
from typing import Any, Literal, TypedDict

__version__: str
"""Cargo.toml's version (the wheel's metadata and ``cvs-core --version`` say the same)."""

_Doc = Mapping[str, Any] | str | PathLike[str]
_Detailed = Mapping[str, Mapping[str, Any] | str]
_Transport = Literal["ssh", "slurm", "auto"]

class _SlurmOptions(TypedDict, total=False):
    """``Cluster(slurm=...)``: placement as in the cluster file's ``slurm`` block, plus where
    the step runs and which Slurm commands to use. None leaves a key unset."""

    job_id: str | int | None
    partition: str | None
    account: str | None
    reservation: str | None
    time: str | int | None
    chdir: str | None
    srun: str | None
    salloc: str | None
    scontrol: str | None
    scancel: str | None

# -- exceptions -------------------------------------------------------------------------------

class CvsError(Exception):
    """Root of every error cvs_core raises."""

class ConfigError(CvsError, ValueError):
    """Invalid configuration; ``issues`` lists (path, message) pairs, ``path`` the first."""

    path: str | None
    issues: list[tuple[str, str]]

class UnresolvedPlaceholderError(ConfigError):
    """A ``<changeme>`` marker is left in the cluster configuration."""

    value: str

class ScriptTooLargeError(CvsError, ValueError):
    """A setup script exceeds the inline delivery limit (bytes)."""

    size: int
    limit: int

class InternalError(CvsError):
    """A Rust panic caught at the boundary: a bug in cvs_core."""

class TransferError(CvsError):
    """A transfer failed on some hosts; ``results`` has every host, ``paths`` what arrived."""

    results: Results
    paths: dict[str, str]

# -- constants --------------------------------------------------------------------------------

VALID_CONTAINER_LIFETIMES: tuple[str, str, str]
MAX_INLINE_SETUP_SCRIPT_BYTES: int
DEFAULT_CONTAINER_ARGS: dict[str, Any]
DEFAULT_SSHD_PORT: int
CONTAINER_START_TIMEOUT_S: int
INFINIBAND_EXPANSION: str
INFINIBAND_EXPANSION_GUARDED: str
STDIN_RUNNER: str

# -- configuration ----------------------------------------------------------------------------

class ContainerSpec:
    """A validated, resolved ``container`` block (immutable)."""

    @staticmethod
    def from_dict(block: Mapping[str, Any], *, require_image: bool = True) -> ContainerSpec: ...
    @property
    def lifetime(self) -> str: ...
    @property
    def image(self) -> str | None: ...
    @property
    def name(self) -> str | None: ...
    @property
    def setup_script(self) -> str: ...
    @property
    def image_tar(self) -> str | None: ...
    @property
    def runtime(self) -> str: ...
    @property
    def use_defaults(self) -> bool: ...
    @property
    def volumes(self) -> list[str]: ...
    @property
    def devices(self) -> list[str]: ...
    @property
    def capabilities(self) -> list[str]: ...
    @property
    def security_opts(self) -> list[str]: ...
    @property
    def groups(self) -> list[str]: ...
    @property
    def ulimits(self) -> list[str]: ...
    @property
    def environment(self) -> dict[str, str]: ...
    @property
    def network(self) -> str | None: ...
    @property
    def ipc(self) -> str | None: ...
    @property
    def privileged(self) -> bool: ...
    @property
    def run_args(self) -> dict[str, Any]: ...
    @property
    def warnings(self) -> list[str]: ...
    def to_dict(self) -> dict[str, Any]: ...

class ClusterConfig:
    """The resolved cluster + testsuite configuration (immutable)."""

    @property
    def orchestrator(self) -> str: ...
    @property
    def hosts(self) -> list[str]: ...
    @property
    def head_node(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def priv_key_file(self) -> str: ...
    @property
    def password(self) -> str | None: ...
    @property
    def head_node_dict(self) -> dict[str, Any]: ...
    @property
    def node_dict(self) -> Any: ...
    @property
    def env_vars(self) -> dict[str, str]: ...
    @property
    def transport(self) -> _Transport | None:
        """The file's ``transport`` as written; None when it has none."""
    @property
    def persist(self) -> float | None:
        """The file's ``persist`` in seconds; None when it has none (or turns it off)."""
    @property
    def slurm(self) -> dict[str, str]:
        """The keys the file's ``slurm`` block sets (``job_id`` and ``time`` as strings)."""
    @property
    def effective_transport(self) -> Literal["ssh", "slurm"]:
        """The engine ``Cluster.from_config`` uses, resolved at load time: the ``transport``
        argument, else ``CVS_CORE_TRANSPORT``, else the file's ``transport``, else ssh (``auto``
        is slurm inside an allocation, i.e. with ``SLURM_JOB_ID`` set)."""
    @property
    def container(self) -> ContainerSpec | None: ...
    @property
    def warnings(self) -> list[str]: ...
    def to_dict(self) -> dict[str, Any]: ...

def load_config(
    cluster: _Doc,
    testsuite: _Doc | None = None,
    *,
    require_key_file: bool = True,
    transport: _Transport | None = None,
) -> ClusterConfig: ...
def resolve_container_lifetime(container: Any) -> Any: ...
def resolve_container_setup_script(container: Any, *, default_script: str | None = None) -> Any: ...
def resolve_cluster_placeholders(cluster: Any, *, strip_comments: bool = False) -> Any: ...
def placeholder_user() -> str: ...
def validate_container_name(name: str) -> None: ...
def sanitize_container_name(image: str) -> str: ...
def default_container_name(image: str, user: str | None = None) -> str: ...
def default_control_dir() -> str:
    """Where persistent control sockets live when none is named: ``$CVS_CORE_CONTROL_DIR``,
    else ``$XDG_RUNTIME_DIR/cvs-core``, else ``/tmp/cvs-core-<uid>``."""

def disconnect_all(
    hosts: Sequence[str] | None = None, control_dir: str | PathLike[str] | None = None
) -> list[str]:
    """End the persistent SSH masters (of ``hosts`` only, when given); the hosts whose master
    was ended, one entry per master."""

def parse_persist_duration(text: str) -> float | None:
    """A ``persist`` text (``"10m"``, ``"true"``, ``"off"``) in seconds; None for off."""

# -- lifecycle decisions ----------------------------------------------------------------------

class SetupDecision:
    """The outcome of the container-lifetime state machine for one setup (immutable)."""

    @property
    def kind(self) -> str: ...
    @property
    def proceeds(self) -> bool: ...
    @property
    def running_hosts(self) -> list[str]: ...
    @property
    def missing_hosts(self) -> list[str]: ...
    @property
    def failed_hosts(self) -> list[str]: ...
    @property
    def stale_hosts(self) -> list[str]: ...
    @property
    def message(self) -> str: ...
    @property
    def warnings(self) -> list[str]: ...

def decide_setup(
    lifetime: str,
    running: Mapping[str, Mapping[str, Any]],
    image_status: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    hosts: Sequence[str] | None = None,
    name: str = "",
    image: str = "",
) -> SetupDecision: ...
def decide_teardown(lifetime: str, container_id: str | None) -> bool: ...
def hosts_needing_sshd(precheck: Mapping[str, int | Mapping[str, Any]]) -> list[str]: ...
def parse_running_probe(name: str, results: _Detailed) -> dict[str, dict[str, Any]]: ...
def parse_image_probe(results: _Detailed) -> dict[str, dict[str, str]]: ...

# -- rendering --------------------------------------------------------------------------------

def docker_run_command(
    spec: ContainerSpec,
    *,
    prefix: str = "sudo",
    infiniband_expansion: bool = False,
    labels: Sequence[tuple[str, str]] | None = None,
) -> str: ...
def docker_run_argv(
    spec: ContainerSpec,
    *,
    prefix: str = "sudo",
    labels: Sequence[tuple[str, str]] | None = None,
) -> list[str]: ...
def docker_exec_command(
    name: str, cmd: str, *, prefix: str = "sudo", interactive: bool = False
) -> str: ...
def is_running_command(name: str, *, prefix: str = "sudo") -> str: ...
def image_sha_status_command(name: str, image: str, *, prefix: str = "sudo") -> str: ...
def remove_command(name: str, *, prefix: str = "sudo", quiet: bool = False) -> str: ...
def image_exists_command(image: str, *, prefix: str = "sudo") -> str: ...
def load_image_command(tar_path: str, *, prefix: str = "sudo") -> str: ...
def sshd_precheck_command(port: int = 2224) -> str: ...
def sshd_setup_commands(port: int = 2224) -> list[str]: ...
def quote(s: str) -> str: ...
def cvs_runtime_args(runtime_args: Mapping[str, Any] | None = None) -> str: ...
def cvs_docker_run_command(
    name: str,
    image: str,
    *,
    prefix: str = "sudo",
    volumes: Sequence[str] | None = None,
    environment: Mapping[str, Any] | Sequence[str] | None = None,
    runtime_args: Mapping[str, Any] | None = None,
    device_expansion: str | None = None,
) -> str: ...
def provision_command(
    script: bytes, *, label: str = "setup script", limit: int | None = None
) -> str: ...
def provision_stdin_command(name: str, *, prefix: str = "sudo") -> str: ...
def _debug_panic() -> None: ...
def _settle_cancelled() -> None:
    """Run at exit (atexit): wait, bounded, for cancelled async calls to kill their commands."""

# -- parallel SSH -----------------------------------------------------------------------------

_Progress = Callable[[str, str], object]

class HostResult:
    """One host's outcome of a call (immutable)."""

    @property
    def host(self) -> str: ...
    @property
    def status(self) -> str:
        """ok, exit_nonzero, signal, timeout, inactivity_timeout, unreachable, auth_failed,
        host_key_mismatch, cancelled or error."""
    @property
    def exit_code(self) -> int: ...
    @property
    def signal(self) -> str | None: ...
    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...
    @property
    def stdout_bytes(self) -> bytes: ...
    @property
    def stderr_bytes(self) -> bytes: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def error(self) -> str | None: ...
    @property
    def ok(self) -> bool: ...
    @property
    def path(self) -> str | None: ...

class OutputGroup:
    """Hosts that produced the same (stdout, status, exit code)."""

    hosts: list[str]
    status: str
    exit_code: int
    stdout: str

class Results:
    """One HostResult per requested host, in the requested order."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[HostResult]: ...
    def __getitem__(self, key: str | int) -> HostResult: ...
    def __contains__(self, host: str) -> bool: ...
    @property
    def hosts(self) -> list[str]: ...
    @property
    def ok(self) -> bool: ...
    @property
    def failed_hosts(self) -> list[str]: ...
    @property
    def elapsed_s(self) -> float: ...
    def fold(self) -> list[OutputGroup]: ...
    def summary(self) -> str: ...
    def to_json(self) -> str: ...

class Cluster:
    """Parallel SSH to a fixed set of hosts; one OpenSSH master per host, kept across calls."""

    def __init__(
        self,
        hosts: Sequence[str],
        user: str | None = None,
        key: str | PathLike[str] | None = None,
        *,
        port: int | None = None,
        ssh_config: str | PathLike[str] | None = None,
        known_hosts: str | PathLike[str] | None = None,
        host_key_policy: str = "strict",
        jump_host: str | None = None,
        connect_timeout: float = 10.0,
        max_parallel: int | None = None,
        password: str | None = None,
        idle_timeout: float = 600.0,
        keepalive: float = 30.0,
        transport: _Transport | None = None,
        slurm: _SlurmOptions | None = None,
        persist: bool | float | str | None = None,
        control_dir: str | PathLike[str] | None = None,
        max_connect: int | None = None,
    ) -> None:
        """``transport``: an explicit value wins, else ``CVS_CORE_TRANSPORT``, else ssh.

        ``persist`` (``"10m"``, seconds, ``True`` = 10 minutes, ``False`` = off; default:
        ``CVS_CORE_PERSIST``, else off): each host's SSH master outlives the process for that
        idle time, with its control socket in ``control_dir`` (default
        ``default_control_dir()``; 0700 and owned by the user, or refused), and a later process
        with the same settings re-attaches to it instead of reconnecting. ``close()`` leaves
        persistent masters running; ``disconnect_all()`` ends them. ``max_connect`` bounds the
        hosts connecting at once (default 64)."""
    @classmethod
    def from_config(cls, config: ClusterConfig, **kwargs: Any) -> Cluster:
        """Hosts, user, key and password from ``config``; without ``transport=`` the
        configuration's ``effective_transport``; the file's ``slurm`` block as ``slurm=`` (the
        keys of a ``slurm=`` keyword win)."""
    @property
    def hosts(self) -> list[str]: ...
    @property
    def transport(self) -> Literal["ssh", "slurm"]:
        """The engine this cluster resolved to."""
    def exec(
        self,
        cmd: str,
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        inactivity_timeout: float | None = None,
        stdin: bytes | str | None = None,
        *,
        progress: _Progress | None = None,
    ) -> Results: ...
    def exec_per_host(
        self,
        commands: Mapping[str, str],
        timeout: float | None = None,
        inactivity_timeout: float | None = None,
        stdin: bytes | str | None = None,
        *,
        progress: _Progress | None = None,
    ) -> Results: ...
    def upload(
        self,
        local: str | PathLike[str],
        remote: str,
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        *,
        progress: _Progress | None = None,
    ) -> Results: ...
    def upload_per_host(
        self,
        files: Mapping[str, tuple[str | PathLike[str], str]],
        timeout: float | None = None,
        *,
        progress: _Progress | None = None,
    ) -> Results: ...
    def download(
        self,
        remote: str,
        local_dir: str | PathLike[str],
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        *,
        check: bool = True,
        progress: _Progress | None = None,
    ) -> dict[str, str]: ...
    def master_pids(self) -> list[int]: ...
    def interrupt(self) -> None:
        """Cancel every call running on this cluster, from any thread: each kills its remote
        commands (as Ctrl-C does) and returns with its unfinished hosts ``cancelled``."""
    def close(self) -> None:
        """End every master. Async calls that were cancelled first get up to 15 s to kill
        their remote commands."""
    def __enter__(self) -> Cluster: ...
    def __exit__(self, *args: object) -> bool: ...

    # asyncio twins: the same arguments and results, on the same runtime, connections and
    # ``max_parallel`` as the blocking calls. Each returns a coroutine (for ``await``,
    # ``create_task``, ``gather``); call it inside the running loop: the work starts at the
    # call. Cancelling the awaiting task, or an ``asyncio.wait_for`` timeout, kills the call's
    # remote commands as a timeout does (in the background; other calls are unaffected).
    # Progress callbacks and logging run on the loop's thread; an invalid argument raises when
    # awaited.
    def exec_async(
        self,
        cmd: str,
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        inactivity_timeout: float | None = None,
        stdin: bytes | str | None = None,
        *,
        progress: _Progress | None = None,
    ) -> Coroutine[Any, Any, Results]: ...
    def exec_per_host_async(
        self,
        commands: Mapping[str, str],
        timeout: float | None = None,
        inactivity_timeout: float | None = None,
        stdin: bytes | str | None = None,
        *,
        progress: _Progress | None = None,
    ) -> Coroutine[Any, Any, Results]: ...
    def upload_async(
        self,
        local: str | PathLike[str],
        remote: str,
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        *,
        progress: _Progress | None = None,
    ) -> Coroutine[Any, Any, Results]: ...
    def upload_per_host_async(
        self,
        files: Mapping[str, tuple[str | PathLike[str], str]],
        timeout: float | None = None,
        *,
        progress: _Progress | None = None,
    ) -> Coroutine[Any, Any, Results]: ...
    def download_async(
        self,
        remote: str,
        local_dir: str | PathLike[str],
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        *,
        check: bool = True,
        progress: _Progress | None = None,
    ) -> Coroutine[Any, Any, dict[str, str]]:
        """Like ``download``: ``{host: local_path}``, or ``TransferError`` when awaited."""
    def __aenter__(self) -> Future[Cluster]: ...
    def __aexit__(self, *args: object) -> Future[bool]:
        """Closes as ``close()`` does, without blocking the loop."""

# -- container lifecycle ----------------------------------------------------------------------

class HostReport:
    """One host's part of a lifecycle operation (immutable)."""

    @property
    def host(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def detail(self) -> str: ...
    @property
    def container_id(self) -> str: ...
    @property
    def started_at(self) -> str: ...
    @property
    def container_image(self) -> str: ...
    @property
    def local_image(self) -> str: ...
    @property
    def config_hash(self) -> str: ...
    @property
    def running(self) -> bool: ...
    @property
    def sshd_up(self) -> bool: ...
    @property
    def unfinished(self) -> bool:
        """Launched by cvs-core, but its provisioning never completed (setup replaces it)."""
    @property
    def sshd_holder(self) -> str:
        """Who holds the sshd port when it is not this container's sshd ("" otherwise)."""
    @property
    def output(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...

class LifecycleReport:
    """Outcome of plan/setup/setup_sshd/teardown/status: per-host detail and one line."""

    @property
    def op(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def message(self) -> str: ...
    @property
    def warnings(self) -> list[str]: ...
    @property
    def elapsed_s(self) -> float: ...
    @property
    def hosts(self) -> list[HostReport]: ...
    def __getitem__(self, host: str) -> HostReport: ...
    def __bool__(self) -> bool: ...
    def to_dict(self) -> dict[str, Any]: ...

class ContainerLifecycle:
    """Run, attach to, check and remove the per-node containers of a ClusterConfig."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        cluster: Cluster | None = None,
        ssh_config: str | PathLike[str] | None = None,
        known_hosts: str | PathLike[str] | None = None,
        host_key_policy: str = "strict",
        connect_timeout: float = 10.0,
        pull: str | None = None,
        start_timeout: float = 900.0,
        sshd_port: int = 2224,
        recreate: bool = False,
        run_id: str | None = None,
        owner: str | None = None,
        inline_provision: bool = False,
        lock: bool = True,
        keepalive: float = 30.0,
        provision_timeout: float = 1800.0,
    ) -> None: ...
    @property
    def config_hash(self) -> str: ...
    @property
    def run_id(self) -> str:
        """``cvs.run-id`` of the containers this object creates (cleanup removes only those)."""
    @property
    def cluster(self) -> Cluster: ...
    def plan(self, *, progress: _Progress | None = None) -> LifecycleReport: ...
    def setup(self, *, progress: _Progress | None = None) -> LifecycleReport:
        """Launch, start or attach per the lifetime; provision fresh containers and record it.

        Interrupted (Ctrl-C, or any exception from a signal handler), it stops the remote work
        of the step on every host and removes what this run created, then re-raises; the
        exception's ``report`` attribute is the LifecycleReport of what was done."""
    def setup_sshd(self, *, progress: _Progress | None = None) -> LifecycleReport: ...
    def teardown(
        self, *, orphans: bool = False, progress: _Progress | None = None
    ) -> LifecycleReport: ...
    def status(self, *, progress: _Progress | None = None) -> LifecycleReport: ...
    def exec(
        self,
        cmd: str,
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        *,
        progress: _Progress | None = None,
    ) -> Results: ...

    # asyncio twins (see Cluster): same results. A cancelled step stops its remote work and
    # removes what this run created, as an interrupted blocking step does, in the background;
    # its report is logged as a warning.
    def plan_async(
        self, *, progress: _Progress | None = None
    ) -> Coroutine[Any, Any, LifecycleReport]: ...
    def setup_async(
        self, *, progress: _Progress | None = None
    ) -> Coroutine[Any, Any, LifecycleReport]: ...
    def setup_sshd_async(
        self, *, progress: _Progress | None = None
    ) -> Coroutine[Any, Any, LifecycleReport]: ...
    def teardown_async(
        self, *, orphans: bool = False, progress: _Progress | None = None
    ) -> Coroutine[Any, Any, LifecycleReport]: ...
    def status_async(
        self, *, progress: _Progress | None = None
    ) -> Coroutine[Any, Any, LifecycleReport]: ...
    def exec_async(
        self,
        cmd: str,
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        *,
        progress: _Progress | None = None,
    ) -> Coroutine[Any, Any, Results]: ...

def effective_transport(configured: str | None = None) -> Literal["ssh", "slurm"]:
    """``configured`` (``ssh|slurm|auto``) overridden by ``CVS_CORE_TRANSPORT``; ``auto`` is
    Slurm inside an allocation (``SLURM_JOB_ID`` set)."""
