#!/usr/bin/env python3
"""Fan-out benchmark: cvs_core against parallel-ssh 2.16 on N real loopback sshd hosts.

For each N (first N hosts of one SshdCluster started once) and each tool, in a fresh worker
subprocess per measurement:

- cold:     construct the client and run ``hostname`` on all N hosts;
- warm:     one more ``hostname`` on all N hosts;
- warm x20: 20 sequential ``hostname`` fan-outs on all N hosts.

Each phase records wall time and client CPU. Client CPU is everything the client side burns:
this process (RUSAGE_SELF, all threads), reaped child processes (RUSAGE_CHILDREN: cvs_core's
``ssh -G`` probes and the ``ssh -M -f`` launchers, which do the key exchange and authentication
before forking) and cvs_core's daemonized masters, which are not our children and are read
from /proc. Memory is the PSS of the client process tree after the warm phase, per host.

Usage: ``python benchmarks/fanout.py [--sizes 1,8,32,64,256] [--repeats R] [--quick]``;
``--sizes 512,1024`` for the scale run (see benchmarks/README.md).
The parent re-invokes this file with ``--worker TOOL --n N --spec FILE`` for one measurement;
the worker prints one JSON object on its last stdout line.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "fanout.json"
DEFAULT_SIZES = (1, 8, 32, 64, 256)
DEFAULT_PSSH_MAX_HOSTS: int | None = None
CMD = "hostname"
WARM_LOOPS = 20
MB = 1e6  # decimal megabytes: the target "<= 2 MB per host" is read at its strictest

# Tool ids, in the order of the table's column groups. cvs_core without an ssh_config is the
# headline (it picks its own key exchange like a user without one); "+cfg" hands it the
# cluster's ssh_config, which pins curve25519 explicitly.
CVS = "cvs_core"
CVS_CFG = "cvs_core+cfg"
PSSH = "parallel-ssh"
TOOLS = (CVS, PSSH, CVS_CFG)
PHASES = ("cold", "warm", "warm_x20")
PHASE_LABEL = {"cold": "cold", "warm": "warm", "warm_x20": f"warm x{WARM_LOOPS}"}


# Per-host stdout for the folding measurement: distinct per host (its name first), ~4 KB, so
# fold() gets N groups of one host each and hashes N x 4 KB (its worst case).
FOLD_CMD = "echo $CVS_HOST_NAME; head -c 4096 /dev/zero | tr '\\0' x"


# --------------------------------------------------------------------------------------------
# Measurement primitives (worker side)
# --------------------------------------------------------------------------------------------
def raise_limits() -> dict[str, list[int]]:
    """Soft RLIMIT_NOFILE and RLIMIT_NPROC up to the hard limits, for this process (and its
    children) only; returns {name: [soft before, soft after, hard]} (-1 = unlimited).

    At 1,024 hosts cvs_core holds pipes and mux sockets per in-flight command, its masters and
    the loopback sshd sessions are thousands of this user's processes, and parallel-ssh holds a
    socket per host: a usual soft limit (1024 files, 4096 processes) is too low, while the hard
    limit usually is not. Nothing system-wide changes.
    """
    out = {}
    for name in ("RLIMIT_NOFILE", "RLIMIT_NPROC"):
        which = getattr(resource, name)
        soft, hard = resource.getrlimit(which)
        if soft != hard:
            resource.setrlimit(which, (hard, hard))
        out[name] = [soft, resource.getrlimit(which)[0], hard]
    return out


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def user_tasks() -> int:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from harness.proc import user_tasks as count

    return count()


def _rusage_cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def task_cpu(pid: int) -> float:
    """CPU seconds used so far by process `pid` (0.0 once it is gone).

    /proc/<pid>/schedstat's first field is the exact run time in ns; /proc/<pid>/stat's
    utime+stime are in clock ticks (10 ms), which rounds a warm master's ~0.1 ms per command
    down to 0 and would under-count 64 masters by up to 640 ms. stat is only the fallback.
    """
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (all CPUs, /proc/stat's first line)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def proc_mem(pid: int | str) -> dict[str, int]:
    """PSS, USS (private pages) and RSS of one process in bytes, from smaps_rollup."""
    want = {"Pss:": "pss", "Rss:": "rss", "Private_Clean:": "uss", "Private_Dirty:": "uss"}
    out = {"pss": 0, "uss": 0, "rss": 0}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in want:
            out[want[parts[0]]] += int(parts[1]) * 1024
    return out


class Meter:
    """Wall time and client CPU of one phase.

    `master_pids` are the daemonized processes whose CPU belongs to the client too; a PID not
    seen at start counts from zero (a master born during the phase started at ~0 CPU).
    """

    def start(self, master_pids: list[int]) -> None:
        self.m0 = {p: task_cpu(p) for p in master_pids}
        self.busy0 = machine_busy_s()
        self.s0 = _rusage_cpu(resource.RUSAGE_SELF)
        self.c0 = _rusage_cpu(resource.RUSAGE_CHILDREN)
        self.t0 = time.perf_counter()

    def stop_clock(self) -> None:
        self.wall = time.perf_counter() - self.t0
        self.self_cpu = _rusage_cpu(resource.RUSAGE_SELF) - self.s0
        self.child_cpu = _rusage_cpu(resource.RUSAGE_CHILDREN) - self.c0
        self.busy = machine_busy_s() - self.busy0

    def result(self, master_pids: list[int]) -> dict[str, float]:
        masters = sum(task_cpu(p) - self.m0.get(p, 0.0) for p in master_pids)
        client = self.self_cpu + self.child_cpu + masters
        return {
            "wall_ms": self.wall * 1e3,
            "cpu_ms": client * 1e3,
            "self_cpu_ms": self.self_cpu * 1e3,
            "children_cpu_ms": self.child_cpu * 1e3,
            "masters_cpu_ms": masters * 1e3,
            # All CPUs' busy time in the phase (10 ms ticks) and what the client did not use:
            # the local sshd servers and their shells, plus any foreign load.
            "machine_cpu_ms": self.busy * 1e3,
            "rest_cpu_ms": max(0.0, self.busy - client) * 1e3,
        }


class BenchFailure(RuntimeError):
    """A command did not succeed on every host: the measurement is worthless."""


class HostOut(NamedTuple):
    """One host's answer as the client reported it inside the timed region."""

    host: str
    code: int | None
    stdout: str
    # parallel-ssh only: re-reads the exit status after the clock stopped (see check()).
    recheck: Callable[[], int | None] | None = None


# --------------------------------------------------------------------------------------------
# The two clients behind one interface
# --------------------------------------------------------------------------------------------
class CvsCoreClient:
    def __init__(self, spec: dict[str, Any], hosts: list[str], with_config: bool) -> None:
        import cvs_core

        # Extra Cluster arguments from the command line (--max-parallel, --max-connect,
        # --connect-timeout); none by default, so the default run measures the defaults.
        self.cl = cvs_core.Cluster(
            hosts,
            user=spec["user"],
            key=spec["key"],
            known_hosts=spec["known_hosts"],
            ssh_config=spec["ssh_config"] if with_config else None,
            **spec.get("cluster_kwargs", {}),
        )
        self.hosts = hosts
        self.slowest_command_s: float | None = None
        self.last: Any = None

    def run(self) -> list[HostOut]:
        """Run CMD everywhere; one HostOut per host, output consumed."""
        res = self.cl.exec(CMD)
        self.last = res
        out = [HostOut(h.host, h.exit_code, h.stdout) for h in res]
        if not res.ok:
            raise BenchFailure(f"cvs_core: {describe_failures(res)}")
        # The slowest host's command alone (its connect excluded): read only for the cold
        # phase, to tell connecting from running.
        self.slowest_command_s = max(h.duration_s for h in res)
        return out

    def master_pids(self) -> list[int]:
        return list(self.cl.master_pids())

    def close(self) -> None:
        self.cl.close()


class PsshClient:
    """parallel-ssh exactly as CVS builds and drives it."""

    def __init__(self, spec: dict[str, Any], hosts: list[str]) -> None:
        from pssh.clients import ParallelSSHClient

        # CVS passes user, pkey and keepalive; everything else (num_retries=3, pool_size=100,
        # no host key checking) is the library default.
        self.client = ParallelSSHClient(
            hosts, user=spec["user"], pkey=str(spec["key"]), keepalive_seconds=30
        )
        self.hosts = hosts
        self.slowest_command_s: float | None = None

    def run(self) -> list[HostOut]:
        output = self.client.run_command(CMD)
        self.client.join(output)
        # CVS consumes each host's output as list(o.stdout), then reads o.exit_code.
        out = [
            HostOut(o.host, o.exit_code, "\n".join(list(o.stdout)), lambda o=o: o.exit_code)
            for o in output
        ]
        bad = [f"{o.host}: {o.exception!r}" for o in output if o.exception is not None]
        if bad:
            raise BenchFailure(f"parallel-ssh: {len(bad)} hosts failed: {bad[:5]}")
        return out

    def master_pids(self) -> list[int]:
        return []  # everything is in-process

    def close(self) -> None:
        # ParallelSSHClient has no close(); dropping it lets each SSHClient disconnect.
        del self.client


def describe_failures(res: Any) -> str:
    """What failed, grouped: at 1,024 hosts a list of the first five says too little (how many
    timed out in the banner exchange, how many were refused...)."""
    from collections import Counter

    bad = [h for h in res if not h.ok]
    # Numbers (addresses, ports, seconds) vary per host; the kind of failure does not.
    kinds = Counter(
        (h.status, " ".join(w for w in (h.error or "").split() if not any(c.isdigit() for c in w)))
        for h in bad
    )
    worst = "; ".join(f"{n} x {st}: {msg[:160]}" for (st, msg), n in kinds.most_common(6))
    first = [f"{h.host}: {h.status} {h.error or ''}".strip() for h in bad[:3]]
    return (
        f"{len(bad)} of {len(res)} hosts failed ({res.summary()}); by kind: {worst}; e.g. {first}"
    )


def check(out: list[HostOut], hosts: list[str], what: str) -> int:
    """Every host answered, exit code 0, with a non-empty hostname; abort otherwise.

    parallel-ssh now and then reports exit_code None after join() although the output arrived
    (the channel's EOF/exit-status not yet processed). Such a status is re-read once, after the
    clock stopped: a 0 then is accepted and counted (returned), anything else aborts.
    """
    if len(out) != len(hosts) or {o.host for o in out} != set(hosts):
        raise BenchFailure(f"{what}: {len(out)} results for {len(hosts)} hosts")
    late = 0
    bad = []
    for o in out:
        code = o.code
        if code is None and o.recheck is not None:
            code = o.recheck()
            late += code == 0
        if code != 0 or not o.stdout.strip():
            bad.append((o.host, o.code, code, o.stdout[:80]))
    if bad:
        raise BenchFailure(f"{what}: {len(bad)} hosts did not succeed: {bad[:5]}")
    return late


def client_spec(cluster: Any, **extra: Any) -> dict[str, Any]:
    """What a worker needs to reach the harness's hosts (JSON-serializable)."""
    return {
        "hosts": cluster.hosts,
        "user": cluster.user,
        "key": str(cluster.key),
        "known_hosts": str(cluster.known_hosts),
        "ssh_config": str(cluster.ssh_config),
        **extra,
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def loaded_native() -> dict[str, str]:
    """Path and digest of the cvs_core extension this worker actually loaded."""
    import cvs_core._native as native

    return {"path": native.__file__, "sha256": _sha256(Path(native.__file__))}


def snapshot_cvs_core(dest: Path) -> dict[str, str]:
    """Copy the installed cvs_core package to `dest` and classify its extension's build.

    Workers import this copy (PYTHONPATH), so a `make dev` run by someone else during the
    benchmark cannot swap a debug build in halfway (it happened). Found without importing.
    """
    spec = importlib.util.find_spec("cvs_core")
    if spec is None or spec.origin is None:
        raise BenchFailure("cvs_core is not installed in this interpreter (run `make dev`)")
    pkg = shutil.copytree(
        Path(spec.origin).parent, dest / "cvs_core", ignore=shutil.ignore_patterns("__pycache__")
    )
    libs = sorted(pkg.glob("_native*.so"))
    if len(libs) != 1:
        raise BenchFailure(f"expected one cvs_core extension in {pkg}, found {libs}")
    digest = _sha256(libs[0])
    build = "unknown"
    for profile in ("release", "debug"):
        lib = REPO / "target" / profile / "libcvs_core.so"
        if lib.exists() and _sha256(lib) == digest:
            build = profile
            break
    return {"build": build, "sha256": digest, "source": spec.origin, "copy": str(pkg)}


def worker(tool: str, n: int, spec_path: Path) -> dict[str, Any]:
    limits = raise_limits()
    spec = json.loads(spec_path.read_text())
    hosts = spec["hosts"][:n]
    if len(hosts) != n:
        raise SystemExit(f"cluster has {len(spec['hosts'])} hosts, {n} requested")

    # Imports happen before any phase: CVS pays them once per process, not per fan-out.
    t = time.perf_counter()
    if tool == PSSH:
        import pssh.clients  # noqa: F401
    else:
        import cvs_core  # noqa: F401
    import_ms = (time.perf_counter() - t) * 1e3
    native = loaded_native() if tool != PSSH else None
    base_mem = proc_mem("self")

    record: dict[str, Any] = {
        "tool": tool,
        "n": n,
        "import_ms": import_ms,
        "native": native,
        "rlimits": limits,
        "cluster_kwargs": spec.get("cluster_kwargs", {}) if tool != PSSH else {},
    }
    meter = Meter()
    client: CvsCoreClient | PsshClient | None = None
    try:
        # (a) cold: construct + first command. Masters do not exist at start.
        meter.start([])
        if tool == PSSH:
            client = PsshClient(spec, hosts)
        else:
            client = CvsCoreClient(spec, hosts, with_config=tool == CVS_CFG)
        out = client.run()
        meter.stop_clock()
        pids = client.master_pids()
        _note_masters(spec_path, pids)
        cold = meter.result(pids)
        if client.slowest_command_s is not None:
            # The rest of cvs_core's cold wall time is the kex probe plus connecting masters.
            cold["slowest_command_ms"] = client.slowest_command_s * 1e3
        late = check(out, hosts, f"{tool} cold")
        if tool != PSSH and len(pids) != n:
            raise BenchFailure(f"{tool}: {len(pids)} masters for {n} hosts")
        record["cold"] = cold
        # Resources held once connected (outside the timed region): our descriptors, and every
        # task of this user (masters, the sshd sessions, us...), what RLIMIT_NPROC counts.
        record["fds_after_cold"] = open_fds()
        record["user_tasks_after_cold"] = user_tasks()

        # (b) warm: one more command over the live connections.
        meter.start(pids)
        out = client.run()
        meter.stop_clock()
        record["warm"] = meter.result(pids)
        late += check(out, hosts, f"{tool} warm")
        record["mem"] = _tree_mem(pids, base_mem, n)
        if isinstance(client, CvsCoreClient):
            record["fold"] = fold_timings(client)

        # (c) 20 sequential warm fan-outs; results are checked after the clock stops.
        outs = []
        meter.start(pids)
        for _ in range(WARM_LOOPS):
            outs.append(client.run())
        meter.stop_clock()
        record["warm_x20"] = meter.result(pids)
        record["warm_x20"]["per_command_ms"] = record["warm_x20"]["wall_ms"] / WARM_LOOPS
        for i, out in enumerate(outs):
            late += check(out, hosts, f"{tool} warm loop {i}")
        record["late_exit_status"] = late
        if client.master_pids() != pids:
            raise BenchFailure(f"{tool}: masters changed during the run (a reconnect happened)")
        record["mem_after_x20"] = _tree_mem(pids, base_mem, n)
    finally:
        if client is not None:
            client.close()
    return record


def fold_timings(client: CvsCoreClient) -> dict[str, float]:
    """Cost of consuming a Results at this N, outside the timed phases: fold() and summary()
    on the warm `hostname` results (identical output: one group), and a command printing ~4 KB
    that differs per host (N groups: fold hashes and copies N x 4 KB)."""
    res = client.last

    def ms(f: Callable[[], object]) -> float:
        t = time.perf_counter()
        f()
        return (time.perf_counter() - t) * 1e3

    out = {
        "fold_ms": ms(res.fold),
        "summary_ms": ms(res.summary),
        "iterate_ms": ms(lambda: [(h.host, h.stdout, h.exit_code) for h in res]),
    }
    t = time.perf_counter()
    big = client.cl.exec(FOLD_CMD)
    out["exec_4k_ms"] = (time.perf_counter() - t) * 1e3
    if not big.ok:
        raise BenchFailure(f"cvs_core 4 KB output: {describe_failures(big)}")
    out["fold_4k_ms"] = ms(big.fold)
    groups = big.fold()
    if len(groups) != len(client.hosts):
        raise BenchFailure(f"4 KB output folded into {len(groups)} groups, not {len(client.hosts)}")
    out["summary_4k_ms"] = ms(big.summary)
    out["iterate_4k_ms"] = ms(lambda: [(h.host, h.stdout, h.exit_code) for h in big])
    out["to_json_4k_ms"] = ms(big.to_json)
    return out


def _note_masters(spec_path: Path, pids: list[int]) -> None:
    """Leave our master PIDs where the parent finds them if it has to kill this worker."""
    if pids:
        (spec_path.parent / f"masters-{os.getpid()}.json").write_text(json.dumps(pids))


def _tree_mem(pids: list[int], base: dict[str, int], n: int) -> dict[str, float]:
    me = proc_mem("self")
    masters = [proc_mem(p) for p in pids]
    pss = me["pss"] + sum(m["pss"] for m in masters)
    return {
        "pss_mb_per_host": pss / n / MB,
        # Growth since before the client existed: the interpreter's own baseline left out.
        "incr_pss_mb_per_host": (pss - base["pss"]) / n / MB,
        "self_pss_mb": me["pss"] / MB,
        "baseline_pss_mb": base["pss"] / MB,
        "master_pss_mb_mean": (sum(m["pss"] for m in masters) / len(masters) / MB)
        if masters
        else 0.0,
        "master_uss_mb_mean": (sum(m["uss"] for m in masters) / len(masters) / MB)
        if masters
        else 0.0,
        "master_rss_mb_mean": (sum(m["rss"] for m in masters) / len(masters) / MB)
        if masters
        else 0.0,
    }


# --------------------------------------------------------------------------------------------
# Orchestration (parent side)
# --------------------------------------------------------------------------------------------
def run_worker(tool: str, n: int, spec_path: Path, pythonpath: Path) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", tool, "--n", str(n)]
    argv += ["--spec", str(spec_path)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        stdout, stderr = proc.communicate(timeout=120 + 2 * n)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        _reap_masters(spec_path, proc.pid)
        raise BenchFailure(f"{tool} N={n}: worker timed out") from None
    _reap_masters(spec_path, proc.pid)
    if proc.returncode != 0:
        sys.stderr.write(stderr)
        raise BenchFailure(f"{tool} N={n}: worker exited {proc.returncode} (stderr above)")
    return json.loads(stdout.strip().splitlines()[-1])


def _reap_masters(spec_path: Path, worker_pid: int) -> None:
    """End masters a killed worker left behind: only ours, recognized by its control dir."""
    note = spec_path.parent / f"masters-{worker_pid}.json"
    if not note.exists():
        return
    for pid in json.loads(note.read_text()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # already gone: the worker closed it
        if cmdline.startswith(b"ssh\0-M") and f"/cvs-core-{worker_pid}-".encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
    note.unlink()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "kernel": platform.release()}
    for pkg in ("cvs-core", "parallel-ssh", "ssh2-python", "gevent"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    out["openssh"] = ssh.stderr.strip()
    return out


def median_record(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric median over repeats (each number independently)."""
    out: dict[str, Any] = {"repeats": len(runs)}
    for section in (*PHASES, "mem", "fold"):
        if section not in runs[0]:
            continue  # fold: cvs_core only
        keys = runs[0][section].keys()
        out[section] = {k: statistics.median(r[section][k] for r in runs) for k in keys}
    out["held"] = {
        k: statistics.median(r[k] for r in runs)
        for k in ("fds_after_cold", "user_tasks_after_cold")
    }
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(x: float | None, width: int, digits: int = 1) -> str:
    return f"{x:>{width}.{digits}f}" if x is not None else f"{'-':>{width}}"


def render_table(
    summary: dict[str, dict[int, dict[str, Any]]], sizes: list[int], pssh_max: int | None = None
) -> str:
    def get(tool: str, n: int, section: str, key: str) -> float | None:
        rec = summary.get(tool, {}).get(n)
        return rec[section][key] if rec and section in rec else None

    lines = [
        "Time and client CPU (median; CPU includes ssh masters and reaped ssh children)",
        f"{'':>4} {'':<10}| {'cvs_core':^17} | {'parallel-ssh':^17} | {'cvs/pssh':^13} "
        f"| {'cvs_core+ssh_config':^19}",
        f"{'N':>4} {'phase':<10}| {'wall ms':>8} {'cpu ms':>8} | {'wall ms':>8} {'cpu ms':>8} "
        f"| {'wall':>6} {'cpu':>6} | {'wall ms':>9} {'cpu ms':>9}",
    ]
    lines.append("-" * len(lines[-1]))
    for n in sizes:
        for ph in PHASES:
            cw, cc = get(CVS, n, ph, "wall_ms"), get(CVS, n, ph, "cpu_ms")
            pw, pc = get(PSSH, n, ph, "wall_ms"), get(PSSH, n, ph, "cpu_ms")
            fw, fc = get(CVS_CFG, n, ph, "wall_ms"), get(CVS_CFG, n, ph, "cpu_ms")
            lines.append(
                f"{n:>4} {PHASE_LABEL[ph]:<10}| {fmt(cw, 8)} {fmt(cc, 8)} | {fmt(pw, 8)} "
                f"{fmt(pc, 8)} | {fmt(ratio(cw, pw), 6, 2)} {fmt(ratio(cc, pc), 6, 2)} | "
                f"{fmt(fw, 9)} {fmt(fc, 9)}"
            )
    lines += [
        "",
        "Memory after the warm phase: PSS of the client process tree / N, in MB (10^6 B)",
        f"{'N':>4} | {'cvs_core':>9} {'(incr)':>8} {'master':>7} | {'pssh':>9} {'(incr)':>8} "
        f"| {'cvs/pssh':>8}",
    ]
    lines.append("-" * len(lines[-1]))
    for n in sizes:
        c = get(CVS, n, "mem", "pss_mb_per_host")
        p = get(PSSH, n, "mem", "pss_mb_per_host")
        lines.append(
            f"{n:>4} | {fmt(c, 9, 2)} {fmt(get(CVS, n, 'mem', 'incr_pss_mb_per_host'), 8, 2)} "
            f"{fmt(get(CVS, n, 'mem', 'master_pss_mb_mean'), 7, 2)} | {fmt(p, 9, 2)} "
            f"{fmt(get(PSSH, n, 'mem', 'incr_pss_mb_per_host'), 8, 2)} | {fmt(ratio(c, p), 8, 2)}"
        )
    lines.append(
        "(incr) = growth since before the client existed, per host; master = mean PSS of one "
        "ssh master"
    )
    if pssh_max is not None and any(n > pssh_max for n in sizes):
        lines.append(f"parallel-ssh not run above {pssh_max} hosts (--pssh-max-hosts): '-'")
    lines += [
        "",
        "Held once connected: open fds of the client process, tasks of this user (masters, "
        "sshd sessions...)",
        f"{'N':>4} | {'cvs fds':>8} {'tasks':>7} | {'pssh fds':>8} {'tasks':>7}",
    ]
    lines.append("-" * len(lines[-1]))
    for n in sizes:
        lines.append(
            f"{n:>4} | {fmt(get(CVS, n, 'held', 'fds_after_cold'), 8, 0)} "
            f"{fmt(get(CVS, n, 'held', 'user_tasks_after_cold'), 7, 0)} | "
            f"{fmt(get(PSSH, n, 'held', 'fds_after_cold'), 8, 0)} "
            f"{fmt(get(PSSH, n, 'held', 'user_tasks_after_cold'), 7, 0)}"
        )
    lines += [
        "",
        "cvs_core Results, ms: fold() / summary() / iterate on the warm hostname results (one "
        "group); exec + fold() / summary() / iterate / to_json() of ~4 KB distinct per host (N "
        "groups)",
        f"{'N':>4} | {'fold':>6} {'summ':>6} {'iter':>6} | {'exec 4K':>8} {'fold':>6} "
        f"{'summ':>6} {'iter':>6} {'json':>6}",
    ]
    lines.append("-" * len(lines[-1]))
    for n in sizes:
        f = [
            get(CVS, n, "fold", k)
            for k in (
                "fold_ms",
                "summary_ms",
                "iterate_ms",
                "exec_4k_ms",
                "fold_4k_ms",
                "summary_4k_ms",
                "iterate_4k_ms",
                "to_json_4k_ms",
            )
        ]
        lines.append(
            f"{n:>4} | {fmt(f[0], 6, 2)} {fmt(f[1], 6, 2)} {fmt(f[2], 6, 2)} | {fmt(f[3], 8)} "
            f"{fmt(f[4], 6, 2)} {fmt(f[5], 6, 2)} {fmt(f[6], 6, 2)} {fmt(f[7], 6, 2)}"
        )
    return "\n".join(lines)


def evaluate_targets(summary: dict[str, dict[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    def val(tool: str, n: int, section: str, key: str) -> float | None:
        rec = summary.get(tool, {}).get(n)
        return rec[section][key] if rec else None

    def rel(n: int, section: str, key: str) -> float | None:
        return ratio(val(CVS, n, section, key), val(PSSH, n, section, key))

    rows = [
        ("warm command, 1 host, cvs_core wall", val(CVS, 1, "warm", "wall_ms"), 5.0, "ms"),
        ("warm fan-out, 64 hosts, wall cvs/pssh", rel(64, "warm", "wall_ms"), 0.8, "x"),
        ("cold connect+command, 64 hosts, wall cvs/pssh", rel(64, "cold", "wall_ms"), 0.8, "x"),
        (
            f"client CPU, {WARM_LOOPS} warm x 64 hosts, cvs/pssh",
            rel(64, "warm_x20", "cpu_ms"),
            0.3,
            "x",
        ),
        ("PSS per host at 256 hosts, cvs_core", val(CVS, 256, "mem", "pss_mb_per_host"), 2.0, "MB"),
        # Issue 12: at 1,024 hosts every host answers (else the run aborts) within 2 MB/host.
        (
            "PSS per host at 1024 hosts, cvs_core",
            val(CVS, 1024, "mem", "pss_mb_per_host"),
            2.0,
            "MB",
        ),
    ]
    out = []
    for name, measured, goal, unit in rows:
        verdict = "n/a" if measured is None else ("PASS" if measured <= goal else "MISS")
        out.append(
            {"target": name, "measured": measured, "goal": goal, "unit": unit, "result": verdict}
        )
    return out


def render_targets(targets: list[dict[str, Any]]) -> str:
    lines = [f"{'target (from the issue)':<48} {'measured':>10} {'goal':>9}  result"]
    lines.append("-" * len(lines[0]))
    for t in targets:
        m = "not run" if t["measured"] is None else f"{t['measured']:.2f} {t['unit']}"
        lines.append(
            f"{t['target']:<48} {m:>10} {'<= ' + format(t['goal'], 'g') + ' ' + t['unit']:>9}  "
            f"{t['result']}"
        )
    return "\n".join(lines)


def orchestrate(args: argparse.Namespace) -> int:
    sizes = [1, 8] if args.quick else sorted({int(s) for s in args.sizes.split(",")})
    tools = [t for t in TOOLS if not args.no_cfg_variant or t != CVS_CFG]
    limits = raise_limits()
    for name, (before, after, hard) in limits.items():
        if before != after:
            log(f"{name}: soft limit raised from {before} to {after} (hard {hard}), this run only")
    cluster_kwargs: dict[str, Any] = {}
    if args.max_parallel is not None:
        cluster_kwargs["max_parallel"] = args.max_parallel
    if args.max_connect is not None:
        cluster_kwargs["max_connect"] = args.max_connect
    if args.connect_timeout is not None:
        cluster_kwargs["connect_timeout"] = args.connect_timeout

    def tools_for(n: int) -> list[str]:
        if args.pssh_max_hosts is not None and n > args.pssh_max_hosts:
            return [t for t in tools if t != PSSH]
        return tools

    def repeats_for(n: int) -> int:
        if args.quick:
            return 1
        return args.repeats if args.repeats is not None else (3 if n <= 64 else 1)

    sys.path.insert(0, str(REPO))
    from harness.sshd_cluster import SshdCluster

    workdir = Path(tempfile.mkdtemp(prefix="cvs-bench-"))
    cluster = SshdCluster(max(sizes), workdir)
    runs: list[dict[str, Any]] = []
    started = time.time()
    # Other work on this small machine skews everything; it is reported, not corrected.
    busy_at_start = cpu_busy_fraction(2.0)
    if busy_at_start > 0.1:
        log(f"WARNING: CPU {busy_at_start:.0%} busy before starting: the machine is not idle")
    try:
        snap = snapshot_cvs_core(workdir / "pkg")
        log(f"cvs_core: {snap['build']} build {snap['sha256'][:16]} (from {snap['source']})")
        if snap["build"] != "release":
            log("WARNING: not a release build: run `maturin develop --release` first")
        t = time.perf_counter()
        cluster.start(timeout=max(120.0, 0.25 * max(sizes)))
        start_s = time.perf_counter() - t
        log(f"{max(sizes)} sshd hosts up in {start_s:.1f}s ({cluster.mode} mode)")
        spec_path = workdir / "bench_spec.json"
        spec = client_spec(cluster, cluster_kwargs=cluster_kwargs)
        spec_path.write_text(json.dumps(spec))
        for si, n in enumerate(sizes):
            here = tools_for(n)
            if len(here) < len(tools):
                log(f"N={n}: parallel-ssh skipped (--pssh-max-hosts {args.pssh_max_hosts})")
            for rep in range(repeats_for(n)):
                # Rotate who goes first (per N and per repeat) so none always gets the
                # quietest machine or inherits the previous tool's sshd teardown.
                k = (si + rep) % len(here)
                for tool in here[k:] + here[:k]:
                    time.sleep(args.settle)
                    load = loadavg()
                    r = run_worker(tool, n, spec_path, workdir / "pkg")
                    if r["native"] and r["native"]["sha256"] != snap["sha256"]:
                        raise BenchFailure(f"{tool} N={n} loaded {r['native']}, not the snapshot")
                    r["repeat"] = rep
                    r["loadavg_before"] = load
                    runs.append(r)
                    log(
                        f"N={n:<4} rep {rep} {tool:<13} cold {r['cold']['wall_ms']:8.1f} ms  "
                        f"warm {r['warm']['wall_ms']:7.1f} ms  x{WARM_LOOPS} "
                        f"{r['warm_x20']['wall_ms']:8.1f} ms  cpu x{WARM_LOOPS} "
                        f"{r['warm_x20']['cpu_ms']:8.1f} ms"
                        + (
                            f"  ({r['late_exit_status']} late exit status)"
                            if r["late_exit_status"]
                            else ""
                        )
                        + f"  fds {r['fds_after_cold']}"
                    )
    finally:
        # What the servers logged about dropped or failed connections (MaxStartups, timeouts
        # before authentication...): a client that retried would hide them.
        server_errors = sshd_log_problems(cluster)
        for line, count in server_errors.items():
            log(f"sshd logs: {count} x {line}")
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    summary: dict[str, dict[int, dict[str, Any]]] = {}
    for tool in tools:
        for n in sizes:
            mine = [r for r in runs if r["tool"] == tool and r["n"] == n]
            if mine:
                summary.setdefault(tool, {})[n] = median_record(mine)
    targets = evaluate_targets(summary)

    print(render_table(summary, sizes, args.pssh_max_hosts))
    print()
    print(render_targets(targets))
    if snap["build"] != "release":
        print(f"\nWARNING: cvs_core {snap['build']} build measured: these numbers mean little.")
    if busy_at_start > 0.1:
        print(f"\nWARNING: CPU was {busy_at_start:.0%} busy before the run: machine not idle.")

    doc = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": time.time() - started,
            "cpus": os.cpu_count(),
            "command": CMD,
            "warm_loops": WARM_LOOPS,
            "sizes": sizes,
            "repeats": {str(n): repeats_for(n) for n in sizes},
            "cvs_core_build": snap,
            "cluster_kwargs": cluster_kwargs,
            "pssh_max_hosts": args.pssh_max_hosts,
            "rlimits": limits,
            "sshd_start_s": start_s,
            "sshd_log_problems": server_errors,
            "cpu_busy_at_start": busy_at_start,
            "versions": versions(),
            "cpu_accounting": "RUSAGE_SELF + RUSAGE_CHILDREN deltas + ssh master schedstat deltas",
            "memory": "PSS (smaps_rollup) of this process + cvs_core masters, divided by N; MB=1e6",
        },
        "summary": {t: {str(n): rec for n, rec in by_n.items()} for t, by_n in summary.items()},
        "targets": targets,
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nJSON: {out}")
    return 0


def sshd_log_problems(cluster: Any) -> dict[str, int]:
    """Lines of every host's sshd log that tell of a refused, dropped or failed connection,
    counted by kind (addresses and numbers removed)."""
    from collections import Counter

    keys = ("drop", "MaxStartups", "Timeout", "error", "fatal", "refused", "Connection reset")
    found: Counter[str] = Counter()
    for h in cluster.host_list:
        try:
            text = (h.dir / "sshd.log").read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if any(k in line for k in keys):
                found[" ".join(w for w in line.split() if not any(c.isdigit() for c in w))] += 1
    return dict(found.most_common(20))


def cpu_busy_fraction(seconds: float) -> float:
    """Share of all CPUs' time spent busy over `seconds` (/proc/stat; loadavg lags a minute)."""

    b0 = machine_busy_s()
    time.sleep(seconds)
    return (machine_busy_s() - b0) / (seconds * (os.cpu_count() or 1))


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="host counts")
    p.add_argument("--repeats", type=int, help="runs per (tool, N); default 3 (N<=64) / 1")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output path")
    p.add_argument("--quick", action="store_true", help="smoke test: sizes 1,8, one repeat")
    p.add_argument(
        "--no-cfg-variant", action="store_true", help="skip cvs_core with the ssh_config"
    )
    p.add_argument("--settle", type=float, default=0.5, help="pause before each run (s)")
    p.add_argument(
        "--pssh-max-hosts",
        type=int,
        default=DEFAULT_PSSH_MAX_HOSTS,
        help="skip parallel-ssh above this many hosts (default %(default)s)",
    )
    p.add_argument("--max-parallel", type=int, help="cvs_core Cluster(max_parallel=)")
    p.add_argument(
        "--max-connect", type=int, help="cvs_core Cluster(max_connect=), where it exists"
    )
    p.add_argument("--connect-timeout", type=float, help="cvs_core Cluster(connect_timeout=)")
    p.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.spec)))
        return 0
    try:
        return orchestrate(args)
    except BenchFailure as e:
        log(f"BENCHMARK ABORTED: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
