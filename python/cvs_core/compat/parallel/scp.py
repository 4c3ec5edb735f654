"""CVS's ``cvs.lib.parallel.scp``: ``scp(src, dst, srcusername, srcpassword, dstusername=None,
dstpassword=None)``.

CVS's version was paramiko plus ``sshpass -p <password>`` on the source host's command line
(visible in the process list, contract §2.6, §9.8). This one runs OpenSSH's ``scp`` locally
with key-based authentication (agent, ssh_config, ``CVS_CORE_SSH_CONFIG``,
``CVS_CORE_KNOWN_HOSTS``, ``CVS_CORE_HOST_KEY_POLICY`` as for ``Pssh``) and refuses passwords
with ``NotImplementedError``. Remote-to-remote copies go through this machine (``scp -3``), so
the source host needs no credentials for the destination. ``host:path`` is parsed so that
``[v6addr]:path`` and local paths containing ``:`` work (CVS's ``split(':')`` broke both);
``user@host:path`` overrides the username argument.
"""

from __future__ import annotations

import logging
import os
import subprocess

from .exceptions import SCPError
from .pssh import DEFAULT_HOST_KEY_POLICY, ENV_HOST_KEY_POLICY, ENV_KNOWN_HOSTS, ENV_SSH_CONFIG

__all__ = ["scp"]

_POLICY = {"strict": "yes", "accept-new": "accept-new", "off": "no"}


def _split_remote(spec: str) -> tuple[str, str] | None:
    """``(host, path)`` for ``host:path`` / ``user@host:path`` / ``[v6]:path``, else None."""
    at = spec.find("@")
    start = at + 1 if 0 <= at < spec.find(":") else 0
    if spec.startswith("[", start):
        end = spec.find("]:", start)
        return (spec[: end + 1], spec[end + 2 :]) if end > 0 else None
    colon = spec.find(":")
    if colon <= 0:
        return None
    slash = spec.find("/")
    if 0 <= slash < colon:
        return None  # a local path that contains ':'
    return spec[:colon], spec[colon + 1 :]


def _operand(spec: str, user: str | None) -> str:
    parts = _split_remote(spec)
    if parts is None:
        return spec
    host, path = parts
    if "@" not in host and user:
        host = f"{user}@{host}"
    return f"{host}:{path}"


def _ssh_options() -> list[str]:
    policy = os.environ.get(ENV_HOST_KEY_POLICY) or DEFAULT_HOST_KEY_POLICY
    if policy not in _POLICY:
        raise ValueError(
            f"{ENV_HOST_KEY_POLICY} must be 'strict', 'accept-new' or 'off', got {policy!r}"
        )
    argv = ["-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={_POLICY[policy]}"]
    if policy == "off":
        argv += ["-o", "UserKnownHostsFile=/dev/null"]
    elif os.environ.get(ENV_KNOWN_HOSTS):
        argv += ["-o", f"UserKnownHostsFile={os.environ[ENV_KNOWN_HOSTS]}"]
    if os.environ.get(ENV_SSH_CONFIG):
        argv = ["-F", os.environ[ENV_SSH_CONFIG], *argv]
    return argv


def scp(src, dst, srcusername, srcpassword, dstusername=None, dstpassword=None) -> None:
    """Copy ``src`` to ``dst``; either or both may be ``host:path``. ``srcusername`` logs in to
    the source host, ``dstusername`` (default: ``srcusername``) to the destination host.
    Raises ``SCPError`` with scp's message when the copy fails."""
    if srcpassword or dstpassword:
        raise NotImplementedError(
            "cvs_core's scp() supports key-based authentication only: CVS's password mode put "
            "the password on a command line (sshpass). Install an SSH key for the hosts (or "
            "use an ssh-agent) and pass srcpassword=None."
        )
    src, dst = os.fspath(src), os.fspath(dst)
    src_remote, dst_remote = _split_remote(src), _split_remote(dst)
    if src_remote is None and dst_remote is None:
        raise ValueError(f"scp() needs a remote 'host:path' operand, got {src!r} and {dst!r}")
    argv = ["scp", "-q", "-r", *_ssh_options()]
    if src_remote is not None and dst_remote is not None:
        argv.append("-3")
    argv += [
        "--",
        _operand(src, srcusername),
        _operand(dst, dstusername or srcusername),
    ]
    logging.getLogger().info(f"scp {src} -> {dst}")
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = proc.stderr.strip() or f"exit code {proc.returncode}"
        raise SCPError(f"scp {src} -> {dst} failed: {detail}")
