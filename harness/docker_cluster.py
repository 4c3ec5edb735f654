"""A multi-node Docker "cluster" on one Linux machine, for end-to-end container tests.

Node i (0-based index into ``hosts``) is a set of namespaces with its own
- network namespace (``netns[i]``) at ``<subnet>.<11+i>/24`` on a private bridge (``bridge``,
  ``<subnet>.1``) with NO default route: nodes reach only each other and the root namespace,
  so nothing a test does can send traffic anywhere else. Kernel object names derive from the
  subnet, so clusters on different subnets coexist; ``subnet="auto"`` picks a free 10.77.X
  (what the pytest fixture uses, so concurrent test sessions do not collide);
- mount/UTS/IPC/PID namespaces: hostname ``names[i]`` = ``<prefix><i+1>`` (``node1``...,
  whatever the subnet), private ``/run``, ``/tmp``,
  ``/root``, ``/etc/hosts``, ``/etc/docker`` (``harness/node_harness.sh`` is the node's PID 1);
- dockerd (+ its own containerd) on the node's default socket, so ``sudo docker ...`` over ssh
  works; the harness reaches the same engine from the root namespace (``docker(i, ...)``);
- OpenSSH sshd on port 22 (root, key auth), with real host-key checking: ``known_hosts`` lists
  every node's key, plus one ``@cert-authority`` line for the harness host CA, which also
  signed the host keys of the test images and of the sshd bundle, so an sshd started inside a
  container (say on port 2224) is checked strictly too.

Containers run with ``--network host`` share the node's network namespace: port 2224 in a
container on node i is ``hosts[i]:2224``. The harness work directory is visible inside every
node at ``/run/cvs`` (``NODE_SHARE``); start a container with ``-v /run/cvs:/run/cvs:ro`` to give
it the sshd bundle (``/run/cvs/sshd-bundle.tar``) and its installer
(``sh /run/cvs/install_sshd_from_bundle.sh``), and the harness client key in
``/run/cvs/ssh/authorized_keys`` (the test images' sshd_config already reads that file).

Images (no registry anywhere: always pass ``--pull never``): ``IMAGE_WITH_SSHD`` and
``IMAGE_NO_SSHD`` are built from this host's binaries by ``harness/build_images.sh`` and loaded
into every node with the same image IDs. ``import_image(i, src, tag)`` puts another image under
a tag on one node (image skew); ``variant_tar`` is a ready different rootfs for that, and
``reset_images()`` restores the originals. Built tars are cached (``CVS_HARNESS_CACHE``, default
``~/.cache/cvs-core/docker-harness``), so only the first start pays the build (~6-15 s).

What works and what does not on these nodes (a Firecracker VM, measured):
- ``--privileged`` works through ``harness/runc-capfilter`` (dockerd's default runtime here):
  Docker 20.10 asks for every capability the kernel knows, but CAP_SYS_RESOURCE is missing from
  the bounding set, so plain runc fails "unable to apply caps". ``--cap-add SYS_RESOURCE`` is
  therefore silently dropped;
- ``--ulimit memlock=-1`` FAILS ("error setting rlimit type 8: operation not permitted"):
  raising a hard limit needs CAP_SYS_RESOURCE. Limits up to the node's own hard limit
  (``ulimit -Hl``, 8192 KiB here) work, e.g. ``--ulimit memlock=8388608:8388608``;
- there is no ``/dev/kfd``, ``/dev/dri`` or ``/dev/infiniband``: ``--device`` on them fails.
  Tests therefore configure ``"runtime": {"defaults": false}`` with explicit args;
- ``--network host``, ``--ipc host``, ``--cap-add SYS_PTRACE/IPC_LOCK/SYS_ADMIN``,
  ``--security-opt seccomp=unconfined``, ``--group-add video``, ``--shm-size``, ``-v`` of node
  paths work. dockerd runs with ``--bridge=none``: a container without ``--network host``
  gets loopback only, and ``docker pull`` fails at once ("network is unreachable");
- ``security-opt apparmor=unconfined`` is accepted (AppArmor is not enabled here).

Each node's root ``~/.ssh`` looks like a real user's: ``authorized_keys`` (the harness key),
``id_ed25519`` (the same key, for node-to-node ssh), ``config`` and ``known_hosts``; it is what
cvs-core copies into containers. ``partition(i)`` downs node i's bridge port: new connections
time out (ConnectTimeout), established ones hang until their own timeouts. ``stop_sshd(i)``
closes port 22 (connections are refused) and leaves established sessions alone.

Slurm mode (``DockerCluster(..., slurm=True)``, ``up --slurm``; Debian's ``slurmctld slurmd
slurm-client munge``, see ``slurm_prerequisites_missing()``): a real Slurm 22.05 on the same
nodes. The root namespace is the "login node": a munged on ``munge_socket``
(``/run/munge-cvs-<net id>/munge.socket.2``) and slurmctld on a free TCP port
(``slurmctld_port``, picked from 20000-29999 starting at a port derived from the subnet), with
its state and logs under ``<workdir>/slurm``. Every node runs its own munged on the same socket
path string (its /run is private) with the same key, and ``slurmd -f`` on a copy of
``slurm.conf`` in its private ``/run/slurm-cvs``; ``slurmd.log`` and ``munged.log`` are in the
node's harness directory. NodeName = the node's hostname, one partition ``cvs`` (Default=YES)
with every node, CPUs = the host's (2 here: more makes the nodes INVALID), RealMemory=1000,
proctrack/pgid, task/none, no cgroups, SlurmdTimeout=30, ReturnToService=2 (the template,
with the reasons, is ``harness/slurm.conf.in``). ``start()`` returns once every node is idle.
- ``slurm_env()``: what a client needs (``SLURM_CONF``, and ``SLURM_WORKING_DIR=/tmp``: srun's
  cwd must exist on the nodes, whose /tmp and /root are private; ``--chdir`` wins). Merge it
  into a copy of os.environ without inherited ``SLURM_*`` variables;
- ``slurm(*argv)``: a client command (srun, salloc, sinfo, squeue, scontrol, scancel) with that
  environment -> CompletedProcess; ``slurm_nodes`` (names, in the order of ``hosts``);
  ``slurm_node_state(name)`` (``IDLE``, ``MIXED``, ``IDLE+COMPLETING``,
  ``IDLE+NOT_RESPONDING``, ``DOWN+NOT_RESPONDING``...), ``slurm_nodes_info()``,
  ``wait_slurm_idle()``;
- ``salloc(3 | "node1,node2" | [names] | "-N 3", ...)`` -> job id of a ``salloc --no-shell``
  allocation (steps: ``srun --jobid J --overlap``), ``scancel("J" | "J.S")`` (waits until
  squeue no longer lists it);
- ``stop_slurmd(i)`` / ``start_slurmd(i)``: kill node i's slurmd (verified gone; its running
  steps and munged stay) / start it again and wait until slurmctld has its registration.
Each node has 2 CPUs: at most two jobs (allocations) run on a node at once, more pend;
``--overlap`` steps inside one allocation do not count.
Measured here (2 vCPU Firecracker VM, Slurm 22.05.8, munge 0.5.15):
- Slurm mode adds 0.17-0.25 s to ``start()`` (munged + slurmctld 0.08-0.14 s, slurmd on 3 nodes
  until all idle 0.1-0.15 s); ``stop()`` stays ~1.5 s (slurmctld stops while the nodes do);
- latency on 3 nodes, median of 10: ``srun -N3 true`` (a new job) 52 ms (46-60),
  ``srun --jobid J --overlap -N3 true`` (a step in an allocation) 44 ms (39-49), -N1 43 ms;
- dead slurmd (``stop_slurmd``): slurmctld does not know for a while, places steps on the node,
  and srun fails after 11 s with "srun: error: Task launch for StepId=J.0 failed on node node2:
  Communication connection failure" (rc 233; tasks on the other nodes run); the node stays
  ``IDLE+COMPLETING`` until its slurmd is back. It turns ``+NOT_RESPONDING`` 15-31 s and
  ``DOWN+NOT_RESPONDING`` 40-49 s after the stop; then srun waits forever ("Required node not
  available (down, drained or reserved)") unless ``--immediate=S`` or a client timeout.
  ``start_slurmd`` takes 0.05-0.08 s; the registration returns a DOWN node to IDLE and ends the
  failed job at once;
- ``partition(i)``: the same launch failure after 12 s ("Communication connection failure"),
  slurmd keeps running, ``+NOT_RESPONDING`` after ~25 s. After ``heal(i)`` the node responds
  within 1.5 s. The job that failed on it is COMPLETING until slurmd gets TERMINATE_JOB: healed
  right after the failure, slurmctld's pending request gets through and the node is idle within
  1 s; healed 25 s later, it waited for slurmctld's periodic resend, 37 s after the heal (~50 s
  after the job ended). So after a heal: ``wait_slurm_idle()``.

Environment: ``CVS_HARNESS_CACHE`` (cache dir), ``CVS_STORAGE_DRIVER`` (overlay2 / vfs; probed
when unset), ``CVS_RUNC_WRAPPER`` (auto / 0 / 1), ``CVS_KEEP_ON_FAIL=1`` (keep a failed start
for debugging), ``CVS_DOCKER_CLI``; the CLI and the pytest fixture also read
``CVS_HARNESS_PREFIX`` / ``CVS_HARNESS_SUBNET``.

Stopping ends exactly what ``start()`` made: the processes it spawned (verified by their command
line, never by name), everything inside the namespaces it created, the namespaces, the bridge,
the cgroups named after its nodes. In Slurm mode also slurmctld (and its slurmscriptd) and
munged in the root namespace by their recorded PIDs (checked by start time and command line),
the munge socket directory, and first each node's slurmd, munged and any slurmstepd (they would
die with the node's PID namespace anyway); the logs go to ``<workdir>/logs``. State lives in
``<workdir>/state.json``, so ``down`` from another process (or a later ``start()`` on the same
workdir) cleans up after a crashed run.

Command line: ``python harness/docker_cluster.py up N [DIR] [--slurm] | down [DIR] | status [DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

try:  # imported as harness.docker_cluster, or run as a script from harness/
    from harness.proc import alive as _alive
    from harness.proc import banner as _banner
    from harness.proc import children as _children
    from harness.proc import cmdline as _cmdline
    from harness.proc import comm as _comm
    from harness.proc import descendants as _descendants
    from harness.proc import keygen as _keygen
    from harness.proc import kill as _kill
except ImportError:  # pragma: no cover - script mode
    from proc import alive as _alive  # type: ignore[no-redef]
    from proc import banner as _banner  # type: ignore[no-redef]
    from proc import children as _children  # type: ignore[no-redef]
    from proc import cmdline as _cmdline  # type: ignore[no-redef]
    from proc import comm as _comm  # type: ignore[no-redef]
    from proc import descendants as _descendants  # type: ignore[no-redef]
    from proc import keygen as _keygen  # type: ignore[no-redef]
    from proc import kill as _kill  # type: ignore[no-redef]

HARNESS_DIR = Path(__file__).resolve().parent
NODE_SCRIPT = HARNESS_DIR / "node_harness.sh"
BUILD_SCRIPT = HARNESS_DIR / "build_images.sh"
INSTALL_SCRIPT = HARNESS_DIR / "install_sshd_from_bundle.sh"
CAPFILTER = HARNESS_DIR / "runc-capfilter"

IMAGE_WITH_SSHD = "cvs-test/with-sshd:latest"
IMAGE_NO_SSHD = "cvs-test/no-sshd:latest"
NODE_SHARE = "/run/cvs"  # the workdir, as every node (and a container with -v) sees it
SSHD_BUNDLE_IN_NODE = f"{NODE_SHARE}/sshd-bundle.tar"
INSTALL_SSHD_IN_NODE = f"{NODE_SHARE}/install_sshd_from_bundle.sh"

DEFAULT_WORKDIR = Path("/tmp/cvs-docker-cluster")
DEFAULT_PREFIX = "node"
DEFAULT_SUBNET = "10.77.0"
STD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SSHD = "/usr/sbin/sshd"
# Bumped when the cached artefacts' layout changes, so old caches are not reused.
CACHE_FORMAT = "1"
# Changes applied at `docker import`: an imported rootfs has no config at all.
IMPORT_CHANGES = ("--change", f"ENV PATH={STD_PATH}", "--change", 'CMD ["/bin/bash"]')
BRIDGE_ALIAS = "cvs-core docker harness"

# Slurm mode (slurm=True)
SLURM_TEMPLATE = HARNESS_DIR / "slurm.conf.in"
SLURM_PARTITION = "cvs"
# inside every node's private /run: slurmd's copy of slurm.conf, its spool and pid file
SLURM_NODE_DIR = "/run/slurm-cvs"
SLURM_NODE_CONF = f"{SLURM_NODE_DIR}/slurm.conf"
SLURMD_PORT = 6818  # per network namespace: every node of every cluster can use it
SLURMD_TIMEOUT = 30  # seconds until slurmctld sets a silent node DOWN (Slurm's default: 300)
# srun's cwd must exist on the nodes, whose /tmp and /root are private: the caller's cwd
# (often under /tmp) usually does not. --chdir on the command line wins.
SLURM_WORKING_DIR = "/tmp"
# slurmctld ports are picked in [base, base + span): below the ephemeral range (32768+), so an
# outgoing connection never holds the port we picked, and away from Slurm's 6817-6819
SLURMCTLD_PORT_BASE = 20000
SLURMCTLD_PORT_SPAN = 10000

# tool -> Debian package, for prerequisites_missing()
_TOOLS = {
    "dockerd": "docker.io",
    "containerd": "docker.io",
    "runc": "docker.io",
    "docker": "docker.io",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "ip": "iproute2",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "sudo": "sudo",
    "pgrep": "procps",
    "tar": "tar",
    "ldd": "libc-bin",
    "dpkg": "dpkg",
}
# tool -> Debian package, for slurm_prerequisites_missing()
_SLURM_TOOLS = {
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "slurmstepd": "slurmd",
    "srun": "slurm-client",
    "salloc": "slurm-client",
    "sinfo": "slurm-client",
    "squeue": "slurm-client",
    "scontrol": "slurm-client",
    "scancel": "slurm-client",
    "munged": "munge",
}


class CommandError(subprocess.CalledProcessError):
    """A CalledProcessError whose message shows the command's stderr (test failures then say
    why docker refused)."""

    def __str__(self) -> str:
        err = (self.stderr or "").strip()
        return super().__str__() + (f"\nstderr: {err[-2000:]}" if err else "")


def _log(msg: str) -> None:
    print(f"[docker-harness {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _which(tool: str) -> str | None:
    # root's PATH may lack the sbin directories (sudo-less shells, CI): look there too
    return shutil.which(tool) or shutil.which(tool, path=STD_PATH)


def docker_cli() -> str:
    """The docker client: $CVS_DOCKER_CLI, else docker.io's own (the daemon's version), else
    whatever `docker` is on PATH."""
    env = os.environ.get("CVS_DOCKER_CLI")
    if env:
        return env
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    return _which("docker") or "docker"


def prerequisites_missing() -> str | None:
    """Why the docker harness cannot run here, or None when it can."""
    if sys.platform != "linux":
        return "needs Linux (network namespaces, dockerd)"
    if os.geteuid() != 0:
        return "needs root (network namespaces, mounts, one dockerd per node)"
    missing = sorted({pkg for tool, pkg in _TOOLS.items() if not _which(tool)})
    if not os.access(SSHD, os.X_OK):
        missing = sorted({*missing, "openssh-server"})
    if missing:
        return (
            f"missing Debian packages: {' '.join(missing)} "
            "(apt-get install -y docker.io sudo iproute2 procps util-linux "
            "openssh-server openssh-client)"
        )
    if not Path("/sys/fs/cgroup").is_dir():
        return "no /sys/fs/cgroup: dockerd cannot run"
    try:
        probe = subprocess.run(
            ["unshare", "--mount", "--net", "--pid", "--fork", "true"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot create namespaces: {e}"
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.strip()[:200]}"
    return None


def slurm_prerequisites_missing() -> str | None:
    """Why the harness cannot run in Slurm mode here (the docker harness's own needs, plus
    Debian's Slurm daemons, client and munge), or None when it can."""
    why = prerequisites_missing()
    if why:
        return why
    missing = sorted({pkg for tool, pkg in _SLURM_TOOLS.items() if not _which(tool)})
    if missing:
        return (
            f"missing Debian packages for Slurm mode: {' '.join(missing)} "
            "(apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge)"
        )
    if not SLURM_TEMPLATE.is_file():
        return f"missing {SLURM_TEMPLATE}"
    return None


# --------------------------------------------------------------------------------- cache
def cache_root() -> Path:
    env = os.environ.get("CVS_HARNESS_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cvs-core" / "docker-harness"


def _cache_key() -> str:
    """Changes whenever a built artefact would: the build scripts, or the host binaries and
    engine they are made from / imported with."""
    h = hashlib.sha256(CACHE_FORMAT.encode())
    for script in (BUILD_SCRIPT, INSTALL_SCRIPT):
        h.update(script.read_bytes())
    for tool in ("sshd", "ssh-keygen", "ssh", "bash", "dash", "ls", "tar", "dockerd"):
        path = _which(tool)
        if path:
            st = os.stat(path)
            h.update(f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    for lib in ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/openssh/sftp-server"):
        with contextlib.suppress(OSError):
            st = os.stat(lib)
            h.update(f"{lib}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive flock: two harnesses starting at once build the cache only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_artefacts() -> Path:
    """The cache entry holding the rootfs tars, the sshd bundle and the host CA; built with
    build_images.sh on first use (older entries are pruned)."""
    root = cache_root()
    entry = root / _cache_key()
    if (entry / "complete").exists():
        with contextlib.suppress(OSError):
            os.utime(entry)  # "last used", for the pruning below
        return entry
    with _locked(root / ".lock"):
        if (entry / "complete").exists():
            return entry
        t0 = time.monotonic()
        _log(f"building test images and sshd bundle into {entry} (once per cache key)")
        tmp = root / f".{entry.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT), str(tmp)],
            capture_output=True,
            text=True,
            env={**os.environ, "PATH": STD_PATH},
        )
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"build_images.sh failed:\n{proc.stderr[-3000:]}")
        (tmp / "complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        # entries of other keys (older checkouts, upgraded packages) unused for a day: a
        # harness of another checkout may still be running from a recent one
        for old in root.iterdir():
            stale = time.time() - old.stat().st_mtime > 86400
            if old.is_dir() and not old.name.startswith(".") and old.name != entry.name and stale:
                shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
        _log(f"built in {time.monotonic() - t0:.1f}s")
    return entry


# ------------------------------------------------------------------------------ helpers
def _run(argv: list[str], *, check: bool = True, timeout: float = 60, **kw: Any):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed (rc={proc.returncode}): {proc.stderr.strip()[:2000]}"
        )
    return proc


def _wait_gone(pid: int, timeout: float, popen: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None:
            if popen.poll() is not None:
                return True
        elif not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _docker_ping(sock: Path, timeout: float = 1.0) -> bool:
    """dockerd answers its API (GET /_ping) on the unix socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0]
    except OSError:
        return False


def _is_docker_save(path: Path) -> bool:
    try:
        with tarfile.open(path) as tf:
            return any(m.name in ("manifest.json", "./manifest.json") for m in tf.getmembers())
    except (tarfile.TarError, OSError):
        return False


def _overlay_works(scratch: Path) -> bool:
    """Can overlayfs be mounted on this filesystem? (overlay2 needs it; else vfs.) Probed in a
    throw-away mount namespace so nothing is left mounted."""
    shutil.rmtree(scratch, ignore_errors=True)
    for d in ("l", "u", "w", "m"):
        (scratch / d).mkdir(parents=True)
    opts = f"lowerdir={scratch}/l,upperdir={scratch}/u,workdir={scratch}/w"
    try:
        proc = subprocess.run(
            ["unshare", "--mount", "mount", "-t", "overlay", "overlay", "-o", opts, f"{scratch}/m"],
            capture_output=True,
            timeout=10,
        )
        return proc.returncode == 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _marker(name: str, workdir: Path) -> bytes:
    """What the command line of a node's unshare / PID 1 contains: proof that a PID is ours."""
    return b"node_harness.sh\0init\0" + name.encode() + b"\0" + str(workdir).encode() + b"\0"


# -------------------------------------------------------------------------------- teardown
def _teardown(workdir: Path, popens: dict[str, subprocess.Popen] | None = None) -> list[str]:
    """Undo everything state.json records. Returns problems (empty: all clean)."""
    state_file = workdir / "state.json"
    if not state_file.exists():
        return []
    t0 = time.monotonic()
    state = json.loads(state_file.read_text())
    problems: list[str] = []
    popens = popens or {}
    nodes = state.get("nodes", [])
    slurm = state.get("slurm") or {}
    with ThreadPoolExecutor(max_workers=len(nodes) + 1) as pool:
        # slurmctld takes ~2 s to exit: stopped while the nodes stop
        root = pool.submit(_stop_slurm_root, slurm, popens) if slurm else None
        for res in pool.map(
            lambda nd: _stop_node(nd, workdir, popens.get(nd["name"]), slurm), nodes
        ):
            problems.extend(res)
        if root is not None:
            problems.extend(root.result())
    # backstop: anything still inside a network namespace WE created is ours (a node's PID
    # namespace normally dies with its PID 1 already)
    for ns in state.get("netns", []):
        if not Path(f"/run/netns/{ns}").exists():
            continue
        pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
        for p in pids:
            _kill(int(p), signal.SIGKILL)
        for p in pids:
            _wait_gone(int(p), 5)
        r = _run(["ip", "netns", "del", ns], check=False)
        if r.returncode != 0:
            problems.append(f"ip netns del {ns}: {r.stderr.strip()}")
    bridge = state.get("bridge", "")
    if state.get("iptables_rule"):
        _run(["iptables", "-D", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"], check=False)
    if state.get("bridge_created") and Path(f"/sys/class/net/{bridge}").exists():
        r = _run(["ip", "link", "del", bridge], check=False)
        if r.returncode != 0:
            problems.append(f"ip link del {bridge}: {r.stderr.strip()}")
    for cg in state.get("cgroups", []):
        problems.extend(_remove_cgroup(cg))
    # keep the logs (workdir/logs) and the keys (workdir/ssh) for the next run; drop the rest
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    for nd in nodes:
        d = workdir / "nodes" / nd["name"]
        for f in d.glob("*.log"):
            with contextlib.suppress(OSError):
                shutil.copyfile(f, logs / f"{nd['name']}-{f.name}")
    for f in (workdir / "slurm" / "log").glob("*"):
        with contextlib.suppress(OSError):
            shutil.copyfile(f, logs / f"slurm-{f.name}")
    shutil.rmtree(workdir / "nodes", ignore_errors=True)
    # the munge key and slurmctld's state are of this run only
    shutil.rmtree(workdir / "slurm", ignore_errors=True)
    if (workdir / "nodes").exists():
        problems.append(f"could not remove {workdir / 'nodes'}")
    state_file.unlink()
    _log(
        f"down in {time.monotonic() - t0:.1f}s"
        + (f" ({len(problems)} problems)" if problems else "")
    )
    return problems


def _stop_node(
    nd: dict, workdir: Path, popen: subprocess.Popen | None, slurm: dict | None = None
) -> list[str]:
    name, upid = nd["name"], nd.get("unshare_pid")
    if not upid:
        return []
    marker = _marker(name, workdir)
    if marker not in _cmdline(upid) or not _alive(upid):
        if popen is not None:
            popen.poll()
        return []  # already gone (or the PID was reused by something else: not ours to kill)
    if slurm:
        # 0. Slurm's daemons first, so they exit on their own terms (slurmd's last log lines);
        #    whatever is left dies with the node's PID namespace below anyway
        for pid in [c for c in _children(upid) if marker in _cmdline(c)]:
            _stop_slurm_node(nd, pid, slurm)
    sock = workdir / "nodes" / name / "docker.sock"
    # 1. remove containers through the engine, so containerd/runc clean up their cgroups
    if _docker_ping(sock):
        cli = [docker_cli(), "-H", f"unix://{sock}"]
        with contextlib.suppress(subprocess.TimeoutExpired, RuntimeError):
            ids = _run([*cli, "ps", "-aq"], check=False, timeout=10).stdout.split()
            if ids:
                _run([*cli, "rm", "-f", *ids], check=False, timeout=30)
    # 2. TERM the node's PID 1 (it forwards TERM to dockerd and sshd and exits when they are
    #    gone; then the kernel kills whatever is left in the node's PID namespace), then unshare
    init = [c for c in _children(upid) if marker in _cmdline(c)]
    for pid in init:
        _kill(pid, signal.SIGTERM)
    if not _wait_gone(upid, 15, popen):
        _kill(upid, signal.SIGTERM)  # unshare --kill-child: its death SIGKILLs the node's PID 1
        if not _wait_gone(upid, 5, popen):
            _kill(upid, signal.SIGKILL)
            _wait_gone(upid, 5, popen)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(5)
    return [f"{name}: unshare {upid} still running"] if _alive(upid) else []


def _slurm_markers(slurm: dict) -> dict[str, bytes]:
    """What the command line of each of a cluster's Slurm-mode daemons contains (a node's munged
    and slurmd by their comm; in the root namespace munged and slurmctld)."""
    return {
        "slurmd": b"-f\0" + SLURM_NODE_CONF.encode() + b"\0",
        "munged": b"--socket=" + str(slurm.get("munge_socket", "")).encode() + b"\0",
        "slurmctld": b"-f\0" + str(slurm.get("conf", "")).encode() + b"\0",
    }


def _ours(rec: list | None, marker: bytes) -> int | None:
    """The PID of a recorded [pid, start time] process while it still runs, is the same process
    (start time: PIDs get reused) and has `marker` in its command line; else None."""
    if not rec or not rec[0]:
        return None
    pid = int(rec[0])
    if _alive(pid) and _proc_start(pid) == str(rec[1]) and marker in _cmdline(pid):
        return pid
    return None


def _term_wait(pids: list[int], timeout: float, popen: subprocess.Popen | None = None) -> list[int]:
    """TERM, wait up to `timeout`, then KILL; returns the PIDs that still run."""
    for pid in pids:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        _wait_gone(pid, max(0.0, deadline - time.monotonic()), popen)
    for pid in pids:
        if _alive(pid):
            _kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5, popen)
    return [p for p in pids if _alive(p)]


def _node_slurm_daemons(init: int, comm: str, slurm: dict) -> list[int]:
    """Root-namespace PIDs of the node's daemons named `comm` (munged or slurmd) that the
    harness started: daemonized, so children of the node's PID 1 (`init`, verified by the
    caller), with the harness's own arguments."""
    marker = _slurm_markers(slurm)[comm]
    return [c for c in _children(init) if _comm(c) == comm and marker in _cmdline(c)]


def _stop_slurm_node(nd: dict, init: int, slurm: dict) -> None:
    """Stop the Slurm daemons of one node whose PID 1 is `init`: the recorded slurmd and munged
    (verified), any the harness restarted since, and every slurmstepd (a step still running)."""
    markers = _slurm_markers(slurm)
    rec = nd.get("slurm") or {}
    pids: list[int] = []
    for comm in ("slurmd", "munged"):
        own = _ours(rec.get(comm), markers[comm])
        pids += [own] if own else []
        pids += [p for p in _node_slurm_daemons(init, comm, slurm) if p not in pids]
    steps = [c for c in _children(init) if _comm(c) == "slurmstepd"]
    for pid in steps:
        _kill(pid, signal.SIGKILL)
    _term_wait(pids, 5)


def _stop_slurm_root(slurm: dict, popens: dict[str, subprocess.Popen]) -> list[str]:
    """Stop the cluster's slurmctld (and its slurmscriptd) and munged in the root namespace,
    by their recorded PIDs (verified), and remove the munge socket directory we made."""
    markers = _slurm_markers(slurm)
    problems: list[str] = []
    ctld = _ours(slurm.get("slurmctld"), markers["slurmctld"])
    if ctld:
        kids = [(c, _proc_start(c)) for c in _descendants(ctld)]
        # slurmctld takes ~2 s to save its state and exit
        if _term_wait([ctld], 15, popens.get("slurmctld")):
            problems.append(f"slurmctld {ctld} still running")
        for pid, start in kids:  # slurmscriptd exits with it; a survivor is still ours
            if _alive(pid) and _proc_start(pid) == start:
                _term_wait([pid], 5)
    popen = popens.get("slurmctld")
    if popen is not None:
        popen.poll()
    munged = _ours(slurm.get("munged"), markers["munged"])
    if munged and _term_wait([munged], 5, popens.get("munged")):
        problems.append(f"munged {munged} still running")
    popen = popens.get("munged")
    if popen is not None:
        popen.poll()
    mdir = slurm.get("munge_dir")
    if mdir and slurm.get("munge_dir_created"):
        shutil.rmtree(mdir, ignore_errors=True)
    return problems


def _remove_cgroup(name: str) -> list[str]:
    """rmdir (depth first) the cgroup directories dockerd made under --cgroup-parent /NAME, in
    every v1 hierarchy and in the v2 tree; retried briefly while exiting tasks drain."""
    roots = [Path("/sys/fs/cgroup")] + [p for p in Path("/sys/fs/cgroup").iterdir() if p.is_dir()]
    problems = []
    for root in roots:
        top = root / name
        if not top.is_dir():
            continue
        for _ in range(50):
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for d in [*dirs, top]:
                with contextlib.suppress(OSError):
                    d.rmdir()
            if not top.exists():
                break
            time.sleep(0.1)
        if top.exists():
            problems.append(f"cgroup {top} not removed")
    return problems


class ClusterBusy(RuntimeError):
    """The subnet (so its bridge and namespaces) belongs to another harness that is running."""


def _proc_start(pid: int) -> str:
    """Start time of a process (field 22 of /proc/PID/stat): with the PID, it names the
    process uniquely (guards against PID reuse)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _cluster_live(state: dict, workdir: Path) -> bool:
    """Is the cluster of this state in use? One left up on purpose (`up` on the command line:
    detached) is while its nodes run; any other while the process that started it lives
    (even mid-start, before its nodes run). A cluster whose owner died (a killed test
    session) is stale, and a new start may take its place."""
    if state.get("detached"):
        return any(
            _marker(nd["name"], workdir) in _cmdline(nd.get("unshare_pid") or 0)
            for nd in state.get("nodes", [])
        )
    owner = int(state.get("owner_pid") or 0)
    return owner > 0 and _alive(owner) and _proc_start(owner) == state.get("owner_start")


def _claim_bridge(bridge: str, own_workdir: Path) -> None:
    """A bridge named like ours exists. If its alias says a harness made it: when that harness
    is live, raise ClusterBusy; when it is stale, tear it down through its state file or, when
    that state is gone (its workdir was deleted), reclaim what hangs off the bridge. A bridge
    without our alias is not ours: refuse."""
    alias_file = Path(f"/sys/class/net/{bridge}/ifalias")
    alias = alias_file.read_text().strip() if alias_file.exists() else ""
    if not alias.startswith(BRIDGE_ALIAS + " "):
        # not ours, or another harness's that has not set its alias yet: either way not usable
        raise ClusterBusy(f"network interface {bridge} exists and was not created by this harness")
    other = Path(alias[len(BRIDGE_ALIAS) + 1 :])
    state_file = other / "state.json"
    if state_file.exists() and other != own_workdir:
        state = json.loads(state_file.read_text())
        if _cluster_live(state, other):
            raise ClusterBusy(
                f"subnet {state.get('subnet')} is used by a running harness (workdir {other}, "
                f"owner pid {state.get('owner_pid')}): stop it with `python {__file__} down "
                f"{other}` or use another subnet (or subnet='auto')"
            )
        _log(f"stopping a stale harness (workdir {other}, owner gone) on {bridge}")
        problems = _teardown(other)
        if problems:
            raise RuntimeError(f"could not stop the stale harness in {other}: {problems}")
    if Path(f"/sys/class/net/{bridge}").exists():
        _log(f"reclaiming {bridge} left by a harness in {other} whose state is gone")
        _reclaim_orphan(bridge, other)


def _reclaim_orphan(bridge: str, workdir: Path) -> None:
    """Remove a harness bridge (marked ours by its alias) and the node namespaces plugged into
    it: each port's alias names its node's netns, and every process in those namespaces (the
    node's unshare included) was started by a harness. In the root namespace, that harness's
    Slurm-mode slurmctld and munged (`workdir`: where the alias says its state was)."""
    _reclaim_orphan_slurm(bridge.removeprefix("cvsbr-"), workdir)
    netns = []
    for port in Path(f"/sys/class/net/{bridge}/brif").iterdir():
        alias = Path(f"/sys/class/net/{port.name}/ifalias")
        ns = alias.read_text().strip() if alias.exists() else ""
        if ns.startswith("cvs-") and Path(f"/run/netns/{ns}").exists():
            netns.append(ns)
    for ns in netns:
        pids = [int(p) for p in _run(["ip", "netns", "pids", ns], check=False).stdout.split()]
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        for pid in pids:
            _wait_gone(pid, 5)
        _run(["ip", "netns", "del", ns], check=False)
        _remove_cgroup(ns)  # the node's cgroup parent has its netns's name
    _run(["ip", "link", "del", bridge], check=False)
    if Path(f"/sys/class/net/{bridge}").exists():
        raise RuntimeError(f"could not remove the stale bridge {bridge}")


def _reclaim_orphan_slurm(net_id: str, workdir: Path) -> None:
    """With its state gone, a stale cluster's root-namespace Slurm daemons are known by their
    command lines, which only a harness of this subnet and workdir writes: slurmctld reads
    <workdir>/slurm/slurm.conf, munged serves /run/munge-cvs-<net id>."""
    mdir = f"/run/munge-cvs-{net_id}"
    markers = _slurm_markers(
        {"munge_socket": f"{mdir}/munge.socket.2", "conf": str(workdir / "slurm" / "slurm.conf")}
    )
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            comm = _comm(int(d.name))
            if comm in ("slurmctld", "munged") and markers[comm] in _cmdline(int(d.name)):
                pids.append(int(d.name))
    _term_wait(pids, 10)
    if Path(mdir).exists() and not _unix_socket_answers(f"{mdir}/munge.socket.2"):
        shutil.rmtree(mdir, ignore_errors=True)


def _tcp_port_free(port: int) -> bool:
    """Can a TCP listener bind `port` on every address of the root namespace, as slurmctld
    does (with SO_REUSEADDR: connections of an earlier slurmctld on this port may linger in
    TIME_WAIT, and a restarted cluster keeps its port)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            s.listen()  # a bound-only socket would let bind pass where listen fails
        except OSError:
            return False
    return True


def _pick_slurmctld_port(subnet: str, avoid: set[int]) -> int:
    """A free TCP port for this cluster's slurmctld. The search starts at a port derived from
    the subnet, so clusters starting at the same moment on different subnets do not race for
    the same one."""
    span = SLURMCTLD_PORT_SPAN
    first = int(_net_id(subnet), 16) % span
    for k in range(span):
        port = SLURMCTLD_PORT_BASE + (first + k) % span
        if port not in avoid and _tcp_port_free(port):
            return port
    raise RuntimeError("no free TCP port for slurmctld")


def _unix_socket_answers(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(path)
            return True
    except OSError:
        return False


def _net_id(subnet: str) -> str:
    """6 hex digits naming a subnet's kernel objects (interface names are <= 15 bytes)."""
    return "".join(f"{int(o):02x}" for o in subnet.split("."))


def _bridge_live(subnet: str) -> bool:
    """Does a running harness own this subnet's bridge (so 'auto' should skip it)?"""
    bridge = f"cvsbr-{_net_id(subnet)}"
    alias_file = Path(f"/sys/class/net/{bridge}/ifalias")
    if not alias_file.exists():
        return False
    alias = alias_file.read_text().strip()
    if not alias.startswith(BRIDGE_ALIAS + " "):
        return True  # not ours: unusable
    other = Path(alias[len(BRIDGE_ALIAS) + 1 :])
    try:
        return _cluster_live(json.loads((other / "state.json").read_text()), other)
    except (OSError, ValueError):
        return False


# ------------------------------------------------------------------------------- cluster
class DockerCluster:
    """N simulated nodes, each with its own dockerd and sshd. ``start()`` / ``stop()`` (both
    idempotent), or use it as a context manager. See the module docstring."""

    IMAGE_WITH_SSHD = IMAGE_WITH_SSHD
    IMAGE_NO_SSHD = IMAGE_NO_SSHD
    NODE_SHARE = NODE_SHARE
    SSHD_BUNDLE_IN_NODE = SSHD_BUNDLE_IN_NODE
    INSTALL_SSHD_IN_NODE = INSTALL_SSHD_IN_NODE
    # the same, as attribute-style names: paths valid inside every node (and inside a
    # container started with -v /run/cvs:/run/cvs)
    node_share = NODE_SHARE
    sshd_bundle_in_node = SSHD_BUNDLE_IN_NODE
    install_sshd_in_node = INSTALL_SSHD_IN_NODE

    def __init__(
        self,
        n: int = 3,
        workdir: str | Path | None = None,
        subnet: str = DEFAULT_SUBNET,
        prefix: str = DEFAULT_PREFIX,
        *,
        storage_driver: str | None = None,
        load_images: bool = True,
        slurm: bool = False,
    ) -> None:
        if not 1 <= n <= 200:
            raise ValueError("n must be 1..200")
        octet = r"(25[0-5]|2[0-4]\d|1?\d?\d)"
        if subnet != "auto" and not re.fullmatch(rf"{octet}(\.{octet}){{2}}", subnet):
            raise ValueError(f"subnet must be three octets like 10.77.0 or 'auto', got {subnet!r}")
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", prefix):
            raise ValueError("prefix must be a lowercase hostname prefix like 'node'")
        self.n = n
        self.prefix = prefix
        # 'auto': the first 10.77.X/24 no running harness uses (re-picked at start() if another
        # harness takes it meanwhile), so concurrent test sessions do not collide
        self.auto_subnet = subnet == "auto"
        self._tried: set[str] = set()
        self._set_subnet(self._next_subnet() if self.auto_subnet else subnet)
        self.workdir = Path(workdir or DEFAULT_WORKDIR).resolve()
        if self.workdir == Path("/run") or Path("/run") in self.workdir.parents:
            # each node mounts a private tmpfs on /run before it binds the workdir
            raise ValueError("workdir must not be under /run")
        # hostnames only live in each node's UTS namespace: two clusters may both have node1..
        self.names = [f"{prefix}{i + 1}" for i in range(n)]
        self.user = "root"
        self.storage_driver = storage_driver or os.environ.get("CVS_STORAGE_DRIVER") or ""
        self.load_images = load_images
        self.runtime = ""
        self.image_ids: dict[str, str] = {}
        self.artefacts: Path | None = None
        self.slurm_mode = slurm
        self.slurmctld_port = 0  # picked at start()
        self._popens: dict[str, subprocess.Popen] = {}
        self._state: dict[str, Any] = {}

    def _set_subnet(self, subnet: str) -> None:
        # kernel objects are named after the subnet, not the hostnames: clusters on different
        # subnets never collide, one subnet can only have one cluster
        nid = _net_id(subnet)
        self.subnet = subnet
        self.hosts = [f"{subnet}.{11 + i}" for i in range(self.n)]
        self.bridge = f"cvsbr-{nid}"
        self.netns = [f"cvs-{nid}-{i + 1}" for i in range(self.n)]
        self.veths = [f"cv{nid}-{i + 1}" for i in range(self.n)]
        self.cgroups = list(self.netns)  # dockerd --cgroup-parent /<netns name>
        # Slurm mode: the same path string in the root namespace and in every node (each node
        # has a private /run); named after the subnet like the other objects, so two clusters
        # (and any other munged on the machine) never share a socket
        self.munge_socket = f"/run/munge-cvs-{nid}/munge.socket.2"

    def _next_subnet(self) -> str:
        for x in range(256):
            cand = f"10.77.{x}"
            if cand not in self._tried and not _bridge_live(cand):
                return cand
        raise ClusterBusy("every 10.77.X/24 subnet is in use by a running harness")

    # -- layout ----------------------------------------------------------------------------
    @property
    def ssh_dir(self) -> Path:
        return self.workdir / "ssh"

    @property
    def key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.ssh_dir / "ssh_config"

    @property
    def host_ca_pub(self) -> Path:
        return self.ssh_dir / "host_ca.pub"

    @property
    def sshd_bundle(self) -> Path:
        """Host path of the sshd bundle; ``SSHD_BUNDLE_IN_NODE`` inside nodes."""
        return self.workdir / "sshd-bundle.tar"

    @property
    def install_sshd_script(self) -> Path:
        """Host path of the installer; ``INSTALL_SSHD_IN_NODE`` inside nodes."""
        return self.workdir / "install_sshd_from_bundle.sh"

    @property
    def variant_tar(self) -> Path:
        """A rootfs tar different from IMAGE_WITH_SSHD's (it adds /etc/cvs-variant), for
        ``import_image(i, cluster.variant_tar, IMAGE_WITH_SSHD)`` image-skew tests."""
        return self._artefact("variant.tar")

    @property
    def rootfs_tars(self) -> dict[str, Path]:
        return {
            IMAGE_WITH_SSHD: self._artefact("with-sshd.tar"),
            IMAGE_NO_SSHD: self._artefact("no-sshd.tar"),
        }

    def _artefact(self, name: str) -> Path:
        if self.artefacts is None:
            raise RuntimeError("start() the cluster first")
        return self.artefacts / name

    @property
    def slurm_dir(self) -> Path:
        """Slurm mode: slurm.conf, munge.key, slurmctld's state (ctld/) and logs (log/)."""
        return self.workdir / "slurm"

    @property
    def slurm_conf(self) -> Path:
        return self.slurm_dir / "slurm.conf"

    @property
    def slurm_nodes(self) -> list[str]:
        """Slurm node names, in the order of ``hosts`` (NodeName = the node's hostname)."""
        return list(self.names)

    def node_dir(self, i: int) -> Path:
        return self.workdir / "nodes" / self.names[i]

    def docker_socket(self, i: int) -> Path:
        return self.node_dir(i) / "docker.sock"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> DockerCluster:
        why = slurm_prerequisites_missing() if self.slurm_mode else prerequisites_missing()
        if why:
            raise RuntimeError(f"docker harness unavailable: {why}")
        if len(str(self.docker_socket(0))) > 100:
            raise ValueError(f"workdir {self.workdir} is too long for a unix socket path")
        t_all = time.monotonic()
        if (self.workdir / "state.json").exists():
            _log(f"state exists in {self.workdir}: stopping the old cluster first")
            self.stop()
        while True:
            try:
                self._start(timeout)
                break
            except ClusterBusy:
                self.stop()  # only what this attempt made: the other cluster is not in our state
                if not self.auto_subnet:
                    raise
                self._tried.add(self.subnet)
                self._set_subnet(self._next_subnet())
            except BaseException:
                if os.environ.get("CVS_KEEP_ON_FAIL") == "1":
                    _log(f"start failed; CVS_KEEP_ON_FAIL=1 keeps it: python {__file__} down")
                else:
                    self.stop()
                raise
        _log(f"UP: {self.n} nodes in {time.monotonic() - t_all:.1f}s ({' '.join(self.hosts)})")
        return self

    def _start(self, timeout: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if Path(f"/sys/class/net/{self.bridge}").exists():
            _claim_bridge(self.bridge, self.workdir)
        for ns in self.netns:
            if Path(f"/run/netns/{ns}").exists():
                raise RuntimeError(f"network namespace {ns} exists and was not created here")
        self._check_subnet_free()
        t0 = time.monotonic()
        self.artefacts = ensure_artefacts()
        self._write_files()
        if not self.storage_driver:
            self.storage_driver = (
                "overlay2" if _overlay_works(self.workdir / ".overlay-probe") else "vfs"
            )
        self._choose_runtime()
        _log(f"files ready in {time.monotonic() - t0:.1f}s (storage driver {self.storage_driver})")

        self._state = {
            "version": 1,
            "workdir": str(self.workdir),
            "n": self.n,
            "prefix": self.prefix,
            "subnet": self.subnet,
            "bridge": self.bridge,
            "bridge_created": False,
            "iptables_rule": False,
            "netns": [],
            "nodes": [],
            "cgroups": [],  # added with each netns: the names are only ours once that exists
            # who owns it: a later start() on this subnet takes over only when the owner is
            # gone (and the cluster was not left up on purpose with `up`: detached)
            "owner_pid": os.getpid(),
            "owner_start": _proc_start(os.getpid()),
            "detached": False,
            "hosts": self.hosts,
            "names": self.names,
            "ssh_config": str(self.ssh_config),
            "key": str(self.key),
            "known_hosts": str(self.known_hosts),
            "user": self.user,
            "artefacts": str(self.artefacts),
            "slurm": None,  # Slurm mode: filled in by _start_slurm()
        }
        # saved before the bridge exists: whoever finds our bridge also finds our state (and
        # sees we are alive), so nobody takes a cluster over while it is being built
        self._save_state()
        t0 = time.monotonic()
        self._make_network()
        _log(f"bridge + {self.n} netns in {time.monotonic() - t0:.1f}s")
        t0 = time.monotonic()
        self._launch_nodes()
        self._wait_ready(timeout)
        _log(f"{self.n} dockerd + sshd ready in {time.monotonic() - t0:.1f}s")
        if self.load_images:
            t0 = time.monotonic()
            self._load_images()
            _log(f"images on {self.n} nodes in {time.monotonic() - t0:.1f}s")
        self._smoke()
        if self.slurm_mode:
            t0 = time.monotonic()
            self._start_slurm(timeout)
            _log(f"Slurm: slurmctld + {self.n} slurmd, all idle in {time.monotonic() - t0:.2f}s")

    def stop(self) -> None:
        """Tear down everything start() made (idempotent; also after a crashed start)."""
        problems = _teardown(self.workdir, self._popens)
        for p in self._popens.values():
            p.poll()  # reap what another process's `down` stopped
        self._popens.clear()
        self.slurmctld_port = 0
        self._state = {}
        if problems:
            _log("stop left problems: " + "; ".join(problems))

    @property
    def running(self) -> bool:
        return bool(self._state) and (self.workdir / "state.json").exists()

    def __enter__(self) -> DockerCluster:
        # `with DockerCluster(3) as c:` and `with DockerCluster(3).start() as c:` both work
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start steps -----------------------------------------------------------------------
    def _save_state(self) -> None:
        tmp = self.workdir / "state.json.tmp"
        tmp.write_text(json.dumps(self._state, indent=2))
        tmp.rename(self.workdir / "state.json")

    def _check_subnet_free(self) -> None:
        """Refuse a subnet the machine already uses: our addresses must be ours alone."""
        out = _run(["ip", "-4", "-o", "addr", "show"]).stdout
        if re.search(rf"\binet {re.escape(self.subnet)}\.\d+/", out):
            raise ClusterBusy(f"{self.subnet}.0/24 is already in use on this machine: pick another")

    def _choose_runtime(self) -> None:
        # docker 20.10 --privileged requests every cap the kernel knows; if some are missing
        # from our bounding set (CAP_SYS_RESOURCE on the Firecracker sandbox) runc fails
        # "unable to apply caps" -> make runc-capfilter the default runtime
        # (CVS_RUNC_WRAPPER=0 disables, =1 forces)
        # It also carries the launch gate tests use (gate_launch), so "auto" uses it always.
        mode = os.environ.get("CVS_RUNC_WRAPPER", "auto")
        missing = _run([str(CAPFILTER), "--print-missing"]).stdout.split()
        if mode != "0":
            dest = self.workdir / "bin" / "runc-capfilter"
            dest.parent.mkdir(exist_ok=True)
            shutil.copyfile(CAPFILTER, dest)
            dest.chmod(0o755)
            self.runtime = f"{NODE_SHARE}/bin/runc-capfilter"
            if missing:
                _log(f"caps missing from the bounding set: {' '.join(missing)} -> runc-capfilter")
        else:
            self.runtime = ""

    def _write_files(self) -> None:
        assert self.artefacts is not None
        self.ssh_dir.mkdir(parents=True, exist_ok=True)
        (self.ssh_dir / "hostkeys").mkdir(exist_ok=True)
        _keygen(self.key, "cvs-core-docker-harness-client")
        pub = Path(f"{self.key}.pub").read_text()
        (self.ssh_dir / "authorized_keys").write_text(pub)
        ca = self.artefacts / "host_ca"
        shutil.copyfile(f"{ca}.pub", self.host_ca_pub)
        for src, dest in (
            (self.artefacts / "sshd-bundle.tar", self.sshd_bundle),
            (self.artefacts / "install_sshd_from_bundle.sh", self.install_sshd_script),
        ):
            dest.unlink(missing_ok=True)
            try:
                os.link(src, dest)  # same filesystem: no copy of the 17 MB bundle
            except OSError:
                shutil.copy2(src, dest)
        (self.workdir / "docker-cli").mkdir(exist_ok=True)
        # the node script where every node sees it (/run/cvs/bin), wherever the checkout is
        # (a checkout under /tmp is hidden by the nodes' private /tmp)
        (self.workdir / "bin").mkdir(exist_ok=True)
        shutil.copyfile(NODE_SCRIPT, self.workdir / "bin" / "node_harness.sh")

        known: list[str] = []
        aliases: list[str] = []
        for name, ip in zip(self.names, self.hosts):
            hk = self.ssh_dir / "hostkeys" / name
            _keygen(hk, f"{name}-host")  # kept across restarts: known_hosts stays valid
            # signed as well, so the node's sshd and container sshds are vouched for alike
            _run(["ssh-keygen", "-q", "-s", str(ca), "-h", "-I", name, f"{hk}.pub"])
            key = " ".join(Path(f"{hk}.pub").read_text().split()[:2])
            known.append(f"{name},{ip} {key}")
            aliases.append(f"Host {name}\n  HostName {ip}\n")
        ca_key = " ".join(Path(f"{ca}.pub").read_text().split()[:2])
        patterns = f"{self.subnet}.*,[{self.subnet}.*]:*,{self.prefix}*,[{self.prefix}*]:*"
        known.append(f"@cert-authority {patterns} {ca_key}")
        self.known_hosts.write_text("\n".join(known) + "\n")
        common = (
            "  User root\n"
            "  IdentitiesOnly yes\n"
            "  IdentityAgent none\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  CheckHostIP no\n"
            "  UpdateHostKeys no\n"
            "  PasswordAuthentication no\n"
            "  KbdInteractiveAuthentication no\n"
            "  BatchMode yes\n"
            "  LogLevel ERROR\n"
            "  ConnectTimeout 5\n"
            # OpenSSH 9's default sntrup761 key exchange costs ~100 ms of client CPU per connect
            "  KexAlgorithms curve25519-sha256\n"
        )
        self.ssh_config.write_text(
            "# generated by cvs-core harness/docker_cluster.py\n"
            + "".join(aliases)
            + "Host *\n"
            + f"  IdentityFile {self.key}\n"
            + f"  UserKnownHostsFile {self.known_hosts}\n"
            + common
        )

        hosts_lines = ["127.0.0.1 localhost"] + [
            f"{ip} {name}" for name, ip in zip(self.names, self.hosts)
        ]
        for name in self.names:
            d = self.workdir / "nodes" / name
            shutil.rmtree(d, ignore_errors=True)
            for sub in ("docker", "etc-docker", "tmp", "root/.ssh"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            (d / "tmp").chmod(0o1777)
            (d / "root").chmod(0o700)
            (d / "root" / ".ssh").chmod(0o700)
            (d / "daemon.json").write_text("{}\n")
            (d / "etc-hostname").write_text(f"{name}\n")
            # the node's own name resolves to its bridge address (not Debian's 127.0.1.1), as
            # on a real cluster where MPI-style tools hand their hostname to peers
            (d / "etc-hosts").write_text("\n".join(hosts_lines) + "\n")
            # root's ~/.ssh on the node looks like a real user's: authorized_keys, the cluster
            # key (node-to-node ssh, and what cvs-core copies into containers) and a config
            rs = d / "root" / ".ssh"
            (rs / "authorized_keys").write_text(pub)
            shutil.copyfile(self.key, rs / "id_ed25519")
            (rs / "id_ed25519").chmod(0o600)
            shutil.copyfile(f"{self.key}.pub", rs / "id_ed25519.pub")
            shutil.copyfile(self.known_hosts, rs / "known_hosts")
            (rs / "config").write_text(
                "# generated by cvs-core harness/docker_cluster.py (node view)\n"
                + "".join(aliases)
                + "Host *\n"
                + "  IdentityFile /root/.ssh/id_ed25519\n"
                + "  UserKnownHostsFile /root/.ssh/known_hosts\n"
                + common
            )
            nd = f"{NODE_SHARE}/nodes/{name}"
            hk = f"{NODE_SHARE}/ssh/hostkeys/{name}"
            (d / "sshd_config").write_text(
                f"# node {name} (generated by cvs-core harness/docker_cluster.py)\n"
                "Port 22\n"
                "ListenAddress 0.0.0.0\n"
                f"HostKey {hk}\n"
                f"HostCertificate {hk}-cert.pub\n"
                "PidFile none\n"
                f"AuthorizedKeysFile .ssh/authorized_keys {NODE_SHARE}/ssh/authorized_keys\n"
                "PermitRootLogin prohibit-password\n"
                "PubkeyAuthentication yes\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "UsePAM no\n"
                "StrictModes no\n"
                "UseDNS no\n"
                "PrintMotd no\n"
                "PrintLastLog no\n"
                "MaxStartups 100:30:200\n"
                "MaxSessions 100\n"
                f"SetEnv CVS_NODE={name}\n"
                "Subsystem sftp /usr/lib/openssh/sftp-server\n"
                f"# this node's harness files: {nd}\n"
            )

    def _make_network(self) -> None:
        br = self.bridge
        r = _run(["ip", "link", "add", br, "type", "bridge"], check=False)
        if r.returncode != 0:
            # another harness created it since _start() looked: never record (and so never
            # delete) a bridge we did not create
            raise ClusterBusy(f"ip link add {br}: {r.stderr.strip()}")
        self._state["bridge_created"] = True
        self._save_state()
        # marks the bridge as ours, and says where the state is, for a later start's cleanup
        _run(["ip", "link", "set", br, "alias", f"{BRIDGE_ALIAS} {self.workdir}"])
        _run(["ip", "addr", "add", f"{self.subnet}.1/24", "dev", br])
        _run(["ip", "link", "set", br, "up"])
        # bridged node<->node frames go through iptables FORWARD when br_netfilter is loaded;
        # a system dockerd (on a machine kind that pre-starts one) sets FORWARD policy DROP
        if _which("iptables"):
            rules = _run(["iptables", "-S", "FORWARD"], check=False).stdout
            if "-P FORWARD DROP" in rules:
                self._state["iptables_rule"] = True
                self._save_state()
                _run(["iptables", "-I", "FORWARD", "-i", br, "-o", br, "-j", "ACCEPT"])
        for ns, veth, ip in zip(self.netns, self.veths, self.hosts):
            r = _run(["ip", "netns", "add", ns], check=False)
            if r.returncode != 0:
                raise ClusterBusy(f"ip netns add {ns}: {r.stderr.strip()}")
            self._state["netns"].append(ns)
            self._state["cgroups"].append(ns)  # == self.cgroups[i]
            self._save_state()
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            # the port's alias names its netns: lets a later start reclaim an orphaned cluster
            _run(["ip", "link", "set", veth, "alias", ns])
            _run(["ip", "link", "set", veth, "master", br, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            # deliberately NO default route: nodes reach only <subnet>.0/24, so a stray
            # `docker pull`, DNS lookup etc. fails fast ("network unreachable")

    def _node_env(self, i: int) -> dict[str, str]:
        """The environment node_harness.sh runs with (its dockerd's settings)."""
        return {
            "PATH": STD_PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "CVS_NODE_DRIVER": self.storage_driver,
            "CVS_NODE_RUNTIME": self.runtime,
            "CVS_NODE_CGROUP": f"/{self.cgroups[i]}",
        }

    def _launch_nodes(self) -> None:
        for i, (name, ns) in enumerate(zip(self.names, self.netns)):
            env = self._node_env(i)
            d = self.workdir / "nodes" / name
            argv = [
                "nsenter",
                f"--net=/run/netns/{ns}",
                "unshare",
                "--mount",
                "--uts",
                "--ipc",
                "--pid",
                "--fork",
                "--kill-child",  # if unshare dies, the node's PID 1 (so the whole node) dies
                "--mount-proc",
                "--propagation",
                "private",
                "/bin/bash",
                str(NODE_SCRIPT),
                "init",
                name,
                str(self.workdir),
            ]
            with open(d / "unshare.log", "wb") as logf:
                # own session: a Ctrl-C in the test's terminal does not reach the nodes;
                # cwd "/": the node hides /tmp, where the caller's cwd may be
                p = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=env,
                    cwd="/",
                )
            self._popens[name] = p
            self._state["nodes"].append({"name": name, "unshare_pid": p.pid})
            self._save_state()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(range(self.n))
        while pending:
            for i in sorted(pending):
                name = self.names[i]
                log = self.node_dir(i) / "dockerd.log"
                p = self._popens[name]
                died = p.poll() is not None
                failed = log.exists() and "failed to start daemon" in log.read_text(
                    errors="replace"
                )
                if died or failed:
                    raise RuntimeError(f"node {name} failed to start:\n{self._log_tails(i)}")
                if _docker_ping(self.docker_socket(i), 0.5) and _banner(self.hosts[i], 22, 0.5):
                    pending.discard(i)
            if pending:
                if time.monotonic() > deadline:
                    names = ", ".join(self.names[i] for i in sorted(pending))
                    tails = self._log_tails(min(pending))
                    raise RuntimeError(f"nodes not ready after {timeout:.0f}s: {names}\n{tails}")
                time.sleep(0.1)

    def _log_tails(self, i: int) -> str:
        out = []
        for f in ("unshare.log", "dockerd.log", "sshd.log"):
            p = self.node_dir(i) / f
            if p.exists():
                lines = p.read_text(errors="replace").splitlines()[-15:]
                out.append(f"--- {p}\n" + "\n".join(lines))
        return "\n".join(out)

    def _load_images(self) -> None:
        assert self.artefacts is not None
        saved = self.artefacts / "images.tar"
        first = 0
        if not saved.exists():
            with _locked(cache_root() / ".lock"):
                if not saved.exists():
                    # import once on node 0, then save: every node (and every later start)
                    # loads the same bytes, so image IDs are identical across nodes and runs
                    for tag, tar in self.rootfs_tars.items():
                        self.docker(0, "import", *IMPORT_CHANGES, str(tar), tag, timeout=300)
                    tmp = saved.with_suffix(".tmp")
                    self.docker(
                        0, "save", "-o", str(tmp), IMAGE_WITH_SSHD, IMAGE_NO_SSHD, timeout=300
                    )
                    tmp.rename(saved)
                    first = 1
        with ThreadPoolExecutor(max_workers=self.n) as pool:
            list(
                pool.map(
                    lambda i: self.docker(i, "load", "-q", "-i", str(saved), timeout=300),
                    range(first, self.n),
                )
            )
        for tag in (IMAGE_WITH_SSHD, IMAGE_NO_SSHD):
            self.image_ids[tag] = self.image_id(0, tag)

    def _smoke(self) -> None:
        """Every node answers ssh (with strict host-key checking) under its own name."""

        def check(i: int) -> None:
            r = self.ssh(i, "hostname", timeout=30)
            if r.returncode != 0 or r.stdout.strip() != self.names[i]:
                raise RuntimeError(
                    f"ssh smoke check on {self.names[i]} failed (rc={r.returncode}): "
                    f"{r.stdout.strip()} {r.stderr.strip()}"
                )

        with ThreadPoolExecutor(max_workers=self.n) as pool:
            list(pool.map(check, range(self.n)))

    # -- Slurm mode ------------------------------------------------------------------------
    def _start_slurm(self, timeout: float) -> None:
        """munged + slurmctld in the root namespace, munged + slurmd in every node; returns
        once every node is idle."""
        sd = self.slurm_dir
        shutil.rmtree(sd, ignore_errors=True)  # a fresh controller state on every start
        for sub in ("ctld", "log"):
            (sd / sub).mkdir(parents=True)
        sd.chmod(0o700)  # holds the munge key
        key = sd / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with open(fd, "wb") as f:
            f.write(os.urandom(1024))
        self._state["slurm"] = {
            "conf": str(self.slurm_conf),
            "munge_socket": self.munge_socket,
            "munge_dir": os.path.dirname(self.munge_socket),
            "munge_dir_created": False,
            "port": 0,
            "munged": None,  # [pid, start time] (start time: PIDs get reused)
            "slurmctld": None,
        }
        self._save_state()
        t0 = time.monotonic()
        self._start_root_munged(key)
        self._start_slurmctld()
        _log(
            f"munged + slurmctld (port {self.slurmctld_port}) in the root namespace in "
            f"{time.monotonic() - t0:.2f}s"
        )
        with ThreadPoolExecutor(max_workers=self.n) as pool:
            list(pool.map(self._node_slurm, range(self.n)))
        for i in range(self.n):  # one at a time: each saves state.json
            self._record_node_slurm(i)
        self.wait_slurm_idle(timeout)

    def _start_root_munged(self, key: Path) -> None:
        sl = self._state["slurm"]
        mdir = Path(sl["munge_dir"])
        if mdir.exists():
            if _unix_socket_answers(self.munge_socket):
                raise ClusterBusy(
                    f"{self.munge_socket} is served by a munged this harness did not start"
                )
            shutil.rmtree(mdir)  # a killed run's leftover (the name is ours): nothing listens
        mdir.mkdir(mode=0o755)  # munged refuses a socket directory others can write to
        sl["munge_dir_created"] = True
        self._save_state()
        argv = [
            "munged",
            "--foreground",  # our child: its PID is known at once, no pid file to race with
            f"--socket={self.munge_socket}",
            f"--key-file={key}",
            f"--pid-file={mdir}/munged.pid",
            f"--seed-file={self.slurm_dir}/munged.seed",
        ]
        # in the foreground munged logs to stderr (it ignores --log-file)
        p = self._spawn("munged", argv, self.slurm_dir / "log" / "munged.log")
        sl["munged"] = [p.pid, _proc_start(p.pid)]
        self._save_state()
        deadline = time.monotonic() + 10
        while not _unix_socket_answers(self.munge_socket):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start:\n{self._slurm_log_tails(root=True)}")
            time.sleep(0.02)

    def _spawn(self, key: str, argv: list[str], out: Path) -> subprocess.Popen:
        """A root-namespace daemon in the foreground, as our child (kept in _popens)."""
        with open(out, "ab") as logf:
            # own session: a Ctrl-C in the test's terminal does not reach it
            p = subprocess.Popen(
                [_which(argv[0]) or argv[0], *argv[1:]],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
                env={"PATH": STD_PATH, "LANG": "C.UTF-8"},
            )
        self._popens[key] = p
        return p

    def _start_slurmctld(self) -> None:
        sl = self._state["slurm"]
        tried: set[int] = set()
        for _ in range(3):
            # the port is free when picked; another program may still take it before
            # slurmctld binds it: then the next one is tried
            port = _pick_slurmctld_port(self.subnet, tried)
            tried.add(port)
            self.slurmctld_port = sl["port"] = port
            self._write_slurm_conf(port)
            # -D: our child, like munged. It logs to SlurmctldLogFile and copies that to
            # stdout; slurmctld.out also has what it says before its log is open
            argv = ["slurmctld", "-D", "-f", str(self.slurm_conf)]
            p = self._spawn("slurmctld", argv, self.slurm_dir / "log" / "slurmctld.out")
            sl["slurmctld"] = [p.pid, _proc_start(p.pid)]
            self._save_state()
            deadline = time.monotonic() + 20
            while p.poll() is None and time.monotonic() < deadline:
                try:
                    if "is UP" in self.slurm("scontrol", "ping", timeout=3).stdout:
                        return
                except subprocess.TimeoutExpired:
                    pass  # something else answers on the port (slurmctld exits: next port)
                time.sleep(0.05)
            tails = self._slurm_log_tails(root=True)
            if p.poll() is not None and "Address already in use" in tails:
                _log(f"slurmctld: port {port} was taken meanwhile, trying another")
                continue
            raise RuntimeError(f"slurmctld did not come up:\n{tails}")
        raise RuntimeError(f"slurmctld found no free port (tried {sorted(tried)})")

    def _write_slurm_conf(self, port: int) -> None:
        # every node reports the host's CPUs in `slurmd -C`: declaring more makes it INVALID
        cpus = min(len(os.sched_getaffinity(0)), os.cpu_count() or 1)
        nodes = "".join(
            f"NodeName={name} NodeAddr={ip} CPUs={cpus} RealMemory=1000 State=UNKNOWN\n"
            for name, ip in zip(self.names, self.hosts)
        )
        values = {
            "CLUSTER": f"cvs-{_net_id(self.subnet)}",
            "CTLD_HOST": socket.gethostname().split(".")[0],  # `hostname -s`: slurmctld checks
            "CTLD_ADDR": f"{self.subnet}.1",
            "CTLD_PORT": str(port),
            "SLURMD_PORT": str(SLURMD_PORT),
            "MUNGE_SOCKET": self.munge_socket,
            "SLURM_DIR": str(self.slurm_dir),
            "NODE_DIR": SLURM_NODE_DIR,
            "NODE_CONF": SLURM_NODE_CONF,
            "NODE_SHARE": NODE_SHARE,
            "SLURMD_TIMEOUT": str(SLURMD_TIMEOUT),
            "PARTITION": SLURM_PARTITION,
        }
        text = SLURM_TEMPLATE.read_text()
        for k, v in values.items():
            text = text.replace(f"@{k}@", v)
        text = text.replace("@NODES@\n", nodes)
        left = {m for line in text.splitlines() if not line.startswith("#")
                for m in re.findall(r"@[A-Z_]+@", line)}  # fmt: skip
        if left:
            raise RuntimeError(f"{SLURM_TEMPLATE}: no value for {' '.join(sorted(left))}")
        tmp = self.slurm_conf.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(self.slurm_conf)

    def _node_slurm(self, i: int) -> None:
        """Start node i's munged and slurmd (each unless it runs), inside the node."""
        argv = [
            "nsenter", "-t", str(self.init_pid(i)), "-m", "-u", "-i", "-n", "-p", "--",
            "/bin/bash", f"{NODE_SHARE}/bin/node_harness.sh", "slurm", self.names[i],
        ]  # fmt: skip
        env = {
            "PATH": STD_PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "CVS_MUNGE_SOCKET": self.munge_socket,
            "CVS_SLURM_NODE_DIR": SLURM_NODE_DIR,
        }
        out = self.node_dir(i) / "slurm-start.log"
        # output to a file, not a pipe: a daemon holding the pipe open would keep us waiting
        with open(out, "ab") as logf:
            r = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                cwd="/", env=env, timeout=60,
            )  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(
                f"starting munged/slurmd on {self.names[i]} failed (rc={r.returncode}):\n"
                + self._slurm_log_tails(nodes=[i])
            )

    def _record_node_slurm(self, i: int, timeout: float = 10) -> None:
        """Record node i's munged and slurmd PIDs in state.json. slurmd daemonizes with a
        double fork: its launcher returns before the daemon is re-parented to the node's PID 1,
        so wait (bounded) until it is."""
        sl = self._slurm_state()
        init = self.init_pid(i)
        deadline = time.monotonic() + timeout
        while True:
            found = {c: _node_slurm_daemons(init, c, sl) for c in ("munged", "slurmd")}
            if all(len(p) == 1 for p in found.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self._state["nodes"][i]["slurm"] = {
            c: [p[0], _proc_start(p[0])] if p else None for c, p in found.items()
        }
        self._save_state()

    def _slurm_state(self) -> dict:
        if not self.slurm_mode or not self._state.get("slurm"):
            raise RuntimeError("Slurm mode is not running: DockerCluster(..., slurm=True).start()")
        return self._state["slurm"]

    def _slurm_log_tails(self, *, root: bool = True, nodes: list[int] | None = None) -> str:
        files = []
        if root:
            names = ("munged.log", "slurmctld.out")  # .out: slurmctld.log and what precedes it
            files += [self.slurm_dir / "log" / f for f in names]
        for i in range(self.n) if nodes is None else nodes:
            files += [self.node_dir(i) / f for f in ("slurm-start.log", "munged.log", "slurmd.log")]
        out = []
        for p in files:
            if p.exists():
                lines = p.read_text(errors="replace").splitlines()[-10:]
                out.append(f"--- {p}\n" + "\n".join(lines))
        return "\n".join(out)

    def slurm_env(self) -> dict[str, str]:
        """What a Slurm client process (srun, salloc, sinfo...) needs in its environment, to
        merge into os.environ. Drop inherited SLURM_* variables first (a caller inside a real
        Slurm job has SLURM_JOB_ID...): ``slurm()`` does."""
        self._slurm_state()
        return {"SLURM_CONF": str(self.slurm_conf), "SLURM_WORKING_DIR": SLURM_WORKING_DIR}

    def slurm(
        self,
        *argv: str,
        check: bool = False,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (``slurm("srun", "-N3", "hostname")``) from the root
        namespace with this cluster's environment; text output."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(self.slurm_env())
        argv2 = [_which(argv[0]) or argv[0], *map(str, argv[1:])]
        proc = subprocess.run(
            argv2, capture_output=True, text=True, input=input, timeout=timeout, env=env
        )
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, argv2, proc.stdout, proc.stderr)
        return proc

    def slurm_nodes_info(self) -> dict[str, dict[str, str]]:
        """``scontrol -o show node`` as {node: {field: value}} (empty when slurmctld does not
        answer)."""
        r = self.slurm("scontrol", "-o", "show", "node", timeout=30)
        out: dict[str, dict[str, str]] = {}
        for line in r.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "NodeName" in fields:
                out[fields["NodeName"]] = fields
        return out

    def slurm_node_state(self, name: str) -> str:
        """The node's state as slurmctld sees it: IDLE, MIXED, ALLOCATED, IDLE+COMPLETING,
        IDLE+NOT_RESPONDING, DOWN+NOT_RESPONDING, ... ("" when slurmctld does not answer)."""
        return self.slurm_nodes_info().get(name, {}).get("State", "")

    def wait_slurm_idle(self, timeout: float = 60, names: list[str] | None = None) -> None:
        """Wait until the nodes (default: all) are IDLE, with no flag (no NOT_RESPONDING,
        COMPLETING, DRAIN...): no job left on them, slurmctld hears from their slurmd."""
        want = names or self.names
        deadline = time.monotonic() + timeout
        while True:
            states = {k: v.get("State", "") for k, v in self.slurm_nodes_info().items()}
            if all(states.get(n) == "IDLE" for n in want):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Slurm nodes not idle after {timeout:.0f}s: {states}\n"
                    + self.slurm("sinfo", "-R", timeout=30).stdout
                    + self._slurm_log_tails(nodes=[self.names.index(n) for n in want])
                )
            time.sleep(0.1)

    def stop_slurmd(self, i: int) -> None:
        """Stop node i's slurmd (TERM, then KILL), as a crashed node daemon: running steps
        (their slurmstepd) and the node's munged stay. Verified gone; a no-op when stopped."""
        sl = self._slurm_state()
        pids = _node_slurm_daemons(self.init_pid(i), "slurmd", sl)
        if _term_wait(pids, 10):
            raise RuntimeError(f"slurmd of {self.names[i]} did not die")
        rec = self._state["nodes"][i].setdefault("slurm", {})
        rec["slurmd"] = None
        self._save_state()

    def start_slurmd(self, i: int, timeout: float = 60) -> None:
        """Start node i's slurmd again (and its munged, if gone); returns once slurmctld has
        its registration and the node responds (a DOWN node is back: ReturnToService=2).
        Idempotent: with slurmd running it only waits until the node responds."""
        sl = self._slurm_state()
        name = self.names[i]
        before = self.slurm_nodes_info().get(name, {}).get("SlurmdStartTime")
        running = bool(_node_slurm_daemons(self.init_pid(i), "slurmd", sl))
        if not running:
            self._node_slurm(i)
        self._record_node_slurm(i)
        deadline = time.monotonic() + timeout
        while True:
            info = self.slurm_nodes_info().get(name, {})
            state = info.get("State", "")
            # a new slurmd's registration carries its start time (1 s resolution)
            registered = running or info.get("SlurmdStartTime") not in (None, before)
            if registered and state and not any(bad in state for bad in ("DOWN", "NOT_RESPONDING")):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"slurmd of {name} not back after {timeout:.0f}s (State={state}):\n"
                    + self._slurm_log_tails(nodes=[i])
                )
            time.sleep(0.1)

    def salloc(self, nodes: int | str | list[str], *args: str, timeout: float = 30) -> str:
        """A new allocation (``salloc --no-shell``) on `nodes`: a count (``3``: ``-N 3``), a
        node list (``"node1,node2"``: ``-w``), a list of names, or salloc options as one string
        (``"-N 3"``, ``"--nodelist=node1,node2"``); more options in `args`. Returns its job id;
        fails when it is not granted within `timeout` s (--immediate). Release it with
        ``scancel(job_id)``."""
        if isinstance(nodes, int):
            sel = ["-N", str(nodes)]
        elif isinstance(nodes, str):
            sel = shlex.split(nodes) if nodes.startswith("-") else ["-w", nodes]
        else:
            sel = ["-N", str(len(nodes)), "-w", ",".join(nodes)]
        argv = ["salloc", "--no-shell", f"--immediate={max(1, round(timeout))}", *sel, *args]
        r = self.slurm(*argv, timeout=timeout + 30)
        m = re.search(r"Granted job allocation (\d+)", r.stderr)
        if r.returncode != 0 or not m:
            raise CommandError(r.returncode, argv, r.stdout, r.stderr)
        return m.group(1)

    def scancel(self, job_id: str | int, *, wait: bool = True, timeout: float = 60) -> None:
        """Cancel a job ("J") or one step of it ("J.S"); with `wait`, return once squeue no
        longer lists it (its processes are gone, its nodes released). A job or step that
        already ended is not an error."""
        jid = str(job_id)
        r = self.slurm("scancel", jid, timeout=30)
        gone = ("already completing or completed", "Invalid job id")
        if r.returncode != 0 and not any(g in r.stderr for g in gone):
            raise CommandError(r.returncode, ["scancel", jid], r.stdout, r.stderr)
        if not wait:
            return
        job = jid.split(".")[0]
        deadline = time.monotonic() + timeout
        while True:
            if "." in jid:
                q = self.slurm("squeue", "-h", "-s", "-j", job, "-o", "%i", timeout=30)
                listed = jid in q.stdout.split()
            else:
                q = self.slurm("squeue", "-h", "-j", job, "-o", "%T", timeout=30)
                listed = bool(q.stdout.strip())
            if q.returncode == 0 and not listed:
                return
            if q.returncode != 0 and "Invalid job id" in q.stderr:
                return  # purged already (MinJobAge)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"job {jid} still listed {timeout:.0f}s after scancel: {q.stdout}"
                )
            time.sleep(0.1)

    # -- using the nodes -------------------------------------------------------------------
    def _docker_env(self) -> dict[str, str]:
        # an isolated client config: the caller's ~/.docker (contexts, credential helpers,
        # DOCKER_HOST) must not redirect the harness's commands
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_CONFIG"] = str(self.workdir / "docker-cli")
        return env

    def docker(
        self,
        i: int,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """The docker CLI against node i's engine, from the root namespace (text output)."""
        argv = [docker_cli(), "-H", f"unix://{self.docker_socket(i)}", *map(str, args)]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            env=self._docker_env(),
        )
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def ssh_argv(self, i: int, *options: str) -> list[str]:
        """argv prefix of an ssh to node i with the harness config (append the command)."""
        return ["ssh", "-F", str(self.ssh_config), *options, f"{self.user}@{self.hosts[i]}"]

    def ssh(
        self,
        i: int,
        cmd: str,
        *,
        check: bool = False,
        timeout: float = 60,
        input: str | None = None,
        options: tuple[str, ...] | list[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` (a shell string) on node i over ssh as root; strict host-key checking."""
        argv = [*self.ssh_argv(i, *options), cmd]
        proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def image_id(self, i: int, ref: str) -> str:
        return self.docker(i, "image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()

    def import_image(self, i: int, source: str | Path, tag: str) -> str:
        """Put an image under `tag` on node i only; returns its ID. `source`: a rootfs tar or
        directory (``docker import``, e.g. ``variant_tar``) or a ``docker save`` tar (loaded,
        then tagged)."""
        src = Path(source)
        if src.is_dir():
            tar = subprocess.run(
                ["tar", "-C", str(src), "--numeric-owner", "-cf", "-", "."],
                capture_output=True,
                check=True,
            ).stdout
            argv = [
                docker_cli(),
                "-H",
                f"unix://{self.docker_socket(i)}",
                "import",
                *IMPORT_CHANGES,
                "-",
                tag,
            ]
            subprocess.run(
                argv,
                input=tar,
                capture_output=True,
                check=True,
                env=self._docker_env(),
                timeout=300,
            )
        elif _is_docker_save(src):
            out = self.docker(i, "load", "-i", str(src), timeout=300).stdout
            m = re.search(r"Loaded image(?: ID)?: (\S+)", out)
            if not m:
                raise RuntimeError(f"docker load printed no image: {out}")
            self.docker(i, "tag", m.group(1), tag)
        else:
            self.docker(i, "import", *IMPORT_CHANGES, str(src), tag, timeout=300)
        return self.image_id(i, tag)

    def reset_images(self, i: int | None = None) -> None:
        """Put the original test images back under their tags (after import_image)."""
        assert self.artefacts is not None
        for j in range(self.n) if i is None else [i]:
            self.docker(j, "load", "-q", "-i", str(self.artefacts / "images.tar"), timeout=300)

    def partition(self, i: int) -> None:
        """Cut node i off the network (its bridge port goes down): ssh to it times out, its
        engine is still reachable through docker(i, ...)."""
        _run(["ip", "link", "set", self.veths[i], "down"])

    def heal(self, i: int) -> None:
        _run(["ip", "link", "set", self.veths[i], "up"])

    def init_pid(self, i: int) -> int:
        """Root-namespace PID of node i's PID 1 (node_harness.sh)."""
        name = self.names[i]
        upid = self._unshare_pid(i)
        marker = _marker(name, self.workdir)
        for c in _children(upid):
            if marker in _cmdline(c):
                return c
        raise RuntimeError(f"node {name} is not running")

    def _unshare_pid(self, i: int) -> int:
        if self._popens.get(self.names[i]):
            return self._popens[self.names[i]].pid
        state = json.loads((self.workdir / "state.json").read_text())
        return int(state["nodes"][i]["unshare_pid"])

    def nsenter(self, i: int, *cmd: str, check: bool = True, timeout: float = 60):
        """Run a command inside all of node i's namespaces (as its root)."""
        argv = ["nsenter", "-t", str(self.init_pid(i)), "-m", "-u", "-i", "-n", "-p", "--", *cmd]
        return _run(argv, check=check, timeout=timeout, cwd="/", env={"PATH": STD_PATH})

    def _sshd_listeners(self, i: int) -> list[int]:
        # the node's sshd listener is a child of the node's PID 1 (started there, or started by
        # start_sshd() as a daemon and re-parented there); per-connection sshds are its
        # children -- until the listener stops, when they too are re-parented to PID 1. Only
        # the listener's title says "[listener]" (OpenSSH >= 8.2); its argv names the config.
        def is_listener(pid: int) -> bool:
            cmd = _cmdline(pid)
            args = cmd.split(b"\0")
            if b"[listener]" in cmd:
                return True
            # Not yet titled: the listener's own argv, but not a re-exec'd connection (-R).
            return b"-R" not in args and not cmd.startswith(b"sshd: ") and b"sshd_config" in cmd

        return [c for c in _children(self.init_pid(i)) if _comm(c) == "sshd" and is_listener(c)]

    def stop_sshd(self, i: int, *, sessions: bool = False) -> None:
        """Stop node i's sshd on :22 (new connections are refused). Established sessions
        survive, as with `systemctl stop ssh`, unless `sessions=True`."""
        listeners = self._sshd_listeners(i)
        for pid in listeners:
            victims = _descendants(pid) if sessions else []
            _kill(pid, signal.SIGTERM)
            for v in victims:
                _kill(v, signal.SIGTERM)
        deadline = time.monotonic() + 10
        # Gone means: no banner AND the listener process exited, so a start_sshd() right after
        # does not mistake a listener that is still shutting down for a running one.
        while _banner(self.hosts[i], 22, 0.3) or any(_alive(p) for p in listeners):
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd on {self.names[i]} still answers")
            time.sleep(0.05)

    def start_sshd(self, i: int) -> None:
        """Start node i's sshd on :22 again (no-op when it runs)."""
        if not self._sshd_listeners(i):
            nd = f"{NODE_SHARE}/nodes/{self.names[i]}"
            # daemon mode: it re-parents to the node's PID 1, which reaps it
            self.nsenter(i, SSHD, "-f", f"{nd}/sshd_config", "-E", f"{nd}/sshd.log")
        deadline = time.monotonic() + 10
        while not _banner(self.hosts[i], 22, 0.5):
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd on {self.names[i]} did not come back")
            time.sleep(0.05)

    def gate_launch(self, i: int, closed: bool = True) -> None:
        """Hold (closed=True) or release every container start on node i: `docker run` there
        creates the container and then waits in the runtime until the gate opens (needs the
        runc wrapper: CVS_RUNC_WRAPPER must not be 0)."""
        if not self.runtime:
            raise RuntimeError("the launch gate needs the runc wrapper (CVS_RUNC_WRAPPER=0 set)")
        gate = self.workdir / "gates" / f"create-{self.names[i]}"
        if closed:
            gate.parent.mkdir(exist_ok=True)
            gate.touch()
        else:
            gate.unlink(missing_ok=True)

    def dockerd_pid(self, i: int) -> int | None:
        """Root-namespace PID of node i's dockerd (None when it does not run)."""
        init = self.init_pid(i)
        pids = [c for c in _descendants(init) if _comm(c) == "dockerd"]
        return pids[0] if pids else None

    def kill_dockerd(self, i: int) -> None:
        """SIGKILL node i's dockerd, as a crash would (containerd and the containers stay)."""
        pid = self.dockerd_pid(i)
        if pid is None:
            return
        _kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, 10):
            raise RuntimeError(f"dockerd of {self.names[i]} did not die")

    def pause_dockerd(self, i: int) -> None:
        """SIGSTOP node i's dockerd: its API accepts connections and never answers (a hung
        daemon). ``resume_dockerd(i)`` undoes it."""
        pid = self.dockerd_pid(i)
        if pid is None:
            raise RuntimeError(f"dockerd of {self.names[i]} is not running")
        _kill(pid, signal.SIGSTOP)

    def resume_dockerd(self, i: int) -> None:
        pid = self.dockerd_pid(i)
        if pid is not None:
            _kill(pid, signal.SIGCONT)

    def start_dockerd(self, i: int, timeout: float = 60) -> None:
        """Start node i's dockerd again after kill_dockerd() (no-op when it runs); returns
        once its API answers."""
        if self.dockerd_pid(i) is None:
            argv = [
                "nsenter", "-t", str(self.init_pid(i)), "-m", "-u", "-i", "-n", "-p", "--",
                "/bin/bash", f"{NODE_SHARE}/bin/node_harness.sh", "dockerd", self.names[i],
            ]  # fmt: skip
            env = self._node_env(i)
            # nsenter waits for its child (the new dockerd): kept as ours, stopped with the
            # node (its PID namespace dies with the node's PID 1)
            self._popens[f"dockerd-{self.names[i]}"] = subprocess.Popen(
                argv,
                cwd="/",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not _docker_ping(self.docker_socket(i), 0.5):
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd of {self.names[i]} did not come back")
            time.sleep(0.1)

    def status(self) -> list[dict[str, Any]]:
        out = []
        for i, name in enumerate(self.names):
            row: dict[str, Any] = {"name": name, "ip": self.hosts[i]}
            try:
                row["init_pid"] = self.init_pid(i)
            except (RuntimeError, OSError, KeyError, IndexError, ValueError):
                row["init_pid"] = None
            row["docker"] = _docker_ping(self.docker_socket(i))
            row["sshd"] = _banner(self.hosts[i], 22, 0.5)
            if row["docker"]:
                r = self.docker(i, "ps", "--format", "{{.Names}}", check=False)
                row["containers"] = r.stdout.split()
            out.append(row)
        if self.slurm_mode and self._state.get("slurm"):
            info = self.slurm_nodes_info()
            for row in out:
                row["slurm"] = info.get(row["name"], {}).get("State", "?")
        return out

    @classmethod
    def attach(cls, workdir: str | Path) -> DockerCluster:
        """A handle on a cluster started by another process (`up`), from its state.json."""
        wd = Path(workdir).resolve()
        state = json.loads((wd / "state.json").read_text())
        slurm = state.get("slurm") or {}
        c = cls(
            state["n"], wd, state["subnet"], state["prefix"], load_images=False, slurm=bool(slurm)
        )
        c._state = state
        c.slurmctld_port = int(slurm.get("port") or 0)
        if state.get("artefacts"):
            c.artefacts = Path(state["artefacts"])
        for tag in (IMAGE_WITH_SSHD, IMAGE_NO_SSHD):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                c.image_ids[tag] = c.image_id(0, tag)
        return c


# ------------------------------------------------------------------------------------ CLI
def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="docker_cluster.py", description="multi-node Docker test harness (see docstring)"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start N nodes (stops an old cluster in DIR first)")
    up.add_argument("n", type=int)
    up.add_argument("dir", nargs="?", default=str(DEFAULT_WORKDIR))
    up.add_argument("--prefix", default=os.environ.get("CVS_HARNESS_PREFIX", DEFAULT_PREFIX))
    up.add_argument("--subnet", default=os.environ.get("CVS_HARNESS_SUBNET", DEFAULT_SUBNET))
    up.add_argument("--slurm", action="store_true", help="also run Slurm (slurmctld + slurmd)")
    for name in ("down", "status"):
        p = sub.add_parser(name)
        p.add_argument("dir", nargs="?", default=str(DEFAULT_WORKDIR))
    args = ap.parse_args(argv)
    wd = Path(args.dir).resolve()
    if args.cmd == "up":
        why = slurm_prerequisites_missing() if args.slurm else prerequisites_missing()
        if why:
            print(f"docker harness unavailable: {why}", file=sys.stderr)
            return 2
        try:
            c = DockerCluster(args.n, wd, args.subnet, args.prefix, slurm=args.slurm).start()
            # left up on purpose: a later start on this subnet must not take it over
            c._state["detached"] = True
            c._save_state()
        except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as e:
            print(f"up failed: {e}", file=sys.stderr)
            return 1
        print(f"{c.n} nodes up: {' '.join(c.hosts)}")
        print(f"  ssh -F {c.ssh_config} {c.hosts[0]} sudo docker images")
        print(f"  docker -H unix://{c.docker_socket(0)} ps")
        if c.slurm_mode:
            env = " ".join(f"{k}={v}" for k, v in c.slurm_env().items())
            print(f"  {env} srun -N{c.n} hostname")
        print(f"  python {__file__} down {wd}")
        return 0  # the nodes keep running: `down` stops them by their recorded PIDs
    if args.cmd == "down":
        if not (wd / "state.json").exists():
            print(f"no cluster recorded in {wd}")
            return 0
        problems = _teardown(wd)
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
        return 1 if problems else 0
    if not (wd / "state.json").exists():
        print(f"not up (no {wd / 'state.json'})")
        return 0
    c = DockerCluster.attach(wd)
    for row in c.status():
        print(
            f"{row['name']} {row['ip']} init={row['init_pid']} docker={row['docker']} "
            f"sshd={row['sshd']} containers={' '.join(row.get('containers', []))}"
            + (f" slurm={row['slurm']}" if "slurm" in row else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
