"""CVS's deprecated ``cvs.lib.parallel_ssh_lib`` shim.

``Pssh`` is ``MultiProcessPssh`` (what CVS's orchestrator and most modules use). ``__all__``
carries the names 23 CVS modules pull in with ``import *``: the pssh exception types
``Timeout``, ``ConnectionError`` (the built-in, as in parallel-ssh 2.x) and ``SessionError``
from ``cvs_core.compat.parallel.exceptions`` (parallel-ssh is not a dependency), and a
``ParallelSSHClient`` that only explains itself: cvs_core has no parallel-ssh client.
"""

from __future__ import annotations

import warnings

from .parallel.config import ParallelConfig
from .parallel.exceptions import ConnectionError, SessionError, Timeout
from .parallel.multiprocess_pssh import MultiProcessPssh
from .parallel.scp import scp

warnings.warn(
    "cvs.lib.parallel_ssh_lib is deprecated; import Pssh, MultiProcessPssh and scp from "
    "cvs.lib.parallel instead",
    DeprecationWarning,
    stacklevel=2,
)

Pssh = MultiProcessPssh


class ParallelSSHClient:
    """Placeholder for parallel-ssh's client, which cvs_core does not ship."""

    def __init__(self, *args, **kwargs) -> None:
        raise NotImplementedError(
            "parallel-ssh's ParallelSSHClient is not available under cvs_core: use Pssh "
            "(cvs.lib.parallel.Pssh / MultiProcessPssh) for parallel commands and file "
            "transfers, or cvs_core.Cluster directly."
        )


__all__ = [
    "ConnectionError",
    "ParallelConfig",
    "ParallelSSHClient",
    "Pssh",
    "SessionError",
    "Timeout",
    "scp",
]
