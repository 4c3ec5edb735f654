#!/usr/bin/env python3
"""Connect storm at scale: how long each host's ``ssh -M`` takes when N connect at once.

``fanout.py`` times a cold fan-out as a whole; at 1,024 hosts that total hides what each host
goes through. This starts one loopback cluster (``harness/sshd_cluster.py``) and, for each
configuration of ``cvs_core.Cluster`` keyword arguments, in a fresh worker process: builds the
cluster, runs ``hostname`` on all N hosts (cold), then once more (warm), and reports

- cold wall time and the client's reaped-children CPU (the ``ssh -M -f`` launchers);
- the per-host connect time (cvs_core's own ``connected in N ms`` debug log line: launch to
  a master answering on its control socket) as min / p50 / p90 / max;
- the slowest first command on a fresh connection (``duration_s``, connect excluded);
- failures grouped by kind, and ``ssh`` processes of the worker still running 3 s after
  ``close()`` (a launcher or master nobody tracks).

Usage::

    .venv/bin/python benchmarks/connect_storm.py --n 1024 \\
        --configs '[{}, {"max_parallel": 64}, {"connect_timeout": 3}]'

Each configuration is a JSON object of ``cvs_core.Cluster`` keyword arguments (``{}`` = the
defaults; ``max_connect`` where the installed cvs_core has it). Soft RLIMIT_NOFILE/NPROC are
raised to the hard limits in these processes only, unless ``--keep-limits`` (then cvs_core's
default ``max_parallel`` follows the soft RLIMIT_NOFILE you run with, e.g. ``ulimit -Sn 1024``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from fanout import (  # noqa: E402
    FOLD_CMD,
    _rusage_cpu,
    describe_failures,
    log,
    raise_limits,
)


def ssh_processes_of(pid: int) -> list[int]:
    """PIDs of ssh processes whose command line names a control directory of process `pid`."""
    mark = f"/cvs-core-{pid}-".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"ssh\0") and mark in cmd:
            found.append(int(d.name))
    return found


def quantiles(values: list[int]) -> dict[str, int]:
    q = sorted(values)
    return {
        "n": len(q),
        "min": q[0],
        "p50": q[len(q) // 2],
        "p90": q[int(len(q) * 0.9)],
        "max": q[-1],
    }


def worker(spec: dict[str, Any], n: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    import cvs_core

    hosts = spec["hosts"][:n]
    connect_ms: list[int] = []

    class Connected(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            m = re.search(r"connected in (\d+) ms", record.getMessage())
            if m:
                connect_ms.append(int(m.group(1)))

    logger = logging.getLogger("cvs_core")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Connected())
    logger.propagate = False

    out: dict[str, Any] = {"n": n, "kwargs": kwargs}
    out["nofile_soft"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    c0 = _rusage_cpu(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    cl = cvs_core.Cluster(
        hosts, user=spec["user"], key=spec["key"], known_hosts=spec["known_hosts"], **kwargs
    )
    res = cl.exec("hostname")
    out["cold_s"] = time.perf_counter() - t
    out["children_cpu_s"] = _rusage_cpu(resource.RUSAGE_CHILDREN) - c0
    out["summary"] = res.summary()
    out["masters"] = len(cl.master_pids())
    ok = [h.duration_s for h in res if h.ok]
    out["slowest_first_command_s"] = max(ok) if ok else None
    if connect_ms:
        out["connect_ms"] = quantiles(connect_ms)
    if not res.ok:
        out["failures"] = describe_failures(res)
    for what, cmd in (("warm", "hostname"), ("warm_4k", FOLD_CMD)):
        t = time.perf_counter()
        r = cl.exec(cmd)
        out[f"{what}_s"] = time.perf_counter() - t
        if not r.ok:
            out[f"{what}_failures"] = describe_failures(r)
    t = time.perf_counter()
    cl.close()
    out["close_s"] = time.perf_counter() - t
    time.sleep(3)
    out["ssh_left_after_close"] = len(ssh_processes_of(os.getpid()))
    return out


def run_worker(spec_path: Path, n: int, kwargs: dict[str, Any], keep: bool) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--worker", "--spec", str(spec_path), "--n", str(n)]
    argv += ["--configs", json.dumps([kwargs])] + (["--keep-limits"] if keep else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=300 + n)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        # Whatever the worker left (it reports the count): end them, they are ours.
        for pid in ssh_processes_of(proc.pid):
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
    if proc.returncode != 0:
        sys.stderr.write(stderr)
        raise SystemExit(f"worker {kwargs} exited {proc.returncode}")
    return json.loads(stdout.strip().splitlines()[-1])


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'Cluster kwargs':<40} {'cold s':>7} {'conn p50':>9} {'p90':>7} {'max':>7} "
        f"{'1st cmd':>8} {'warm s':>7} {'ok':>11} {'left':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        c = r.get("connect_ms", {})
        ms = [c.get(k) for k in ("p50", "p90", "max")]
        first = r["slowest_first_command_s"]
        lines.append(
            f"{json.dumps(r['kwargs']):<40} {r['cold_s']:>7.1f} "
            + " ".join(f"{(m or 0) / 1e3:>{w}.1f}" for m, w in zip(ms, (9, 7, 7)))
            + f" {first if first is not None else 0:>8.1f} {r['warm_s']:>7.2f} "
            f"{r['summary'].split(': ', 1)[1]:>11} {r['ssh_left_after_close']:>5}"
        )
    fails = [f"{json.dumps(r['kwargs'])}: {r['failures']}" for r in rows if "failures" in r]
    return "\n".join(lines + (["", "Failures:", *fails] if fails else []))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1024, help="hosts (default %(default)s)")
    p.add_argument(
        "--configs",
        default='[{}, {"max_parallel": 64}]',
        help="JSON list of Cluster keyword-argument objects (default %(default)s)",
    )
    p.add_argument("--keep-limits", action="store_true", help="do not raise soft rlimits")
    p.add_argument("--out", type=Path, help="JSON output path")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    configs = json.loads(args.configs)
    if not args.keep_limits:
        raise_limits()
    if args.worker:
        print(json.dumps(worker(json.loads(args.spec.read_text()), args.n, configs[0])))
        return 0

    sys.path.insert(0, str(REPO))
    from harness.sshd_cluster import SshdCluster

    workdir = Path(tempfile.mkdtemp(prefix="cvs-storm-"))
    cluster = SshdCluster(args.n, workdir)
    rows = []
    try:
        t = time.perf_counter()
        cluster.start(timeout=max(120.0, 0.25 * args.n))
        log(f"{args.n} sshd hosts up in {time.perf_counter() - t:.1f}s")
        spec_path = workdir / "spec.json"
        spec = {
            "hosts": cluster.hosts,
            "user": cluster.user,
            "key": str(cluster.key),
            "known_hosts": str(cluster.known_hosts),
        }
        spec_path.write_text(json.dumps(spec))
        for kwargs in configs:
            time.sleep(5)  # let the previous configuration's sessions end
            rows.append(run_worker(spec_path, args.n, kwargs, args.keep_limits))
            log(json.dumps(rows[-1]))
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(render(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
