#!/usr/bin/env python3
"""SSH vs Slurm transport: the same ``cvs_core.Cluster.exec("hostname")`` over both engines.

One harness (``harness/docker_cluster.py`` with ``slurm=True``): every simulated node runs sshd
and slurmd, slurmctld runs in the root namespace. For each N (the first N nodes), in one run:

- ``cold``: build the cluster and run the first command (SSH: key exchange and login to every
  node, one OpenSSH master each; Slurm: ``scontrol`` for the node map, then one ``srun`` step,
  a job of its own);
- ``warm``: the median of ``--calls`` further calls on the same cluster (SSH: one channel per
  host on the kept masters; Slurm: one step per call);
- ``warm-alloc``: Slurm only, steps inside an existing allocation (``salloc``), as CVS runs
  inside a batch job.

Client CPU is this process plus its waited children (``srun``, ``scontrol``) plus the SSH
masters (daemons, read from /proc). Rounds alternate the order of the transports.

Usage: ``python benchmarks/transport.py [--sizes 3,8] [--calls 10] [--rounds 3] [--out F]``
(root: it starts the harness).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.docker_cluster import DockerCluster  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "transport.json"
CMD = "hostname"
TICK = os.sysconf("SC_CLK_TCK")


def _rusage(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def _task_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


class Meter:
    """Wall and client CPU of one measured region."""

    def __init__(self, masters: list[int]) -> None:
        self.m0 = {p: _task_cpu(p) for p in masters}
        self.cpu0 = _rusage(resource.RUSAGE_SELF) + _rusage(resource.RUSAGE_CHILDREN)
        self.t0 = time.perf_counter()

    def stop(self, masters: list[int]) -> tuple[float, float]:
        wall = time.perf_counter() - self.t0
        cpu = _rusage(resource.RUSAGE_SELF) + _rusage(resource.RUSAGE_CHILDREN) - self.cpu0
        cpu += sum(_task_cpu(p) - self.m0.get(p, 0.0) for p in masters)
        return wall * 1e3, cpu * 1e3


def make(dc: DockerCluster, n: int, transport: str, job: str | None):
    import cvs_core

    hosts = list(dc.hosts[:n])
    if transport == "ssh":
        return cvs_core.Cluster(
            hosts,
            user=dc.user,
            key=str(dc.key),
            known_hosts=str(dc.known_hosts),
            ssh_config=str(dc.ssh_config),
        )
    slurm = {"job_id": job} if job else {}
    return cvs_core.Cluster(hosts, transport="slurm", slurm=slurm)


def check(res, n: int, what: str) -> None:
    if not res.ok or len(res) != n:
        bad = [f"{h.host}: {h.status} {h.error}" for h in res if not h.ok]
        raise SystemExit(f"{what}: not every host answered: {bad}")


def measure(dc: DockerCluster, n: int, transport: str, calls: int, job: str | None) -> dict:
    t = Meter([])
    c = make(dc, n, transport, job)
    res = c.exec(CMD)
    masters = list(c.master_pids())
    cold = t.stop(masters)
    check(res, n, f"{transport} cold")
    walls, cpus = [], []
    for _ in range(calls):
        t = Meter(masters)
        res = c.exec(CMD)
        w, u = t.stop(masters)
        check(res, n, f"{transport} warm")
        walls.append(w)
        cpus.append(u)
    c.close()
    return {
        "cold_wall_ms": cold[0],
        "cold_cpu_ms": cold[1],
        "warm_wall_ms": statistics.median(walls),
        "warm_cpu_ms": statistics.median(cpus),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="3,8")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    runs: dict[tuple[int, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="cvs-bench-transport-") as tmp:
        dc = DockerCluster(max(sizes), workdir=tmp, subnet="auto", slurm=True, load_images=False)
        dc.start()
        try:
            os.environ.update(dc.slurm_env())
            for n in sizes:
                job = dc.salloc(f"--nodelist={','.join(dc.slurm_nodes[:n])}")
                try:
                    for r in range(args.rounds):
                        order = ["ssh", "slurm", "slurm-alloc"]
                        order = order[r % 3 :] + order[: r % 3]
                        for name in order:
                            transport = "ssh" if name == "ssh" else "slurm"
                            j = job if name == "slurm-alloc" else None
                            m = measure(dc, n, transport, args.calls, j)
                            runs.setdefault((n, name), []).append(m)
                finally:
                    dc.scancel(job)
        finally:
            dc.stop()

    def med(n: int, name: str, key: str) -> float:
        return statistics.median(m[key] for m in runs[(n, name)])

    table = []
    print(
        f"cvs_core.Cluster.exec({CMD!r}); medians of {args.rounds} rounds, {args.calls} warm calls"
    )
    print(
        f"{'N':>3} {'transport':<12}| {'cold ms':>8} {'cpu ms':>7} | {'warm ms':>8} {'cpu ms':>7}"
    )
    for n in sizes:
        for name in ("ssh", "slurm", "slurm-alloc"):
            row = {k: med(n, name, k) for k in runs[(n, name)][0]}
            row.update(n=n, transport=name)
            table.append(row)
            print(
                f"{n:>3} {name:<12}| {row['cold_wall_ms']:>8.1f} {row['cold_cpu_ms']:>7.1f} | "
                f"{row['warm_wall_ms']:>8.1f} {row['warm_cpu_ms']:>7.1f}"
            )
        s, a = med(n, "ssh", "warm_wall_ms"), med(n, "slurm-alloc", "warm_wall_ms")
        sc = med(n, "ssh", "cold_wall_ms")
        print(
            f"    ratios slurm/ssh: cold {med(n, 'slurm', 'cold_wall_ms') / sc:.2f}, "
            f"warm {med(n, 'slurm', 'warm_wall_ms') / s:.2f}, warm in allocation {a / s:.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cmd": CMD, "rows": table}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
