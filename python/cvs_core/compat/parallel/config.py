"""CVS's ``cvs.lib.parallel.config``: ``ParallelConfig``.

Kept for its surface (``MultiProcessPssh(config=...)``, ``CVS_HOSTS_PER_SHARD``): in cvs_core
the values only decide which attribute set a ``MultiProcessPssh`` exposes, never a process
count, because every host count runs in-process on one ``cvs_core.Cluster``.
"""

from __future__ import annotations

import os

__all__ = ["ParallelConfig"]


class ParallelConfig:
    """Sharding parameters: ``hosts_per_shard`` (0 disables sharding) and
    ``max_workers_per_cpu``."""

    def __init__(self, hosts_per_shard: int = 32, max_workers_per_cpu: int = 4) -> None:
        self.hosts_per_shard = hosts_per_shard
        self.max_workers_per_cpu = max_workers_per_cpu

    @property
    def max_workers(self) -> int:
        # CVS's formula, hosts_per_shard as a floor included (contract §2.1).
        return max(self.hosts_per_shard, (os.cpu_count() or 4) * self.max_workers_per_cpu)

    @classmethod
    def from_env(cls) -> ParallelConfig:
        return cls(
            hosts_per_shard=int(os.environ.get("CVS_HOSTS_PER_SHARD", 32)),
            max_workers_per_cpu=int(os.environ.get("CVS_WORKERS_PER_CPU", 4)),
        )

    def __repr__(self) -> str:
        return (
            f"ParallelConfig(hosts_per_shard={self.hosts_per_shard}, "
            f"max_workers_per_cpu={self.max_workers_per_cpu})"
        )
