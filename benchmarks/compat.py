#!/usr/bin/env python3
"""The cost of CVS's seams: compat ``Pssh`` and ``MultiProcessPssh`` against ``cvs_core.Cluster``.

``cvs_core.compat`` drives cvs-core's engine through CVS's own structure: ``Pssh`` calls a
parallel-ssh-shaped client (``run_command`` and output objects), and ``MultiProcessPssh`` above
``CVS_HOSTS_PER_SHARD`` (32) builds payloads, runs one ``Pssh`` per shard through the sharder
and merges. This measures what that structure costs per call over the same kept connections.

For each N (first N hosts of one loopback sshd cluster, ``harness/sshd_cluster.py``), in one
process and one run:

- ``Cluster``: ``cvs_core.Cluster(hosts, ...).exec("hostname")``;
- ``Pssh``: ``cvs_core.compat.parallel.Pssh(None, hosts, ...).exec("hostname")``;
- ``MultiProcessPssh``: ``...MultiProcessPssh(None, hosts, ...).exec("hostname")`` with the
  default configuration (sharded above 32 hosts: 2 shards at 64, 8 at 256).

Each handle is built and called once (connects), then called ``--calls`` more times per round;
rounds rotate the order of the three tools. Reported: the median warm call per tool and the
ratio to ``Cluster``; the target is <= 1.2. Logging stays at the root logger's default
(WARNING), as the figures are about the seam, not about log handlers.

Usage: ``python benchmarks/compat.py [--sizes 8,64,256] [--calls 10] [--rounds 3] [--out F]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.sshd_cluster import SshdCluster  # noqa: E402

DEFAULT_SIZES = (8, 64, 256)
DEFAULT_OUT = REPO / "benchmarks" / "results" / "compat.json"
TARGET = 1.2
CMD = "hostname"


def build_tools(cluster: SshdCluster, hosts: list[str]) -> dict[str, tuple[Any, Callable[[], Any]]]:
    import cvs_core
    from cvs_core.compat.parallel import MultiProcessPssh, Pssh

    native = cvs_core.Cluster(
        hosts,
        user=cluster.user,
        key=str(cluster.key),
        ssh_config=str(cluster.ssh_config),
        known_hosts=str(cluster.known_hosts),
        host_key_policy="accept-new",
    )
    kw = {"user": cluster.user, "pkey": str(cluster.key)}
    pssh = Pssh(None, hosts, **kw)
    mpp = MultiProcessPssh(None, hosts, **kw)

    def check(out: Any) -> None:
        # Every host must answer: a benchmark of failures is worthless.
        if isinstance(out, dict):
            bad = [h for h, v in out.items() if not str(v).strip() or "ABORT" in str(v)]
        else:
            bad = [r.host for r in out if r.status != "ok"]
        if bad or len(out) != len(hosts):
            raise SystemExit(f"failed hosts: {bad[:5]} ({len(out)}/{len(hosts)} answered)")

    return {
        "Cluster": (native, lambda: check(native.exec(CMD))),
        "Pssh": (pssh, lambda: check(pssh.exec(CMD, print_console=False))),
        "MultiProcessPssh": (mpp, lambda: check(mpp.exec(CMD, print_console=False))),
    }


def close(name: str, handle: Any) -> None:
    if name == "Cluster":
        handle.close()
    else:
        handle.destroy_clients()


def measure(cluster: SshdCluster, n: int, calls: int, rounds: int) -> dict[str, Any]:
    hosts = cluster.hosts[:n]
    tools = build_tools(cluster, hosts)
    cold: dict[str, float] = {}
    for name, (_, call) in tools.items():
        t = time.perf_counter()
        call()
        cold[name] = time.perf_counter() - t
    samples: dict[str, list[float]] = {name: [] for name in tools}
    names = list(tools)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            call = tools[name][1]
            for _ in range(calls):
                t = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - t)
    for name, (handle, _) in tools.items():
        close(name, handle)
    warm = {name: statistics.median(v) for name, v in samples.items()}
    return {
        "n": n,
        "cold_s": cold,
        "warm_median_s": warm,
        "ratio": {name: warm[name] / warm["Cluster"] for name in warm},
        "samples_s": samples,
        "sharded": n > int(os.environ.get("CVS_HOSTS_PER_SHARD", 32)),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    ap.add_argument("--calls", type=int, default=10, help="warm calls per tool per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="cvs-core-bench-compat-"))
    cluster = SshdCluster(max(sizes), work).start()
    os.environ["CVS_CORE_SSH_CONFIG"] = str(cluster.ssh_config)
    os.environ["CVS_CORE_KNOWN_HOSTS"] = str(cluster.known_hosts)
    results = []
    try:
        for n in sizes:
            results.append(measure(cluster, n, args.calls, args.rounds))
    finally:
        cluster.stop()
    print(f"{'N':>5} {'Cluster ms':>11} {'Pssh ms':>9} {'ratio':>6} {'MPPssh ms':>10} {'ratio':>6}")
    ok = True
    for r in results:
        w, q = r["warm_median_s"], r["ratio"]
        print(
            f"{r['n']:>5} {w['Cluster'] * 1e3:>11.1f} {w['Pssh'] * 1e3:>9.1f} {q['Pssh']:>6.2f} "
            f"{w['MultiProcessPssh'] * 1e3:>10.1f} {q['MultiProcessPssh']:>6.2f}"
            + ("  (sharded)" if r["sharded"] else "")
        )
        ok &= q["Pssh"] <= TARGET and q["MultiProcessPssh"] <= TARGET
    print(f"target: warm per call within {TARGET}x of Cluster: {'PASS' if ok else 'MISS'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"target": TARGET, "results": results}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
