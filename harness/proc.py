"""Process and socket helpers shared by the test harnesses (Linux /proc based)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def descendants(root: int) -> list[int]:
    """PIDs of every process below `root`, nearest first."""
    found: list[int] = []
    frontier = [root]
    while frontier:
        nxt = [c for p in frontier for c in children(p)]
        found.extend(nxt)
        frontier = nxt
    return found


def banner(addr: str, port: int, timeout: float = 1.0) -> bool:
    """Whether an SSH server answers on addr:port (reads its identification string)."""
    try:
        with socket.create_connection((addr, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def keygen(path: Path, comment: str) -> None:
    """An ed25519 key at `path` (kept if it exists), private part mode 0600."""
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            capture_output=True,
        )
    path.chmod(0o600)


def raise_soft_limit(which: int, need: int) -> tuple[int, int]:
    """Raise this process's soft `which` limit (``resource.RLIMIT_*``) to at least `need`, up
    to the hard limit; never lowers it and never touches the hard limit (no privilege needed,
    nothing outside this process and its future children changes). Returns (old, new) soft.

    Raises OSError naming the limit when even the hard limit is below `need`."""
    import resource

    soft, hard = resource.getrlimit(which)
    inf = resource.RLIM_INFINITY
    if soft == inf or soft >= need:
        return soft, soft
    if hard != inf and hard < need:
        names = {resource.RLIMIT_NOFILE: "RLIMIT_NOFILE", resource.RLIMIT_NPROC: "RLIMIT_NPROC"}
        raise OSError(
            f"{names.get(which, which)}: {need} needed, hard limit is {hard} "
            "(raise it for this user, e.g. in /etc/security/limits.conf, or use fewer hosts)"
        )
    new = need if hard == inf else hard
    resource.setrlimit(which, (new, hard))
    return soft, new


def listening(addrs: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """Which of the IPv4 `addrs` have a TCP socket in LISTEN state (from /proc/net/tcp, one
    read for all, without connecting: a banner check makes every sshd fork a session)."""
    found: set[tuple[str, int]] = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hexaddr, hexport = fields[1].split(":")
            # The address is the kernel's 32-bit word printed in host (little-endian) order.
            raw = int(hexaddr, 16).to_bytes(4, "little")
            found.add((socket.inet_ntoa(raw), int(hexport, 16)))
    return found & addrs


def user_tasks(uid: int | None = None) -> int:
    """Tasks (threads) the user `uid` (default: ours) runs now: what RLIMIT_NPROC counts."""
    uid = os.geteuid() if uid is None else uid
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                total += len(os.listdir(f"/proc/{entry.name}/task"))
        except OSError:
            continue  # ended meanwhile
    return total
