"""CVS's ``cvs.lib.parallel.pssh_sharder``: ``PsshSharder`` and ``SUPPORTED_OPERATIONS``.

The API and payload format are CVS's (contract §2.5). What changed: CVS ran each payload in a
fresh spawned interpreter (a new process pool, imports and SSH connects on every call).
``MultiProcessPssh`` no longer shards at all, and ``execute_sharded`` runs ``run_shard``
in-process on threads (the engine releases the GIL while it waits), so the sharder only serves
code that drives it directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from .config import ParallelConfig
from .interfaces import ShardableSshInterface
from .pssh import Pssh

__all__ = ["SUPPORTED_OPERATIONS", "PsshSharder"]

SUPPORTED_OPERATIONS = frozenset(ShardableSshInterface.__abstractmethods__)

_CONSOLE_OPS = ("exec", "exec_cmd_list")
_NO_RESULT_OPS = ("upload_file", "reboot_connections")


class PsshSharder:
    """Split hosts into chunks, build one payload per chunk, run the payloads, merge."""

    def __init__(self, config: ParallelConfig | None = None) -> None:
        self.config = config if config is not None else ParallelConfig.from_env()

    def chunk_hosts(self, host_list: Sequence[str]) -> Iterator[list[str]]:
        size = self.config.hosts_per_shard
        hosts = list(host_list)
        if size <= 0:
            if hosts:
                yield hosts
            return
        for start in range(0, len(hosts), size):
            yield hosts[start : start + size]

    def create_payloads(
        self,
        operation: str,
        host_chunks: Sequence[Sequence[str]],
        shard_init_kwargs: Mapping[str, Any],
        **op_args: Any,
    ) -> list[dict[str, Any]]:
        return [
            {
                "operation": operation,
                "init": {**shard_init_kwargs, "host_list": list(chunk)},
                **op_args,
            }
            for chunk in host_chunks
        ]

    def execute_sharded(self, payloads: Sequence[dict[str, Any]]) -> list[Any]:
        """Run every payload; results in payload order. Worker exceptions propagate."""
        if not payloads:
            return []
        results: list[Any] = [None] * len(payloads)
        workers = min(len(payloads), self.config.max_workers)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cvs-core-shard") as pool:
            futures = {pool.submit(self.run_shard, p): i for i, p in enumerate(payloads)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
        return results

    @staticmethod
    def merge_results(
        shard_returns: Sequence[Mapping[str, Any] | None], original_host_list: Sequence[str]
    ) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for part in shard_returns:
            merged.update(part or {})
        ordered = {h: merged[h] for h in original_host_list if h in merged}
        ordered.update((h, v) for h, v in merged.items() if h not in ordered)
        return ordered

    @staticmethod
    def run_shard(payload: dict[str, Any]) -> dict[str, Any]:
        op = payload.get("operation")
        if not isinstance(op, str):
            raise TypeError(f'payload["operation"] must be str, got {type(op)!r}')
        if op not in SUPPORTED_OPERATIONS:
            raise ValueError(f"Unknown operation: {op}. Supported: {sorted(SUPPORTED_OPERATIONS)}")
        init = payload["init"]
        init["process_output"] = False
        pssh = Pssh(**init)
        try:
            method = getattr(pssh, op, None)
            if method is None:
                raise RuntimeError(f"Method {op} not found in Pssh class")
            kwargs = {k: v for k, v in payload.items() if k not in ("operation", "init")}
            if op in _CONSOLE_OPS:
                kwargs["print_console"] = False
            result = method(**kwargs)
            if op in _NO_RESULT_OPS:
                result = None
            return {
                "result": result,
                "reachable_hosts": list(pssh.reachable_hosts),
                "unreachable_hosts": list(pssh.unreachable_hosts),
            }
        finally:
            try:
                pssh.destroy_clients()
            except Exception:
                pass
