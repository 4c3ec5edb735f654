"""The container lifecycle through the asyncio API (``*_async``) on real Docker engines: the
same steps and reports as the blocking calls, progress on the loop's thread, and cancellation
that stops the remote work and removes what the run created."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from tests.e2e.test_faults import gated_script, live_procs_in, started_everywhere
from tests.e2e.test_lifecycle import containers, inspect, make_config

import cvs_core

pytestmark = [pytest.mark.docker, pytest.mark.asyncio]


async def until(pred, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


async def test_setup_exec_status_teardown_async(docker_cluster, tmp_path, config_name) -> None:
    dc = docker_cluster
    cfg = cvs_core.load_config(str(make_config(dc, tmp_path, "per_run")))
    name = (tmp_path / "name").read_text()
    loop_thread = threading.get_ident()
    seen: list[tuple[str, str, int]] = []
    lc = cvs_core.ContainerLifecycle(cfg, ssh_config=dc.ssh_config, pull="never")
    try:
        plan = await lc.plan_async()
        assert isinstance(plan, cvs_core.LifecycleReport) and plan.kind == "launch"
        assert all(containers(dc, i, name) == [] for i in range(len(dc.hosts)))  # plan only
        rep = await lc.setup_async(progress=lambda h, p: seen.append((h, p, threading.get_ident())))
        assert rep.ok and rep.kind == "launch", rep.message
        assert {p for _, p, _ in seen} >= {"lock", "launch", "provision"}
        assert {t for _, _, t in seen} == {loop_thread}
        ids = [inspect(dc, i, name)["Id"] for i in range(len(dc.hosts))]
        status = await lc.status_async()
        assert [h.container_id for h in status.hosts] == ids
        assert all(h.running for h in status.hosts)
        res = await lc.exec_async("cat /proc/1/cmdline | tr '\\0' ' '")
        assert isinstance(res, cvs_core.Results)
        assert res.ok and all(r.stdout.startswith("sleep infinity") for r in res)
        # An awaited in-container command that times out in asyncio is killed in the container.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(lc.exec_async("sleep 123.5"), 3)
        await until(
            lambda: all(live_procs_in(dc, i, name, "sleep 123.5") == [] for i in range(3)),
            "the in-container commands to be killed",
        )
        down = await lc.teardown_async()
        assert down.ok and down.kind == "removed", down.message
        assert all(containers(dc, i, name) == [] for i in range(len(dc.hosts)))
    finally:
        lc.cluster.close()


async def test_cancelled_setup_async_removes_what_the_run_created(
    docker_cluster, tmp_path, config_name, caplog
) -> None:
    dc = docker_cluster
    script, gate = gated_script(dc, tmp_path)  # provisioning waits while the gate exists
    cfg = cvs_core.load_config(str(make_config(dc, tmp_path, "persistent", script=script)))
    name = (tmp_path / "name").read_text()
    caplog.set_level(logging.WARNING, logger="cvs_core")
    lc = cvs_core.ContainerLifecycle(cfg, ssh_config=dc.ssh_config, pull="never")
    try:
        other = asyncio.create_task(lc.cluster.exec_async("sleep 1; echo other"))
        setup = asyncio.create_task(lc.setup_async())
        await until(lambda: started_everywhere(dc, name), "the setup script to start")
        setup.cancel()
        with pytest.raises(asyncio.CancelledError):
            await setup
        # The step stops in the background: its containers go, and it says so on the loop.
        await until(
            lambda: all(containers(dc, i, name) == [] for i in range(len(dc.hosts))),
            "the cancelled run's containers to be removed",
        )
        await until(
            lambda: any("setup: Setup cancelled" in r.getMessage() for r in caplog.records),
            "the cancelled step's report to be logged",
            timeout=30,
        )
        res = await other
        assert res.ok and {r.stdout for r in res} == {"other\n"}
    finally:
        gate.unlink(missing_ok=True)
        lc.cluster.close()
