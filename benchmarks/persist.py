#!/usr/bin/env python3
"""Persistent connections: what the *second* process of a campaign pays to reach every host.

A CVS campaign is many processes (one pytest session per suite, ``cvs-core status``, ``exec``
...). Each measurement below is one fresh worker process that constructs its client and runs
``hostname`` on all N loopback hosts (default 64), measured from before the client exists to
the last answer:

- ``cold``:           cvs_core ``Cluster`` without ``persist`` (what every process pays today);
- ``pssh cold``:      parallel-ssh ``ParallelSSHClient`` as CVS builds it;
- ``persist first``:  cvs_core with ``persist`` and no master left (starts the masters);
- ``persist second``: cvs_core with ``persist`` after a previous process left its masters: the
  headline (goal <= 0.2x ``cold``).

Client CPU is the worker's own, its reaped children's, and the CPU the masters spent during the
phase (``/proc/<pid>/schedstat``), as in ``fanout.py``. Medians over ``--repeats`` (default 5).
Usage: ``python benchmarks/persist.py [--hosts 64] [--repeats 5] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from fanout import (  # noqa: E402  (the benchmark directory is not a package)
    BenchFailure,
    CvsCoreClient,
    Meter,
    PsshClient,
    check,
    client_spec,
    snapshot_cvs_core,
)

DEFAULT_OUT = REPO / "benchmarks" / "results" / "persist.json"
KINDS = ("cold", "pssh_cold", "persist_first", "persist_second")
LABEL = {
    "cold": "cvs_core cold (no persist)",
    "pssh_cold": "parallel-ssh cold",
    "persist_first": "cvs_core persist, first process",
    "persist_second": "cvs_core persist, second process",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- worker side ----------------------------------------------------------------------------
class PersistClient(CvsCoreClient):
    """fanout's cvs_core client with the same settings plus persistence."""

    def __init__(self, spec: dict[str, Any], hosts: list[str]) -> None:
        import cvs_core

        self.cl = cvs_core.Cluster(
            hosts,
            user=spec["user"],
            key=spec["key"],
            known_hosts=spec["known_hosts"],
            persist="10m",
            control_dir=spec["control_dir"],
        )
        self.hosts = hosts
        self.slowest_command_s = None


def worker(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    hosts = spec["hosts"]
    if kind == "pssh_cold":
        import pssh.clients  # noqa: F401
    else:
        import cvs_core  # noqa: F401
    before: list[int] = []
    if kind == "persist_second":
        before = [int(p) for p in spec.get("masters", [])]
    meter = Meter()
    meter.start(before)
    if kind == "pssh_cold":
        client: Any = PsshClient(spec, hosts)
    elif kind == "cold":
        client = CvsCoreClient(spec, hosts, with_config=False)
    else:
        client = PersistClient(spec, hosts)
    out = client.run()
    meter.stop_clock()
    check(out, hosts, kind)
    masters = client.master_pids()
    result = meter.result(masters)
    result["masters"] = sorted(masters)
    client.close()
    return result


# -- parent side ----------------------------------------------------------------------------
def run_worker(kind: str, spec: dict[str, Any], workdir: Path, pkg: Path) -> dict[str, Any]:
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pkg), env.get("PYTHONPATH")]))
    argv = [sys.executable, __file__, "--worker", kind, "--spec", str(spec_path)]
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    process_ms = (time.perf_counter() - t) * 1e3
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise BenchFailure(f"{kind}: worker exited {proc.returncode}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["process_ms"] = process_ms  # interpreter start, imports and exit included
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, json.loads(args.spec.read_text()))))
        return 0

    from harness.sshd_cluster import SshdCluster

    import cvs_core

    workdir = Path(tempfile.mkdtemp(prefix="cvs-persist-"))
    # Short, 0700 and ours: the control directory of the persistent masters.
    control_dir = tempfile.mkdtemp(prefix="cvsp-", dir="/tmp")
    cluster = SshdCluster(args.hosts, workdir / "hosts")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    try:
        snap = snapshot_cvs_core(workdir / "pkg")
        log(f"cvs_core: {snap['build']} build {snap['sha256'][:16]}")
        if snap["build"] != "release":
            log("WARNING: not a release build: run `maturin develop --release` first")
        cluster.start(timeout=120.0)
        spec = client_spec(cluster, control_dir=control_dir)
        for rep in range(args.repeats):
            # Cold ones in rotating order; then a first process starts persistent masters and a
            # second one re-attaches to them; then they are ended for the next repeat.
            cold = ["cold", "pssh_cold"] if rep % 2 == 0 else ["pssh_cold", "cold"]
            for kind in cold:
                time.sleep(0.5)
                runs[kind].append(run_worker(kind, spec, workdir, workdir / "pkg"))
            time.sleep(0.5)
            first = run_worker("persist_first", spec, workdir, workdir / "pkg")
            runs["persist_first"].append(first)
            time.sleep(0.5)
            second = run_worker(
                "persist_second", {**spec, "masters": first["masters"]}, workdir, workdir / "pkg"
            )
            if second["masters"] != first["masters"]:
                raise BenchFailure("the second process did not re-attach to the first's masters")
            runs["persist_second"].append(second)
            ended = cvs_core.disconnect_all(control_dir=control_dir)
            if len(ended) != args.hosts:
                raise BenchFailure(f"disconnect ended {len(ended)} of {args.hosts} masters")
            log(f"rep {rep}: " + "  ".join(f"{k} {runs[k][-1]['wall_ms']:.0f} ms" for k in KINDS))
    finally:
        cvs_core.disconnect_all(control_dir=control_dir)
        cluster.stop()
        shutil.rmtree(control_dir, ignore_errors=True)

    def med(kind: str, field: str) -> float:
        return statistics.median(r[field] for r in runs[kind])

    cold_wall = med("cold", "wall_ms")
    print(f"\n{args.hosts} loopback hosts, connect + first `hostname`, median of {args.repeats}")
    print(f"{'':36} {'wall ms':>9} {'vs cold':>8} {'client CPU ms':>14} {'process ms':>11}")
    for kind in KINDS:
        print(
            f"{LABEL[kind]:36} {med(kind, 'wall_ms'):9.1f} "
            f"{med(kind, 'wall_ms') / cold_wall:7.2f}x {med(kind, 'cpu_ms'):14.1f} "
            f"{med(kind, 'process_ms'):11.1f}"
        )
    ratio = med("persist_second", "wall_ms") / cold_wall
    vs_pssh = med("persist_second", "wall_ms") / med("pssh_cold", "wall_ms")
    print(
        f"\nsecond process with persist: {ratio:.3f}x cvs_core cold, {vs_pssh:.3f}x parallel-ssh "
        f"cold (goal <= 0.2x cold: {'met' if ratio <= 0.2 else 'NOT met'})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"hosts": args.hosts, "runs": runs, "ratio_vs_cold": ratio}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
