"""CVS adopts the compat layer by turning its module files into one-line aliases
(docs/adopting-in-cvs.md). This builds such a tree and checks that a test written against CVS's
names patches the module the code actually runs in."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ALIAS = "import sys, cvs_core.compat.{mod} as _m; sys.modules[__name__] = _m\n"

CVS_STYLE_TEST = """
from unittest import mock

import fakecvs.core.orchestrators.baremetal as bm
import fakecvs.core.orchestrators.container as ct
import fakecvs.core.runtimes.docker as dk
from fakecvs.core.orchestrators.factory import OrchestratorConfig, OrchestratorFactory
import cvs_core.compat.orchestrators.baremetal as real_bm
import cvs_core.compat.orchestrators.container as real_ct
import cvs_core.compat.runtimes.docker as real_dk


def run():
    assert bm is real_bm and ct is real_ct and dk is real_dk
    assert bm.__spec__.name == "cvs_core.compat.orchestrators.baremetal"
    cfg = OrchestratorConfig(
        orchestrator="container", node_dict={"h1": {}, "h2": {}}, username="u",
        priv_key_file="k", container={"image": "rocm/cvs:latest", "name": "cvs_c"},
    )
    with mock.patch("fakecvs.core.orchestrators.baremetal.Pssh") as pssh, \\
         mock.patch("fakecvs.core.orchestrators.container.RuntimeFactory") as rf:
        orch = OrchestratorFactory.create_orchestrator(mock.MagicMock(), cfg)
    assert pssh.call_count == 2, pssh.call_args_list
    assert orch.runtime is rf.create.return_value
    return "ok"
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake_cvs(tmp_path: Path):
    def build(alias_package_inits: bool) -> Path:
        root = tmp_path / ("aliased" if alias_package_inits else "kept")
        write(root / "fakecvs" / "__init__.py", "")
        write(root / "fakecvs" / "core" / "__init__.py", "")
        for pkg, mods in (
            ("orchestrators", ("base", "baremetal", "container", "factory")),
            ("runtimes", ("base", "docker", "enroot", "factory")),
        ):
            d = root / "fakecvs" / "core" / pkg
            for mod in mods:
                write(d / f"{mod}.py", ALIAS.format(mod=f"{pkg}.{mod}"))
            if alias_package_inits:
                write(d / "__init__.py", ALIAS.format(mod=pkg))
            else:  # CVS keeps its package files, importing from the aliased modules
                write(d / "__init__.py", f"from fakecvs.core.{pkg}.factory import *  # noqa\n")
        write(root / "fakecvs" / "core" / "orchestrators" / "unittests" / "__init__.py", "")
        write(
            root / "fakecvs" / "core" / "orchestrators" / "unittests" / "test_cvs_style.py",
            textwrap.dedent(CVS_STYLE_TEST),
        )
        return root

    return build


@pytest.mark.parametrize("alias_package_inits", [True, False])
def test_cvs_style_tests_patch_the_running_module(fake_cvs, alias_package_inits: bool) -> None:
    root = fake_cvs(alias_package_inits)
    code = (
        "import warnings; warnings.simplefilter('ignore', DeprecationWarning)\n"
        "import importlib\n"
        "t = importlib.import_module('fakecvs.core.orchestrators.unittests.test_cvs_style')\n"
        "print(t.run())\n"
        "import sys, cvs_core.compat.orchestrators as o\n"
        f"assert (sys.modules['fakecvs.core.orchestrators'] is o) == {alias_package_inits}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
