"""parallel-ssh's exception names (``pssh.exceptions``), without depending on parallel-ssh.

CVS's ``cvs.lib.parallel_ssh_lib`` re-exports ``Timeout``, ``ConnectionError`` and
``SessionError`` into 23 modules through ``import *``, and CVS code catches them; the compat
layer raises and stores these classes where parallel-ssh raised or stored its own.

``ConnectionError`` is the built-in ``ConnectionError`` on purpose: parallel-ssh 2.x defines
``ConnectionError = ConnectionError``, so in the star-importing CVS modules
``except ConnectionError`` also catches socket errors. A subclass would silently narrow every
such ``except`` clause.

Beyond parallel-ssh: ``HostKeyError`` (a ``ConnectionError``) for a host whose key differs from
known_hosts. parallel-ssh never checked host keys; cvs_core does, and treats such a host like an
unreachable one (it is pruned with ``stop_on_errors=False``).

Every exception the compat layer raises for a host carries that host in ``.host``.
"""

from __future__ import annotations

import builtins

__all__ = [
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

ConnectionError = builtins.ConnectionError
ConnectionErrorException = ConnectionError


class HostKeyError(ConnectionError):
    """The host's key is unknown or differs from known_hosts (cvs_core checks host keys)."""


class UnknownHostError(Exception):
    """A host name could not be resolved."""


UnknownHostException = UnknownHostError


class NoIPv6AddressFoundError(Exception):
    """An IPv6-only connection was requested but the host has no IPv6 address."""


class AuthenticationError(Exception):
    """The server refused every offered credential."""


AuthenticationException = AuthenticationError


class SSHError(Exception):
    """A generic SSH protocol error."""


SSHException = SSHError


class HostArgumentError(ValueError):
    """Per-host arguments do not match the hosts (also a ``ValueError``, so callers that catch
    the sharded path's ``ValueError`` catch this too)."""


HostArgumentException = HostArgumentError


class SessionError(Exception):
    """The SSH session failed: connection lost mid-command, or the command could not start."""


class SFTPError(Exception):
    """A file transfer could not start."""


class SFTPIOError(SFTPError):
    """A file transfer failed while reading or writing."""


class ProxyError(Exception):
    """The proxy (jump host) failed."""


class Timeout(Exception):
    """The command's time limit (total or inactivity) was reached on a host."""


class SCPError(Exception):
    """An scp copy failed."""


class PKeyFileError(Exception):
    """The private key file does not exist."""


class ShellError(Exception):
    """An interactive shell failed."""


class HostConfigError(Exception):
    """Invalid per-host configuration."""


class InvalidAPIUseError(Exception):
    """The API was used in an unsupported way."""
