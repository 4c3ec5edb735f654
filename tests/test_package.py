"""The package surface: exceptions, the panic boundary, the stub file and the CLI."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import cvs_core
from conftest import REPO
from cvs_core import _native, cli


def test_exception_hierarchy() -> None:
    assert issubclass(cvs_core.CvsError, Exception)
    assert issubclass(cvs_core.ConfigError, cvs_core.CvsError)
    assert issubclass(cvs_core.ConfigError, ValueError)
    assert issubclass(cvs_core.UnresolvedPlaceholderError, cvs_core.ConfigError)
    assert issubclass(cvs_core.ScriptTooLargeError, cvs_core.CvsError)
    assert issubclass(cvs_core.ScriptTooLargeError, ValueError)
    assert issubclass(cvs_core.InternalError, cvs_core.CvsError)
    assert cvs_core.ConfigError.__module__ == "cvs_core"


def test_rust_panic_surfaces_as_an_exception() -> None:
    with pytest.raises(cvs_core.InternalError, match="deliberate panic"):
        _native._debug_panic()
    # The interpreter and the module stay usable after the panic.
    assert cvs_core.quote("a b") == "'a b'"


def test_stub_lists_exactly_the_native_surface() -> None:
    tree = ast.parse((REPO / "python" / "cvs_core" / "_native.pyi").read_text())
    stubbed = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            stubbed.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stubbed.add(node.target.id)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            stubbed.add(node.targets[0].id)
    runtime = {n for n in dir(_native) if not n.startswith("__")}
    dunders = {n for n in stubbed if n.startswith("__")}
    assert dunders == {"__version__"} and hasattr(_native, "__version__")
    assert (
        stubbed - {"_Doc", "_Detailed", "_Progress", "_Transport", "_SlurmOptions"} - dunders
        == runtime
    )
    assert set(cvs_core.__all__) - {"DEFAULT_CONTAINER_SETUP_SCRIPT"} <= runtime
    assert (REPO / "python" / "cvs_core" / "py.typed").exists()


def test_cli_validate_human(capsys, user: str) -> None:
    rc = cli.main(["validate", str(REPO / "examples" / "cluster_container.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "orchestrator: container" in out
    assert "hosts (2): 10.77.0.11, 10.77.0.12" in out
    assert f"name=cvs_{user}_persistent" in out
    resolved = json.loads(out.split("resolved configuration:\n", 1)[1])
    assert resolved["username"] == user
    assert resolved["container"]["lifetime"] == "persistent"


def test_cli_validate_json_and_testsuite(capsys, write_json, cluster: dict) -> None:
    path = write_json("c.json", cluster)
    suite = write_json("s.json", {"container": {"image": "x:1", "lifetime": "no_launch"}})
    assert cli.main(["validate", "--cluster-file", path, "--config-file", suite, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    assert doc["summary"]["container"]["lifetime"] == "no_launch"
    assert doc["config"]["container"]["image"] == "x:1"


def test_cli_invalid_config_exit_2_with_paths(capsys, write_json, cluster: dict) -> None:
    cluster["container"]["runtime"] = {"args": {"ulimit": [5], "privileged": "yes"}}
    path = write_json("bad.json", cluster)
    assert cli.main(["validate", path]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration (2 errors)" in err
    assert "container.runtime.args.ulimit[0]: expected a string, got 5" in err
    assert "container.runtime.args.privileged: expected true or false, got 'yes'" in err
    assert cli.main(["validate", path, "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert [e["path"] for e in doc["errors"]] == [
        "container.runtime.args.ulimit[0]",
        "container.runtime.args.privileged",
    ]


def test_cli_changeme_exit_2(capsys, write_json, cluster: dict) -> None:
    cluster["priv_key_file"] = "<changeme>"
    assert cli.main(["validate", write_json("c.json", cluster)]) == 2
    assert "priv_key_file" in capsys.readouterr().err


def test_console_script_runs_as_a_module(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "cvs_core", "validate", str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    assert "cannot read configuration file" in res.stderr


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.text = ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


def test_progress_is_plain_lines_off_a_terminal(capsys) -> None:
    stream = _Stream(tty=False)
    p = cli.Progress(stream=stream)
    p("h1", "probe")
    p("h2", "launch")
    p.done()
    assert stream.text == "  h1: probe\n  h2: launch\n"


def test_progress_redraws_one_line_per_host_on_a_terminal() -> None:
    stream = _Stream(tty=True)
    p = cli.Progress(stream=stream)
    p("h1", "probe")
    p.last_draw = 0.0
    p("h22", "probe")
    p.last_draw = 0.0
    p("h1", "launch")
    p.done()
    # The last frame moves up one line (two-line block) and rewrites both hosts in place.
    last = stream.text.rsplit("\x1b[1A", 1)[1]
    assert last == "\r\x1b[2K  h1   launch\n\x1b[2K  h22  probe\n"
    quiet = _Stream(tty=True)
    cli.Progress(stream=quiet, enabled=False)("h1", "probe")
    assert quiet.text == ""


def test_progress_summarizes_many_hosts_on_one_line() -> None:
    stream = _Stream(tty=True)
    p = cli.Progress(stream=stream)
    for i in range(cli.Progress.MAX_LINES + 6):
        p.last_draw = 0.0
        p(f"h{i}", "probe" if i % 2 else "launch")
    last = stream.text.rsplit("\r", 1)[1]
    n = cli.Progress.MAX_LINES + 6
    # One summary line, then the rows of the earlier per-host block cleared below it.
    assert last.startswith(f"\x1b[2K{n} hosts: [launch 15] [probe 15]\n\x1b[2K")
    assert "h0" not in last


def test_cli_help_documents_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("validate", "plan", "up", "down", "status", "exec", "130 interrupted"):
        assert word in out


def test_one_version_everywhere(capsys) -> None:
    """Cargo.toml is the one source: the extension, the installed metadata and the CLI agree."""
    import importlib.metadata
    import re

    cargo = (REPO / "Cargo.toml").read_text()
    want = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    assert cvs_core.__version__ == _native.__version__ == want
    assert importlib.metadata.version("cvs-core") == want
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"cvs-core {want}"
