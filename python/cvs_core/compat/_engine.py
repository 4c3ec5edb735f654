"""Whether a host-subset handle CVS would build is cvs-core's engine, end to end.

CVS builds a new ``Pssh`` for every host-subset call (``baremetal.exec``/``setup_env``,
``DockerRuntime.exec``) and never closes it. Built from doubles, that is only calls and costs
nothing, and code that patches these names counts them; built from the engine, it would open
(and leak) one SSH connection per host on every call. So a subset handle is kept per subset
only when nothing in its construction chain was replaced: the class itself, both
``__init__``s, ``_init_sharded``, the wrapper's ``Pssh`` and ``PsshSharder`` names and the
client class. Then nothing outside the SSH connections can observe the difference.
"""

from __future__ import annotations

from typing import Any

from .parallel import multiprocess_pssh as _mp
from .parallel import pssh as _pssh

_WRAPPER = _mp.MultiProcessPssh
_WRAPPER_INIT = _WRAPPER.__init__
_WRAPPER_INIT_SHARDED = _WRAPPER._init_sharded
_INNER = _pssh.Pssh
_INNER_INIT = _INNER.__init__
_SHARDER = _mp.PsshSharder
_CLIENT = _pssh.ParallelSSHClient


def construction_unpatched() -> bool:
    """True when building a ``MultiProcessPssh`` runs only cvs-core's own code."""
    return (
        _mp.MultiProcessPssh is _WRAPPER
        and _WRAPPER.__init__ is _WRAPPER_INIT
        and _WRAPPER._init_sharded is _WRAPPER_INIT_SHARDED
        and _mp.Pssh is _INNER
        and _INNER.__init__ is _INNER_INIT
        and _mp.PsshSharder is _SHARDER
        and _pssh.ParallelSSHClient is _CLIENT
    )


def is_engine_class(cls: Any, engine_cls: Any) -> bool:
    """``cls`` (a module's ``Pssh`` global, read at call time) is ``engine_cls``, unpatched."""
    return cls is engine_cls and construction_unpatched()
