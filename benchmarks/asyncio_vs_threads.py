#!/usr/bin/env python3
"""20 concurrent calls on one cluster: ``asyncio.gather`` of ``exec_async`` against 20 threads
each calling the blocking ``exec``, on 8 real loopback sshd hosts (``harness/sshd_cluster.py``).

One process, one ``cvs_core.Cluster`` (its masters connected by a first call), one event loop
and one pool of 20 threads, both created and warmed before anything is measured. Each round
runs, in a rotating order:

- ``asyncio``: ``loop.run_until_complete(asyncio.gather(*(c.exec_async(CMD) for 20)))``;
- ``threads``: 20 ``pool.submit(c.exec, CMD)``, then every ``.result()``;
- ``sequential``: 20 ``c.exec(CMD)`` one after the other on this thread (context).

Every call runs ``hostname`` on the 8 hosts (160 commands per round) and must succeed on all.
Client CPU of a round is this process (RUSAGE_SELF: every thread, tokio's included), its reaped
children (none once connected) and the ssh masters (daemons, not our children: their exact run
time from /proc/<pid>/schedstat). Figures are medians over the rounds.

Usage: ``python benchmarks/asyncio_vs_threads.py [--hosts 8] [--calls 20] [--rounds 15]
[--out F]``. Needs sshd/ssh/ssh-keygen (root for loopback addresses, else ports on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.sshd_cluster import SshdCluster  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "asyncio.json"
CMD = "hostname"
MODES = ("asyncio", "threads", "sequential")


def _rusage_cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def task_cpu(pid: int) -> float:
    """CPU seconds of process `pid` so far (schedstat's exact ns; 0.0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def measure(run: Callable[[], list[Any]], masters: list[int], n_calls: int, n_hosts: int) -> dict:
    m0 = {p: task_cpu(p) for p in masters}
    s0 = _rusage_cpu(resource.RUSAGE_SELF)
    c0 = _rusage_cpu(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    results = run()
    wall = time.perf_counter() - t0
    self_cpu = _rusage_cpu(resource.RUSAGE_SELF) - s0
    child_cpu = _rusage_cpu(resource.RUSAGE_CHILDREN) - c0
    master_cpu = sum(task_cpu(p) - m0[p] for p in masters)
    # Checked after the clock: every call answered on every host.
    if len(results) != n_calls or not all(r.ok and len(r) == n_hosts for r in results):
        bad = [r.summary() for r in results if not r.ok]
        raise SystemExit(f"not every call succeeded: {bad[:3]}")
    return {
        "wall_ms": wall * 1e3,
        "cpu_ms": (self_cpu + child_cpu + master_cpu) * 1e3,
        "self_cpu_ms": self_cpu * 1e3,
        "masters_cpu_ms": master_cpu * 1e3,
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    import cvs_core

    work = Path(tempfile.mkdtemp(prefix="cvs-core-bench-asyncio-"))
    sshd = SshdCluster(args.hosts, work).start()
    samples: dict[str, list[dict]] = {m: [] for m in MODES}
    try:
        cl = cvs_core.Cluster(
            sshd.hosts,
            user=sshd.user,
            key=str(sshd.key),
            known_hosts=str(sshd.known_hosts),
            ssh_config=str(sshd.ssh_config),
        )
        loop = asyncio.new_event_loop()
        pool = ThreadPoolExecutor(max_workers=args.calls)

        async def gathered() -> list[Any]:
            return list(await asyncio.gather(*(cl.exec_async(CMD) for _ in range(args.calls))))

        def threaded() -> list[Any]:
            futures = [pool.submit(cl.exec, CMD) for _ in range(args.calls)]
            return [f.result() for f in futures]

        runs = {
            "asyncio": lambda: loop.run_until_complete(gathered()),
            "threads": threaded,
            "sequential": lambda: [cl.exec(CMD) for _ in range(args.calls)],
        }
        assert cl.exec(CMD).ok  # connect every master
        for run in runs.values():  # warm the loop, the pool's threads and the code paths
            run()
        masters = list(cl.master_pids())
        if len(masters) != args.hosts:
            raise SystemExit(f"expected {args.hosts} masters, found {len(masters)}")
        for r in range(args.rounds):
            order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
            for mode in order:
                samples[mode].append(measure(runs[mode], masters, args.calls, args.hosts))
        pool.shutdown()
        loop.close()
        cl.close()
    finally:
        sshd.stop()

    def med(mode: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[mode])

    rows = []
    print(
        f"{args.calls} calls of exec({CMD!r}) on {args.hosts} hosts; "
        f"medians of {args.rounds} rounds ({os.cpu_count()} CPUs)"
    )
    print(f"{'mode':<12} {'wall ms':>8} {'cpu ms':>8} {'self':>8} {'masters':>8}")
    for mode in MODES:
        row = {"mode": mode, **{k: med(mode, k) for k in samples[mode][0]}}
        rows.append(row)
        print(
            f"{mode:<12} {row['wall_ms']:>8.1f} {row['cpu_ms']:>8.1f} "
            f"{row['self_cpu_ms']:>8.1f} {row['masters_cpu_ms']:>8.1f}"
        )
    a, t = rows[0], rows[1]
    print(
        f"asyncio/threads: wall {a['wall_ms'] / t['wall_ms']:.2f}, "
        f"client CPU {a['cpu_ms'] / t['cpu_ms']:.2f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "cmd": CMD,
                "hosts": args.hosts,
                "calls": args.calls,
                "rounds": args.rounds,
                "rows": rows,
                "samples": samples,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
