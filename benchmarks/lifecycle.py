#!/usr/bin/env python3
"""Container lifecycle benchmark: cvs_core's native driver against CVS's algorithm.

On N simulated Docker nodes (harness/docker_cluster.py; one cluster per N, started once), each
measurement in a fresh worker subprocess:

- per_run:  cold ``setup`` (no container yet: launch + provision) then ``setup_sshd``, checked
            by the parent, then ``teardown`` (removes the containers), all in one process as a
            CVS per_run job does;
- attach:   a persistent container set is brought up by one worker (cold, recorded too), then a
            second worker (a separate invocation, as CVS users run it) does ``setup`` +
            ``setup_sshd`` again, which must attach to the running containers.

Implementations:

- native:  ``cvs_core.ContainerLifecycle(cfg, ssh_config=..., pull="never")``; per-phase times
           from its ``progress`` events;
- cvs-alg: CVS's orchestrator (``cvs_core.compat.orchestrators``): CVS's own command sequence
           (ps/rm/run, base64 provisioning, six sshd commands one by one, ``time.sleep(2)``,
           pgrep validation) on cvs-core's SSH transport; per-command times from a timer
           wrapped around its fan-out handle.

Usage: ``python benchmarks/lifecycle.py [--sizes 3,8] [--repeats R] [--out F] [--quick]``.
The parent re-invokes this file with ``--worker IMPL --op OP --name NAME --spec FILE`` for one
measurement; the worker prints one JSON object on its last stdout line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

# Shared with the fan-out benchmark: the build snapshot, machine checks and table helpers.
from fanout import (
    BenchFailure,
    cpu_busy_fraction,
    fmt,
    loadavg,
    loaded_native,
    log,
    ratio,
    snapshot_cvs_core,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "lifecycle.json"
DEFAULT_SIZES = (3, 8)

NATIVE = "native"
CVS_ALG = "cvs-alg"
IMPLS = (NATIVE, CVS_ALG)
IMPL_LABEL = {NATIVE: "native", CVS_ALG: "CVS alg."}
NAME_TAG = {NATIVE: "nat", CVS_ALG: "cvs"}

# Worker operations. per_run: setup + sshd, parent check, teardown. cold: the persistent
# set's first setup + sshd. attach: setup + sshd again, in a new process.
OP_PER_RUN = "per_run"
OP_COLD = "cold"
OP_ATTACH = "attach"
OPS = (OP_PER_RUN, OP_COLD, OP_ATTACH)
# Rows of the table, per op: (call or "total", label).
TABLE_ROWS = (
    (OP_PER_RUN, "setup", "per_run  setup"),
    (OP_PER_RUN, "sshd", "per_run  sshd"),
    (OP_PER_RUN, "total", "per_run  total"),
    (OP_PER_RUN, "teardown", "per_run  teardown"),
    (OP_ATTACH, "setup", "attach   setup"),
    (OP_ATTACH, "sshd", "attach   sshd"),
    (OP_ATTACH, "total", "attach   total"),
)

SSHD_PORT = 2224  # both implementations' default in-container sshd port
MARKER = "/var/tmp/cvs-bench-provisioned"
# Trivial on purpose: the benchmark measures the lifecycle machinery, not a package install,
# and CVS inlines the script base64-encoded into one command line.
SETUP_SCRIPT = f"#!/bin/bash\nset -euo pipefail\necho provisioned > {MARKER}\n"
# CVS's sshd setup copies the user's keys from /host_ssh, which it mounts from
# /home/<user>/.ssh; the nodes' user is root, whose keys are in /root/.ssh.
CVS_HOST_SSH = "/root/.ssh:/host_ssh"
# CVS always adds --network host --ipc host --privileged (its defaults); the native config asks
# for the same, so both launch the same container. The simulated nodes have no GPUs and cannot
# grant memlock, hence no device/ulimit defaults on either side.
RUN_ARGS: dict[str, Any] = {"network": "host", "ipc": "host", "privileged": True}
# CVS's setup_containers() keyword overrides replace its GPU-node defaults (/dev/kfd, /dev/dri,
# memlock=-1, GPUS=8, and /home/<user> volumes, whose /host_ssh would clash with CVS_HOST_SSH)
# that the simulated nodes cannot grant: what runtime.defaults=false does for the native driver.
CVS_LAUNCH_OVERRIDES: dict[str, Any] = {
    "devices": [],
    "capabilities": [],
    "security_opts": [],
    "groups": [],
    "ulimits": [],
    "environment": {},
}


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------
def cluster_doc(spec: dict[str, Any], impl: str, name: str, lifetime: str) -> dict[str, Any]:
    """The cluster file both implementations read (the native one without /host_ssh: its
    sshd setup does not copy the user's keys from a volume)."""
    args = dict(RUN_ARGS)
    if impl == CVS_ALG:
        args["volumes"] = [CVS_HOST_SSH]
    return {
        "node_dict": {h: {} for h in spec["hosts"]},
        "username": spec["user"],
        "priv_key_file": spec["key"],
        "orchestrator": "container",
        "container": {
            "image": spec["image"],
            "name": name,
            "lifetime": lifetime,
            "setup_script": spec["setup_script"],
            "runtime": {"defaults": False, "args": args},
        },
    }


def event_phases(events: list[tuple[float, str, str]], t0: float, t1: float) -> list[list[Any]]:
    """[[phase, ms], ...] of one call from its progress events (time, host, phase): a phase
    runs from its first event on any host to the first event of the next phase, the last one
    to the end of the call. "(start)" is the call's start to the first event."""
    firsts: list[tuple[float, str]] = []
    seen: set[str] = set()
    for t, _host, phase in events:
        if phase not in seen:
            seen.add(phase)
            firsts.append((t, phase))
    if not firsts:
        return [["(start)", (t1 - t0) * 1e3]]
    out: list[list[Any]] = [["(start)", (firsts[0][0] - t0) * 1e3]]
    for i, (t, phase) in enumerate(firsts):
        end = firsts[i + 1][0] if i + 1 < len(firsts) else t1
        out.append([phase, (end - t) * 1e3])
    return out


def cvs_label(cmd: str, earlier: list[str]) -> str:
    """Name of one of CVS's fan-out commands (by what it runs)."""
    if "sudo -n true" in cmd:
        return "sudo-probe"
    if "base64 -d" in cmd:
        return "provision"
    if "pgrep -f" in cmd:
        # The same check runs before the six commands (precheck) and after the sleep.
        return "validate" if "sshd-cmds" in earlier else "precheck"
    if "docker ps" in cmd:
        return "probe"
    if "docker inspect" in cmd:
        return "image-sha"
    if "docker rm" in cmd:
        return "rm"
    if "docker run" in cmd:
        return "run"
    if "docker exec" in cmd:
        return "sshd-cmds"
    return "other-cmd"


class ExecTimer:
    """Times every fan-out CVS's orchestrator makes (its ``Pssh.exec``), to split a call into
    commands. The wrapper adds two perf_counter reads per fan-out."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float, str]] = []

    def wrap(self, handle: Any) -> None:
        inner = handle.exec

        def timed(cmd: str, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(cmd, *args, **kwargs)
            finally:
                self.calls.append((t, time.perf_counter(), cmd))

        handle.exec = timed

    def phases(self, t0: float, t1: float) -> tuple[list[list[Any]], list[list[Any]]]:
        """([[label, ms], ...] summed per label, then "(rest)"; raw commands) in [t0, t1]."""
        mine = [c for c in self.calls if t0 <= c[0] <= t1]
        labels: list[str] = []
        sums: dict[str, float] = {}
        raw: list[list[Any]] = []
        for start, end, cmd in mine:
            label = cvs_label(cmd, labels)
            labels.append(label)
            sums[label] = sums.get(label, 0.0) + (end - start) * 1e3
            raw.append([(start - t0) * 1e3, (end - start) * 1e3, label, cmd[:300]])
        rest = (t1 - t0) * 1e3 - sum(sums.values())
        return [[k, v] for k, v in sums.items()] + [["(rest)", rest]], raw


class NativeDriver:
    def __init__(self, spec: dict[str, Any], doc: dict[str, Any]) -> None:
        import cvs_core

        self.cvs_core = cvs_core
        self.spec = spec
        self.doc = doc
        self.lc: Any = None

    def init(self) -> None:
        cfg = self.cvs_core.load_config(self.doc)
        self.lc = self.cvs_core.ContainerLifecycle(
            cfg, ssh_config=self.spec["ssh_config"], pull="never"
        )

    def call(self, what: str, want_kind: str | None) -> dict[str, Any]:
        events: list[tuple[float, str, str]] = []

        def progress(host: str, phase: str) -> None:
            events.append((time.perf_counter(), host, phase))

        fn = {"setup": self.lc.setup, "sshd": self.lc.setup_sshd, "teardown": self.lc.teardown}
        t0 = time.perf_counter()
        rep = fn[what](progress=progress)
        t1 = time.perf_counter()
        if not rep.ok or (want_kind is not None and rep.kind != want_kind):
            raise BenchFailure(
                f"native {what}: ok={rep.ok} kind={rep.kind!r} (wanted {want_kind!r}): "
                f"{rep.message}"
            )
        return {
            "wall_ms": (t1 - t0) * 1e3,
            "phases": event_phases(events, t0, t1),
            "kind": rep.kind,
            "message": rep.message,
            "report_elapsed_ms": rep.elapsed_s * 1e3,
            "events": [[(t - t0) * 1e3, h, p] for t, h, p in events],
        }

    def setup(self, op: str) -> dict[str, Any]:
        return self.call("setup", "attach" if op == OP_ATTACH else "launch")

    def sshd(self, op: str) -> dict[str, Any]:
        return self.call("sshd", None)

    def teardown(self) -> dict[str, Any]:
        return self.call("teardown", "removed")

    def extra(self) -> dict[str, Any]:
        spec = self.cvs_core.ContainerSpec.from_dict(self.doc["container"])
        # Rendered for the record; the driver may add labels to what it runs.
        return {"docker_run": self.cvs_core.docker_run_command(spec)}

    def close(self) -> None:
        if self.lc is not None:
            self.lc.cluster.close()


class CvsDriver:
    def __init__(self, spec: dict[str, Any], doc: dict[str, Any]) -> None:
        from cvs_core.compat.orchestrators.factory import OrchestratorConfig, OrchestratorFactory

        self.config_cls = OrchestratorConfig
        self.factory = OrchestratorFactory
        self.doc = doc
        self.orch: Any = None
        self.timer = ExecTimer()

    def init(self) -> None:
        cfg = self.config_cls.from_configs(self.doc)
        self.orch = self.factory.create_orchestrator(logging.getLogger("bench"), cfg)
        self.timer.wrap(self.orch.all)
        self.timer.wrap(self.orch.head)

    def call(self, what: str, fn: Callable[[], Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        ok = fn()
        t1 = time.perf_counter()
        if ok is not True:
            raise BenchFailure(f"CVS algorithm {what} returned {ok!r} (its log is above)")
        phases, commands = self.timer.phases(t0, t1)
        return {"wall_ms": (t1 - t0) * 1e3, "phases": phases, "commands": commands}

    def setup(self, op: str) -> dict[str, Any]:
        volumes = self.doc["container"]["runtime"]["args"]["volumes"]
        return self.call(
            "setup_containers",
            lambda: self.orch.setup_containers(volumes=volumes, **CVS_LAUNCH_OVERRIDES),
        )

    def sshd(self, op: str) -> dict[str, Any]:
        return self.call("setup_sshd", self.orch.setup_sshd)

    def teardown(self) -> dict[str, Any]:
        return self.call("teardown_containers", self.orch.teardown_containers)

    def extra(self) -> dict[str, Any]:
        runs = [c[2] for c in self.timer.calls if "docker run" in c[2]]
        return {"docker_run": runs[0] if runs else None}

    def close(self) -> None:
        if self.orch is not None:
            self.orch.close()


def worker(impl: str, op: str, name: str, spec_path: Path) -> dict[str, Any]:
    spec = json.loads(spec_path.read_text())
    # CVS's errors go to its (root) logger: show them on stderr, which the parent prints when
    # the worker fails. INFO stays off for both implementations.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    # Imports happen before the clock: a CVS run pays them once per process.
    t = time.perf_counter()
    driver: NativeDriver | CvsDriver
    doc = cluster_doc(spec, impl, name, "per_run" if op == OP_PER_RUN else "persistent")
    driver = NativeDriver(spec, doc) if impl == NATIVE else CvsDriver(spec, doc)
    import_ms = (time.perf_counter() - t) * 1e3

    rec: dict[str, Any] = {
        "impl": impl,
        "op": op,
        "n": len(spec["hosts"]),
        "name": name,
        "import_ms": import_ms,
        "native": loaded_native(),
    }
    try:
        t0 = time.perf_counter()
        driver.init()  # config resolution + construction (connections open lazily)
        rec["init_ms"] = (time.perf_counter() - t0) * 1e3
        rec["setup"] = driver.setup(op)
        rec["sshd"] = driver.sshd(op)
        rec["total_ms"] = rec["init_ms"] + rec["setup"]["wall_ms"] + rec["sshd"]["wall_ms"]
        if op == OP_PER_RUN:
            # The parent checks the containers now (outside every timed region); the
            # connections stay open, as in a per_run job between setup and teardown.
            print("READY", flush=True)
            if sys.stdin.readline().strip() != "go":
                raise BenchFailure("parent did not confirm the check")
            rec["teardown"] = driver.teardown()
        rec.update(driver.extra())
    finally:
        driver.close()
    return rec


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------
def banner(addr: str, port: int, timeout: float = 2.0) -> bool:
    """An SSH server answers on addr:port."""
    try:
        with socket.create_connection((addr, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def on_all(dc: Any, fn: Callable[[int], Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=len(dc.hosts)) as pool:
        return list(pool.map(fn, range(len(dc.hosts))))


def verify_up(dc: Any, name: str) -> list[str]:
    """Every node runs `name`, provisioned, with sshd answering on SSHD_PORT; its IDs."""

    def one(i: int) -> str:
        node = dc.hosts[i]
        r = dc.docker(i, "inspect", "--format", "{{.Id}} {{.State.Running}}", name, check=False)
        fields = r.stdout.split()
        if r.returncode != 0 or fields[1:] != ["true"]:
            raise BenchFailure(f"{name} not running on {node}: {r.stdout}{r.stderr}".strip())
        m = dc.docker(i, "exec", name, "cat", MARKER, check=False)
        if m.stdout.strip() != "provisioned":
            raise BenchFailure(f"{name} on {node} not provisioned: {m.stdout}{m.stderr}".strip())
        if not banner(node, SSHD_PORT):
            raise BenchFailure(f"no sshd answering on {node}:{SSHD_PORT} for {name}")
        return fields[0]

    return on_all(dc, one)


def containers_named(dc: Any, i: int, name: str) -> list[str]:
    r = dc.docker(i, "ps", "-aq", "--filter", f"name=^{name}$", check=False)
    if r.returncode != 0:
        raise BenchFailure(f"docker ps failed on {dc.hosts[i]}: {r.stderr.strip()}")
    return r.stdout.split()


def verify_gone(dc: Any, name: str) -> None:
    found = on_all(dc, lambda i: containers_named(dc, i, name))
    left = [h for h, ids in zip(dc.hosts, found) if ids]
    if left:
        raise BenchFailure(f"{name} still exists on {left}")


def remove(dc: Any, name: str) -> None:
    on_all(dc, lambda i: dc.docker(i, "rm", "-f", name, check=False))
    verify_gone(dc, name)


def reap_masters(worker_pid: int) -> int:
    """End ssh masters a worker left behind (only its own: their control directory carries
    its PID). A clean worker closes them; a killed one cannot."""
    mark = f"/cvs-core-{worker_pid}-".encode()
    n = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ssh\0") and b"\0-M" in cmdline and mark in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(d.name), signal.SIGTERM)
                n += 1
    return n


def run_worker(
    impl: str,
    op: str,
    name: str,
    spec: dict[str, Any],
    spec_path: Path,
    pkg: Path,
    on_ready: Callable[[], None] | None = None,
) -> dict[str, Any]:
    n = len(spec["hosts"])
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--op", op]
    argv += ["--name", name, "--spec", str(spec_path)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pkg), env.get("PYTHONPATH")]))
    if impl == CVS_ALG:
        # CVS's Pssh reads the host keys' whereabouts from the environment.
        env["CVS_CORE_SSH_CONFIG"] = spec["ssh_config"]
        env["CVS_CORE_KNOWN_HOSTS"] = spec["known_hosts"]
        # CVS's InfiniBand expansion passes its unmatched glob to docker on nodes without IB.
        env["CVS_CORE_INFINIBAND_EXPANSION"] = "guarded"
    err_path = spec_path.parent / f"worker-{uuid.uuid4().hex[:8]}.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env
        )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    # Generous: CVS's sshd setup alone sleeps 2 s; a stuck worker must not hang the run.
    watchdog = threading.Timer(120 + 15 * n, kill)
    watchdog.start()
    lines: list[str] = []
    problem: BaseException | None = None
    try:
        assert proc.stdout is not None and proc.stdin is not None
        for line in proc.stdout:
            if line.strip() == "READY" and on_ready is not None:
                try:
                    on_ready()
                except BaseException as e:  # the worker must still tear its containers down
                    problem = e
                proc.stdin.write("go\n")
                proc.stdin.flush()
            else:
                lines.append(line)
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        leaked = reap_masters(proc.pid)
    stderr = err_path.read_text()
    err_path.unlink()
    if timed_out.is_set():
        sys.stderr.write(stderr)
        raise BenchFailure(f"{impl} {op} N={n}: worker timed out (stderr above)")
    if proc.returncode != 0:
        sys.stderr.write(stderr)
        raise BenchFailure(f"{impl} {op} N={n}: worker exited {proc.returncode} (stderr above)")
    if problem is not None:
        raise BenchFailure(f"{impl} {op} N={n}: check after setup failed: {problem}")
    if leaked:
        raise BenchFailure(f"{impl} {op} N={n}: worker left {leaked} ssh masters running")
    rec = json.loads(lines[-1])
    rec["worker_stderr"] = stderr.strip()[-2000:]
    return rec


def versions(dc: Any) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "kernel": platform.release()}
    try:
        out["cvs-core"] = version("cvs-core")
    except PackageNotFoundError:
        out["cvs-core"] = "missing"
    r = dc.docker(0, "version", "--format", "{{.Server.Version}}", check=False)
    out["dockerd"] = r.stdout.strip()
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    out["openssh"] = ssh.stderr.strip()
    return out


def median_phases(lists: list[list[list[Any]]]) -> list[list[Any]]:
    """Per-phase median over runs, in first-seen order (a phase a run lacks counts 0)."""
    order: list[str] = []
    for phases in lists:
        for name, _ms in phases:
            if name not in order:
                order.append(name)
    out = []
    for name in order:
        vals = [dict(phases).get(name, 0.0) for phases in lists]
        out.append([name, statistics.median(vals)])
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """{impl: {n: {op: medians}}} over repeats, each number independently."""
    out: dict[str, Any] = {}
    for r in runs:
        out.setdefault(r["impl"], {}).setdefault(str(r["n"]), {}).setdefault(r["op"], [])
        out[r["impl"]][str(r["n"])][r["op"]].append(r)
    for by_n in out.values():
        for n, by_op in by_n.items():
            for op, recs in by_op.items():
                med: dict[str, Any] = {"repeats": len(recs)}
                for key in ("import_ms", "init_ms", "total_ms"):
                    med[key] = statistics.median(r[key] for r in recs)
                med["phases"] = {}
                for call in ("setup", "sshd", "teardown"):
                    if call in recs[0]:
                        med[f"{call}_ms"] = statistics.median(r[call]["wall_ms"] for r in recs)
                        med["phases"][call] = median_phases([r[call]["phases"] for r in recs])
                by_n[n][op] = med
    return out


def value(summary: dict[str, Any], impl: str, n: int, op: str, call: str) -> float | None:
    rec = summary.get(impl, {}).get(str(n), {}).get(op)
    if rec is None:
        return None
    return rec.get("total_ms" if call == "total" else f"{call}_ms")


def ratios(summary: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in sizes:
        for op, call, _label in TABLE_ROWS:
            r = ratio(value(summary, NATIVE, n, op, call), value(summary, CVS_ALG, n, op, call))
            out.setdefault(str(n), {}).setdefault(op, {})[call] = r
    return out


def render_table(summary: dict[str, Any], sizes: list[int], repeats: int) -> str:
    lines = [
        f"Container lifecycle wall time, ms (median of {repeats}; every run a fresh process)",
        "native = cvs_core.ContainerLifecycle; CVS alg. = CVS's orchestrator commands "
        "(cvs_core.compat) on cvs-core's SSH",
        f"{'N':>3}  {'step':<18}| {'native':>9} | {'CVS alg.':>9} | {'native/CVS':>10}",
    ]
    lines.append("-" * len(lines[-1]))
    for n in sizes:
        for op, call, label in TABLE_ROWS:
            a = value(summary, NATIVE, n, op, call)
            b = value(summary, CVS_ALG, n, op, call)
            lines.append(
                f"{n:>3}  {label:<18}| {fmt(a, 9)} | {fmt(b, 9)} | {fmt(ratio(a, b), 10, 2)}"
            )
    lines += [
        "total = config + construction + setup + sshd (teardown not included); attach = a",
        "second, separate process on the running persistent containers",
        "",
        "Per phase, ms (median). native: a phase's first progress event on any host to the next",
        "phase's; CVS alg.: its fan-out commands, (rest) = the rest of the call (sshd: mostly",
        "its time.sleep(2))",
    ]
    for n in sizes:
        for impl in IMPLS:
            for op, call, label in TABLE_ROWS:
                rec = summary.get(impl, {}).get(str(n), {}).get(op)
                if call == "total" or rec is None or call not in rec["phases"]:
                    continue
                parts = [
                    f"{name} {ms:.0f}"
                    for name, ms in rec["phases"][call]
                    # the native "(start)" is the few ms before the first event
                    if not (impl == NATIVE and name == "(start)")
                ]
                lines.append(f"{n:>3}  {IMPL_LABEL[impl]:<8} {label:<18} " + " | ".join(parts))
    return "\n".join(lines)


def measure_size(
    n: int,
    si: int,
    repeats: int,
    args: argparse.Namespace,
    workdir: Path,
    snap: dict[str, str],
    runs: list[dict[str, Any]],
    meta: dict[str, Any],
) -> None:
    from harness.docker_cluster import IMAGE_WITH_SSHD, DockerCluster

    dc = DockerCluster(n, workdir=workdir / f"cluster-{n}", subnet="auto")
    created: list[str] = []
    try:
        t = time.perf_counter()
        dc.start(timeout=180.0)
        log(f"{n} Docker nodes up in {time.perf_counter() - t:.1f}s ({dc.subnet}.0/24)")
        meta.setdefault("versions", versions(dc))
        setup_script = workdir / "setup.sh"
        setup_script.write_text(SETUP_SCRIPT)
        spec = {
            "hosts": dc.hosts,
            "user": dc.user,
            "key": str(dc.key),
            "known_hosts": str(dc.known_hosts),
            "ssh_config": str(dc.ssh_config),
            "image": IMAGE_WITH_SSHD,
            "setup_script": str(setup_script),
        }
        spec_path = workdir / f"spec-{n}.json"
        spec_path.write_text(json.dumps(spec))

        def new_name(impl: str, kind: str, rep: int) -> str:
            name = f"bench_lc_{NAME_TAG[impl]}_{kind}_{n}_{rep}_{uuid.uuid4().hex[:6]}"
            created.append(name)
            return name

        def record(r: dict[str, Any], rep: int, load: list[float]) -> None:
            if r["native"]["sha256"] != snap["sha256"]:
                raise BenchFailure(f"{r['impl']} loaded {r['native']}, not the snapshot")
            r["repeat"] = rep
            r["loadavg_before"] = load
            runs.append(r)
            extra = f"  teardown {r['teardown']['wall_ms']:7.0f}" if "teardown" in r else ""
            log(
                f"N={n} rep {rep} {r['impl']:<8} {r['op']:<8} setup {r['setup']['wall_ms']:7.0f}"
                f"  sshd {r['sshd']['wall_ms']:7.0f}  total {r['total_ms']:7.0f} ms{extra}"
            )

        for rep in range(repeats):
            # Alternate who goes first (per N and repeat), and reverse the order for the
            # persistent pair, so neither implementation always runs on the quieter machine.
            order = list(IMPLS) if (si + rep) % 2 == 0 else list(IMPLS[::-1])
            for impl in order:
                name = new_name(impl, "pr", rep)
                time.sleep(args.settle)
                load = loadavg()
                r = run_worker(
                    impl, OP_PER_RUN, name, spec, spec_path, workdir / "pkg",
                    on_ready=lambda name=name: verify_up(dc, name),
                )  # fmt: skip
                verify_gone(dc, name)  # per_run teardown must have removed them
                record(r, rep, load)
            for impl in order[::-1]:
                name = new_name(impl, "ps", rep)
                time.sleep(args.settle)
                load = loadavg()
                cold = run_worker(impl, OP_COLD, name, spec, spec_path, workdir / "pkg")
                ids = verify_up(dc, name)
                record(cold, rep, load)
                time.sleep(args.settle)
                load = loadavg()
                att = run_worker(impl, OP_ATTACH, name, spec, spec_path, workdir / "pkg")
                if verify_up(dc, name) != ids:
                    raise BenchFailure(f"{impl} attach replaced the containers of {name}")
                record(att, rep, load)
                remove(dc, name)
    finally:
        # Everything this run created goes, whatever happened (names are unique per run).
        if dc.hosts and (workdir / f"cluster-{n}" / "state.json").exists():
            for name in created:
                try:
                    remove(dc, name)
                except Exception as e:
                    log(f"WARNING: could not remove {name}: {e}")
        dc.stop()


def orchestrate(args: argparse.Namespace) -> int:
    sizes = [3] if args.quick else sorted({int(s) for s in args.sizes.split(",")})
    repeats = 1 if args.quick else args.repeats
    sys.path.insert(0, str(REPO))
    from harness.docker_cluster import prerequisites_missing

    why = prerequisites_missing()
    if why:
        raise BenchFailure(f"the Docker harness cannot run here: {why}")
    workdir = Path(tempfile.mkdtemp(prefix="cvs-bench-lc-"))
    runs: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
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
        for si, n in enumerate(sizes):
            measure_size(n, si, repeats, args, workdir, snap, runs, meta)
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)

    summary = summarize(runs)
    print(render_table(summary, sizes, repeats))
    if snap["build"] != "release":
        print(f"\nWARNING: cvs_core {snap['build']} build measured: these numbers mean little.")
    if busy_at_start > 0.1:
        print(f"\nWARNING: CPU was {busy_at_start:.0%} busy before the run: machine not idle.")

    doc = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": time.time() - started,
            "cpus": os.cpu_count(),
            "sizes": sizes,
            "repeats": repeats,
            "cvs_core_build": snap,
            "cpu_busy_at_start": busy_at_start,
            "setup_script": SETUP_SCRIPT,
            "run_args": RUN_ARGS,
            "cvs_extra_volume": CVS_HOST_SSH,
            "sshd_port": SSHD_PORT,
            **meta,
        },
        "summary": summary,
        "ratios_native_over_cvs": ratios(summary, sizes),
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nJSON: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="node counts")
    p.add_argument("--repeats", type=int, default=3, help="runs per (implementation, N)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output path")
    p.add_argument("--quick", action="store_true", help="smoke test: 3 nodes, one repeat")
    p.add_argument("--settle", type=float, default=0.5, help="pause before each run (s)")
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--op", choices=OPS, help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.op, args.name, args.spec)))
        return 0
    try:
        return orchestrate(args)
    except BenchFailure as e:
        log(f"BENCHMARK ABORTED: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
