"""The asyncio API over the Slurm transport (the docker harness's slurmctld and slurmds): the
same ``AnyTransport`` calls as the blocking API, so concurrent awaits, results and
cancellation behave as over SSH."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from tests.e2e.test_slurm_transport import cluster, procs

pytestmark = [pytest.mark.docker, pytest.mark.asyncio]


@pytest.fixture(autouse=True)
def slurm_client_env(slurm_cluster, monkeypatch):
    """srun, scontrol and scancel in this process talk to the harness's slurmctld."""
    for k, v in slurm_cluster.slurm_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CVS_CORE_TRANSPORT", raising=False)


async def until(pred, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


async def test_concurrent_awaits_and_cancellation_over_slurm(slurm_cluster) -> None:
    dc = slurm_cluster
    mark = f"{time.time_ns() % 10**6}.{os.getpid()}"
    async with cluster(dc) as c:
        assert c.transport == "slurm"
        results = await asyncio.gather(*(c.exec_async(f"echo {k}; hostname") for k in range(4)))
        for k, r in enumerate(results):
            assert r.ok, [h.error for h in r]
            assert [h.stdout for h in r] == [f"{k}\n{name}\n" for name in dc.names]

        def running() -> bool:
            return all(f"sleep {mark}" in procs(dc, i, f"sleep {mark}") for i in range(dc.n))

        seen = asyncio.create_task(until(running, "the step to run on every node", 10))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.exec_async(f"sleep {mark}"), 5)
        await seen  # it did run before the timeout
        await until(
            lambda: all(f"sleep {mark}" not in procs(dc, i, f"sleep {mark}") for i in range(dc.n)),
            "the cancelled step's processes to be killed on every node",
        )
