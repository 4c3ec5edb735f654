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
