"""parallel-ssh's exception classes (``pssh.exceptions``), or same-named stand-ins.

CVS's ``pssh.py`` binds ``Timeout``, ``ConnectionError`` and ``SessionError`` from
``pssh.exceptions``, ``cvs.lib.parallel_ssh_lib`` re-exports them into 23 modules through
``import *``, and CVS code and tests catch or raise them (a test double raises
``pssh.exceptions.Timeout`` while its stdout is read). So when parallel-ssh is importable (CVS
requires it) these ARE its classes: a ``pssh.exceptions.Timeout`` raised by a double gets the
``ABORT: Timeout Error`` suffix and is a prune candidate, exactly as in CVS. Only the exception
module is imported: it pulls in neither gevent nor libssh2, and nothing of parallel-ssh runs.

Without parallel-ssh, classes with the same names and hierarchy stand in, so cvs_core needs no
extra dependency. ``ConnectionError`` is the built-in either way: parallel-ssh 2.x defines
``ConnectionError = ConnectionError``, so in the star-importing CVS modules
``except ConnectionError`` also catches socket errors.

Beyond parallel-ssh: ``HostKeyError`` (a ``ConnectionError``) for a host whose key differs from
known_hosts. parallel-ssh never checked host keys; cvs_core does, and treats such a host like
an unreachable one (a prune candidate with ``stop_on_errors=False``).

Every exception cvs-core's client stores or raises for a host carries that host in ``.host``.
"""

from __future__ import annotations

import builtins

__all__ = [
    "FROM_PARALLEL_SSH",
    "AuthenticationError",
    "AuthenticationException",
    "ConnectionError",
    "ConnectionErrorException",
    "HostArgumentError",
    "HostArgumentException",
    "HostConfigError",
    "HostKeyError",
    "InvalidAPIUseError",
    "NoIPv6AddressFoundError",
    "PKeyFileError",
    "ProxyError",
    "SCPError",
    "SFTPError",
    "SFTPIOError",
    "SSHError",
    "SSHException",
    "SessionError",
    "ShellError",
    "Timeout",
    "UnknownHostError",
    "UnknownHostException",
]

try:
    from pssh.exceptions import (  # type: ignore[import-not-found]
        AuthenticationError,
        HostArgumentError,
        HostConfigError,
        InvalidAPIUseError,
        NoIPv6AddressFoundError,
        PKeyFileError,
        ProxyError,
        SCPError,
        SessionError,
        SFTPError,
        SFTPIOError,
        ShellError,
        SSHError,
        Timeout,
        UnknownHostError,
    )

    FROM_PARALLEL_SSH = True
except ImportError:
    FROM_PARALLEL_SSH = False

    class UnknownHostError(Exception):  # type: ignore[no-redef]
        """A host name could not be resolved."""

    class NoIPv6AddressFoundError(Exception):  # type: ignore[no-redef]
        """An IPv6-only connection was requested but the host has no IPv6 address."""

    class AuthenticationError(Exception):  # type: ignore[no-redef]
        """The server refused every offered credential."""

    class SSHError(Exception):  # type: ignore[no-redef]
        """A generic SSH protocol error."""

    class HostArgumentError(Exception):  # type: ignore[no-redef]
        """Per-host arguments (``host_args``, ``copy_args``) do not match the hosts."""

    class SessionError(Exception):  # type: ignore[no-redef]
        """The SSH session failed: connection lost mid-command, or the command could not
        start."""

    class SFTPError(Exception):  # type: ignore[no-redef]
        """A file transfer could not start."""

    class SFTPIOError(SFTPError):  # type: ignore[no-redef]
        """A file transfer failed while reading or writing."""

    class ProxyError(Exception):  # type: ignore[no-redef]
        """The proxy (jump host) failed."""

    class Timeout(Exception):  # type: ignore[no-redef]
        """The command's time limit (total or inactivity) was reached on a host."""

    class SCPError(Exception):  # type: ignore[no-redef]
        """An scp copy failed."""

    class PKeyFileError(Exception):  # type: ignore[no-redef]
        """The private key file does not exist."""

    class ShellError(Exception):  # type: ignore[no-redef]
        """An interactive shell failed."""

    class HostConfigError(Exception):  # type: ignore[no-redef]
        """Invalid per-host configuration."""

    class InvalidAPIUseError(Exception):  # type: ignore[no-redef]
        """The API was used in an unsupported way."""


ConnectionError = builtins.ConnectionError
ConnectionErrorException = ConnectionError
UnknownHostException = UnknownHostError
AuthenticationException = AuthenticationError
SSHException = SSHError
HostArgumentException = HostArgumentError


class HostKeyError(ConnectionError):
    """The host's key is unknown or differs from known_hosts (cvs_core checks host keys)."""
