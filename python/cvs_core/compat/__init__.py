"""CVS drop-in modules: the surfaces of CVS's own modules, backed by cvs_core.

CVS adopts cvs-core by aliasing its modules to these, one file at a time, e.g. a
``cvs/core/orchestrators/container.py`` whose whole body is::

    import sys, cvs_core.compat.orchestrators.container as _m; sys.modules[__name__] = _m

(or ``sys.modules["cvs.lib.parallel.pssh"] = cvs_core.compat.parallel.pssh``).
``docs/adopting-in-cvs.md`` lists every module.

Aliasing a *package* ``__init__.py`` as well (``cvs/core/orchestrators/__init__.py`` ->
``cvs_core.compat.orchestrators``) would normally make Python load the package's submodules a
second time from this package's directory, under CVS's names: two copies of every module,
where a test's ``mock.patch("cvs.core.orchestrators.baremetal.Pssh")`` patches one copy while
the code runs in the other. Importing this package installs a small import hook that prevents
that: a submodule imported through an aliased compat package is the compat module itself, and
a name this package does not have (CVS's own ``unittests`` next to the aliased files) is
searched where CVS keeps it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

_PREFIX = __name__ + "."
_SUBMODULES = ("orchestrators", "runtimes", "parallel", "parallel_ssh_lib")


class _AliasLoader(importlib.abc.Loader):
    """Hands out an already importable compat module under a CVS name."""

    def __init__(self, canonical: str) -> None:
        self.canonical = canonical
        self._spec: Any = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.canonical)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # importlib stamped the alias's spec on the shared module; the module stays what it is.
        if self._spec is not None:
            module.__spec__ = self._spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Resolves ``<alias>.<child>`` when ``sys.modules[<alias>]`` is a compat package."""

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        parent_name, _, child = fullname.rpartition(".")
        if not parent_name:
            return None
        parent = sys.modules.get(parent_name)
        real = getattr(parent, "__name__", None)
        if not isinstance(real, str) or real == parent_name or not real.startswith(_PREFIX):
            return None
        canonical = f"{real}.{child}"
        try:
            found = importlib.util.find_spec(canonical)
        except (ImportError, ValueError):
            found = None
        if found is not None:
            return importlib.util.spec_from_loader(fullname, _AliasLoader(canonical))
        # Not a compat module: look where CVS keeps the aliased package (its tests live there).
        grand_name, _, leaf = parent_name.rpartition(".")
        grand = sys.modules.get(grand_name) if grand_name else None
        search = [os.path.join(p, leaf) for p in getattr(grand, "__path__", None) or ()]
        if not search:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, search)


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())


def __getattr__(name: str) -> ModuleType:
    # Submodules on demand, so ``import cvs_core.compat`` stays cheap and cycle-free.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
