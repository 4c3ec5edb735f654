"""The asyncio API (``*_async``, ``async with``) against real sshd processes on loopback
addresses (harness/sshd_cluster): concurrency within ``max_parallel``, cancellation that kills
the remote commands, isolation of failures, and Python code run on the loop's thread."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

import cvs_core

pytestmark = [pytest.mark.live, pytest.mark.asyncio]


def remote_procs(pattern: str) -> list[str]:
    """Processes matching `pattern` on the (loopback) hosts, i.e. on this machine."""
    out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def sleeps(marker: str) -> int:
    """How many `marker` processes (a `sleep N` with a unique N) run on the hosts."""
    return sum(1 for line in remote_procs(marker) if line.split(None, 1)[1] == marker)


def alive(pids: list[int], wait: float = 3.0) -> list[int]:
    """The PIDs still running (zombies count as gone) after up to `wait`."""

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + wait
    while True:
        left = [p for p in pids if running(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


async def until(pred, what: str, timeout: float = 10.0) -> None:
    """Poll `pred` (without blocking the loop between polls) until true or `timeout`."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def host_names(sshd) -> dict[str, str]:
    """The harness's name for each address ($CVS_HOST_NAME there)."""
    return {h: f"host{i + 1}" for i, h in enumerate(sshd.hosts)}


# -- concurrency ------------------------------------------------------------------------------


async def test_50_concurrent_calls_all_complete_within_max_parallel(sshd, tmp_path: Path) -> None:
    spot = tmp_path / "running"
    spot.mkdir()
    names = host_names(sshd)
    limit = 4
    async with cvs_core.Cluster(sshd.hosts, ssh_config=sshd.ssh_config, max_parallel=limit) as cl:

        def cmd(i: int) -> str:
            mine = f"{spot}/{i}-$CVS_HOST_NAME"
            # How many commands of any call run at this moment, on any host.
            return f"touch {mine}; n=$(ls {spot} | wc -l); sleep 0.02; rm {mine}; echo {i} $n"

        results = await asyncio.gather(*(cl.exec_async(cmd(i)) for i in range(50)))
    assert len(results) == 50
    seen_at_once = []
    for i, res in enumerate(results):
        assert isinstance(res, cvs_core.Results)
        assert res.ok, res.summary()
        assert res.hosts == sshd.hosts
        for r in res:
            call, running = r.stdout.split()
            assert call == str(i), (i, r.host, r.stdout)
            seen_at_once.append(int(running))
        # Each host ran its own command of this call.
        assert {r.host for r in res} == set(names)
    assert max(seen_at_once) <= limit
    assert max(seen_at_once) >= 2  # they did overlap: the bound, not serialisation, held them


async def test_the_loop_runs_while_a_call_waits(ssh_cluster, sshd) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    t = asyncio.create_task(ticker())
    try:
        res = await ssh_cluster.exec_async("sleep 1; echo done", hosts=sshd.hosts[:2])
    finally:
        t.cancel()
    assert res.ok and [r.stdout for r in res] == ["done\n", "done\n"]
    assert ticks >= 10  # ~50 in 1 s; a blocked loop would give 0


async def test_blocking_and_async_calls_share_one_cluster(ssh_cluster, sshd) -> None:
    blocking = asyncio.get_running_loop().run_in_executor(
        None, lambda: ssh_cluster.exec("sleep 0.3; echo threaded")
    )
    res_async = await ssh_cluster.exec_async("sleep 0.3; echo awaited")
    res_thread = await blocking
    assert {r.stdout for r in res_async} == {"awaited\n"}
    assert {r.stdout for r in res_thread} == {"threaded\n"}
    # One master per host serves both kinds of call.
    assert len(ssh_cluster.master_pids()) == len(sshd.hosts)


# -- cancellation -----------------------------------------------------------------------------


async def test_cancelling_the_task_kills_the_remote_command(ssh_cluster, sshd) -> None:
    marker = "sleep 1000.61"
    hosts = sshd.hosts[:2]
    other = asyncio.create_task(ssh_cluster.exec_async("sleep 0.5; echo other", hosts=hosts))
    task = asyncio.create_task(ssh_cluster.exec_async(f"({marker}) & {marker}; wait", hosts=hosts))
    await until(lambda: sleeps(marker) == 4, "the commands to run")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: remote_procs(marker) == [], "the remote commands to be killed")
    res = await other
    assert res.ok and [r.stdout for r in res] == ["other\n", "other\n"]
    assert (await ssh_cluster.exec_async("echo after", hosts=hosts)).ok  # still usable


async def test_wait_for_timeout_kills_the_remote_command(ssh_cluster, sshd) -> None:
    marker = "sleep 1000.62"
    seen = False

    async def watch() -> None:
        nonlocal seen
        await until(lambda: sleeps(marker) == 3, "the commands to run")
        seen = True

    watcher = asyncio.create_task(watch())
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ssh_cluster.exec_async(marker, hosts=sshd.hosts[:3]), 1.5)
    assert time.monotonic() - started < 5  # the await did not wait for the kills
    await watcher
    assert seen
    await until(lambda: remote_procs(marker) == [], "the remote commands to be killed")


async def test_cancelled_call_is_killed_before_close_ends_the_masters(sshd) -> None:
    marker = "sleep 1000.63"
    cl = cvs_core.Cluster(sshd.hosts[:2], ssh_config=sshd.ssh_config)
    try:
        async with cl:
            task = asyncio.create_task(cl.exec_async(marker))
            await until(lambda: sleeps(marker) == 2, "the commands to run")
            task.cancel()
        # __aexit__ let the kills use the connections before it closed them.
        assert sleeps(marker) == 0
    finally:
        cl.close()
    # The blocking close() right after the cancel, before the loop could tell the call: it
    # finds the cancelled awaitable itself.
    cl = cvs_core.Cluster(sshd.hosts[:2], ssh_config=sshd.ssh_config)
    try:
        task = asyncio.create_task(cl.exec_async(marker))
        await until(lambda: sleeps(marker) == 2, "the commands to run")
        task.cancel()
        cl.close()
        assert sleeps(marker) == 0
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        cl.close()
        await until(lambda: sleeps(marker) == 0, "no command left behind")


# -- failures stay in their task ---------------------------------------------------------------


async def test_an_exception_in_one_task_does_not_disturb_another(ssh_cluster, sshd) -> None:
    bad_host = ssh_cluster.exec_async("true", hosts=["10.255.255.1"])  # raises when awaited

    async def crash() -> None:
        await asyncio.sleep(0.1)
        raise RuntimeError("a task of the caller fails")

    good = ssh_cluster.exec_async("sleep 0.5; echo fine")
    out = await asyncio.gather(
        good,
        bad_host,
        ssh_cluster.exec_async("true", timeout=-1),
        ssh_cluster.download_async("/etc/hostname", "/tmp", hosts=[sshd.hosts[0]] * 2),
        crash(),
        return_exceptions=True,
    )
    res, not_in_cluster, bad_timeout, twice, crashed = out
    assert isinstance(res, cvs_core.Results) and res.ok
    assert {r.stdout for r in res} == {"fine\n"}
    assert isinstance(not_in_cluster, cvs_core.CvsError)
    assert "not in this cluster" in str(not_in_cluster)
    assert isinstance(bad_timeout, cvs_core.CvsError) and "positive" in str(bad_timeout)
    assert isinstance(twice, cvs_core.CvsError) and "requested twice" in str(twice)
    assert isinstance(crashed, RuntimeError)


async def test_a_progress_callback_error_cancels_only_its_call(sshd) -> None:
    marker = "sleep 1000.64"

    def boom(host: str, phase: str) -> None:
        if phase == "running":
            raise RuntimeError("stop now")

    async with cvs_core.Cluster(sshd.hosts[:2], ssh_config=sshd.ssh_config) as cl:
        other = cl.exec_async("sleep 0.5; echo other")
        with pytest.raises(RuntimeError, match="stop now"):
            await cl.exec_async(marker, progress=boom)
        await until(lambda: remote_procs(marker) == [], "the remote commands to be killed")
        res = await other
        assert res.ok and {r.stdout for r in res} == {"other\n"}


# -- Python code runs on the loop's thread -------------------------------------------------------


async def test_progress_and_logging_run_on_the_loop_thread(sshd, caplog) -> None:
    loop_thread = threading.get_ident()
    seen: list[tuple[str, str, int]] = []
    caplog.set_level(logging.DEBUG, logger="cvs_core")
    async with cvs_core.Cluster(sshd.hosts[:3], ssh_config=sshd.ssh_config) as cl:
        res = await cl.exec_async(
            "echo hi", progress=lambda h, p: seen.append((h, p, threading.get_ident()))
        )
        assert res.ok
        # Every event was delivered before the await returned.
        for h in sshd.hosts[:3]:
            assert [p for host, p, _ in seen if host == h] == [
                "connecting",
                "connected",
                "running",
                "done",
            ]
        assert {t for _, _, t in seen} == {loop_thread}
    records = [r for r in caplog.records if r.name == "cvs_core"]
    assert any("connected in" in r.getMessage() for r in records)
    assert any(r.levelno == logging.INFO and "3 ok" in r.getMessage() for r in records)
    assert {r.thread for r in records} == {loop_thread}


# -- the rest of the API --------------------------------------------------------------------------


async def test_async_with_closes_the_cluster(sshd) -> None:
    async with cvs_core.Cluster(sshd.hosts[:2], ssh_config=sshd.ssh_config) as cl:
        assert isinstance(cl, cvs_core.Cluster)
        assert (await cl.exec_async("true")).ok
        masters = cl.master_pids()
        assert len(masters) == 2
    assert alive(masters) == []
    res = await cl.exec_async("true")
    assert [r.status for r in res] == ["error", "error"]
    assert all("closed" in r.error for r in res)
    # An exception in the block propagates, and the cluster is closed all the same.
    with pytest.raises(ValueError, match="in the block"):
        async with cvs_core.Cluster(sshd.hosts[:1], ssh_config=sshd.ssh_config) as cl2:
            await cl2.exec_async("true")
            masters = cl2.master_pids()
            raise ValueError("in the block")
    assert alive(masters) == []


async def test_exec_per_host_upload_and_download(ssh_cluster, sshd, tmp_path: Path) -> None:
    res = await ssh_cluster.exec_per_host_async(
        {sshd.hosts[2]: "echo two", sshd.hosts[0]: "exit 4"}
    )
    assert res.hosts == [sshd.hosts[2], sshd.hosts[0]]
    assert res[0].stdout == "two\n" and res[1].exit_code == 4
    src = tmp_path / "payload.bin"
    data = os.urandom(3 * 1024 * 1024 + 1)
    src.write_bytes(data)
    remote = tmp_path / "uploaded.bin"
    up = await ssh_cluster.upload_async(src, str(remote), hosts=sshd.hosts[:2])
    assert up.ok and [r.path for r in up] == [str(remote)] * 2
    assert remote.read_bytes() == data
    per = {h: (src, str(tmp_path / f"per{i}.bin")) for i, h in enumerate(sshd.hosts[:2])}
    assert (await ssh_cluster.upload_per_host_async(per)).ok
    assert (tmp_path / "per1.bin").read_bytes() == data
    got = await ssh_cluster.download_async(str(remote), tmp_path / "down", hosts=sshd.hosts[:2])
    assert list(got) == sshd.hosts[:2]
    for h, p in got.items():
        assert p == str(tmp_path / "down" / h / remote.name)
        assert hashlib.sha256(Path(p).read_bytes()).digest() == hashlib.sha256(data).digest()
    with pytest.raises(cvs_core.TransferError) as info:
        await ssh_cluster.download_async(str(tmp_path / "absent"), tmp_path / "dl")
    assert info.value.paths == {}
    assert [r.status for r in info.value.results] == ["exit_nonzero"] * len(sshd.hosts)
    assert not (tmp_path / "dl" / sshd.hosts[0] / "absent").exists()
    partial = await ssh_cluster.download_async(
        str(tmp_path / "absent"), tmp_path / "dl", check=False
    )
    assert partial == {}
