"""CVS's deprecated ``cvs.lib.parallel_ssh_lib`` shim.

``Pssh`` is ``MultiProcessPssh`` (what CVS's orchestrator and most modules use). ``__all__``
carries the names 23 CVS modules pull in with ``import *``: the pssh exception types
``Timeout``, ``ConnectionError`` (the built-in, as in parallel-ssh 2.x) and ``SessionError``
(parallel-ssh's own classes when it is importable, see ``parallel.exceptions``), and
``ParallelSSHClient``: cvs-core's parallel-ssh-shaped client (``parallel.client``), the one
``Pssh`` drives, so code that builds one directly runs on cvs-core's engine.
"""

from __future__ import annotations

import warnings

from .parallel.client import ParallelSSHClient
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


__all__ = [
    "ConnectionError",
    "ParallelConfig",
    "ParallelSSHClient",
    "Pssh",
    "SessionError",
    "Timeout",
    "scp",
]
