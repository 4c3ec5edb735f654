"""CVS's ``cvs.lib.parallel`` package on the cvs_core fan-out engine.

``Pssh`` is the single-process class, ``MultiProcessPssh`` (alias ``PsshSharded``) the wrapper
every CVS module gets through ``cvs.lib.parallel_ssh_lib.Pssh``; both run every host count
in-process on one ``cvs_core.Cluster``. See ``pssh``'s docstring for the mapping decisions.
"""

from __future__ import annotations

from .multiprocess_pssh import MultiProcessPssh
from .pssh import Pssh
from .scp import scp

PsshSharded = MultiProcessPssh

__all__ = ["MultiProcessPssh", "Pssh", "PsshSharded", "scp"]
