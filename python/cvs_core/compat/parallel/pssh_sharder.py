"""CVS's ``cvs.lib.parallel.pssh_sharder``: ``PsshSharder`` and ``SUPPORTED_OPERATIONS``.

The API, payload format and call structure are CVS's (contract §2.5, seams §5):
``execute_sharded`` builds ``ProcessPoolExecutor(max_workers=..., mp_context=mp.get_context(
'spawn'))``, submits ``PsshSharder.run_shard`` once per payload and collects with
``as_completed``; ``run_shard`` builds ``Pssh(**init)`` per payload and destroys it after. Code
that patches ``ProcessPoolExecutor``, ``as_completed``, ``mp``, ``Pssh`` or
``SUPPORTED_OPERATIONS`` here sees CVS's calls.

What changed: ``ProcessPoolExecutor`` is an in-process executor (threads; the engine releases
the GIL while it waits), and every shard's client leases its connections from one engine the
sharder keeps across calls (``client.EnginePool``). CVS paid a Python interpreter start, imports
and a fresh SSH connect to every host on every call (~1.3 s at 64 hosts); here a sharded call
costs what one fan-out over kept connections costs. The spawn pool itself is the one seam left
out: ``mp.get_context('spawn')`` is still called and its result passed, and never used.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import multiprocessing as mp
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, as_completed
from typing import Any

from .client import EnginePool, shared_engines
from .config import ParallelConfig
from .interfaces import ShardableSshInterface
from .pssh import Pssh

__all__ = ["SUPPORTED_OPERATIONS", "ProcessPoolExecutor", "PsshSharder", "as_completed", "mp"]

SUPPORTED_OPERATIONS = frozenset(ShardableSshInterface.__abstractmethods__)

_CONSOLE_OPS = ("exec", "exec_cmd_list")
_NO_RESULT_OPS = ("upload_file", "reboot_connections")


class ProcessPoolExecutor(concurrent.futures.ThreadPoolExecutor):
    """CVS's executor name and constructor (``max_workers``, ``mp_context``), in-process.

    Each task runs in a copy of the submitting context, so the shard clients find the engine
    pool ``execute_sharded`` made active.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None, **_: Any) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="cvs-core-shard")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        ctx = contextvars.copy_context()
        return super().submit(ctx.run, fn, *args, **kwargs)


class PsshSharder:
    """Split hosts into chunks, build one payload per chunk, run the payloads, merge."""

    def __init__(self, config: ParallelConfig) -> None:
        self.config = config

    def chunk_hosts(self, host_list: Sequence[str]) -> Iterator[Sequence[str]]:
        """Contiguous slices of ``config.hosts_per_shard`` hosts (read when iteration starts;
        0 raises ``ValueError``, as ``range`` does in CVS)."""
        size = self.config.hosts_per_shard
        for start in range(0, len(host_list), size):
            yield host_list[start : start + size]

    def create_payloads(
        self,
        operation: str,
        host_chunks: Sequence[Sequence[str]],
        shard_init_kwargs: Mapping[str, Any],
        **op_args: Any,
    ) -> list[dict[str, Any]]:
        return [
            {"operation": operation, "init": {**shard_init_kwargs, "host_list": chunk}, **op_args}
            for chunk in host_chunks
        ]

    def _engines(self) -> EnginePool:
        # Created on first use: callers build sharders with __init__ replaced.
        pool = self.__dict__.get("_cvs_core_engines")
        if pool is None:
            pool = self.__dict__.setdefault("_cvs_core_engines", EnginePool())
        return pool

    def close(self) -> None:
        """Close the connections kept for later calls (cvs-core; CVS kept none)."""
        pool = self.__dict__.get("_cvs_core_engines")
        if pool is not None:
            pool.close()

    def execute_sharded(self, payloads: Sequence[dict[str, Any]]) -> list[Any]:
        """Run every payload; results in payload order. A shard's exception propagates."""
        if not payloads:
            return []
        universe = [h for p in payloads for h in (p.get("init") or {}).get("host_list") or ()]
        results: list[Any] = [None] * len(payloads)
        pool = self._engines()
        with shared_engines(pool, universe):
            with ProcessPoolExecutor(
                max_workers=min(len(payloads), self.config.max_workers),
                mp_context=mp.get_context("spawn"),
            ) as executor:
                futures = {
                    executor.submit(PsshSharder.run_shard, payload): index
                    for index, payload in enumerate(payloads)
                }
                try:
                    for fut in as_completed(futures):
                        results[futures[fut]] = fut.result()
                except KeyboardInterrupt:
                    # Ctrl-C reaches this thread only: stop the shards' remote commands (the
                    # engine kills and confirms them, bounded), let the executor collect the
                    # shards, then raise, as a direct call on the engine does.
                    pool.interrupt()
                    raise
        return results

    def merge_results(
        self, shard_returns: Sequence[Mapping[str, Any] | None], original_host_list: Sequence[str]
    ) -> dict[str, Any]:
        """The shards' ``result`` dicts merged in order, restricted to ``original_host_list``
        and in its order."""
        merged: dict[str, Any] = {}
        for shard in shard_returns:
            if shard:
                merged.update(shard.get("result") or {})
        return {h: merged[h] for h in original_host_list if h in merged}

    @staticmethod
    def run_shard(payload: dict[str, Any]) -> dict[str, Any]:
        op = payload["operation"]
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
