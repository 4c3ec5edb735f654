"""The CLI refuses bad input with exit code 2, naming the path, before contacting any host."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_key
from cvs_core import cli

# TEST-NET-1 (RFC 5737): never a real host. A connection attempt would take the whole
# --connect-timeout, so a quick exit 2 shows nothing was tried.
UNREACHABLE = ["192.0.2.1", "192.0.2.2"]


def run(*args: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "cvs_core", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return res, time.monotonic() - start


@pytest.fixture
def bad_file(cluster: dict, write_json) -> str:
    cluster["node_dict"] = {h: {} for h in UNREACHABLE}
    cluster["container"] = {
        "image": "img",
        "lifetime": "forever",
        "name": "n" * 300,
        "runtime": {"args": {"ulimit": [5]}},
    }
    return write_json("bad.json", cluster)


def test_validate_and_plan_exit_2_with_every_path(bad_file: str) -> None:
    paths = ["container.lifetime", "container.name", "container.runtime.args.ulimit[0]"]
    for args in (
        ["validate", bad_file],
        ["plan", "--cluster-file", bad_file, "--connect-timeout", "30"],
        ["up", "--cluster-file", bad_file, "--connect-timeout", "30"],
    ):
        res, took = run(*args)
        assert res.returncode == 2, res.stderr
        assert took < 10, f"{args[0]} took {took:.1f}s: it tried to connect"
        assert "invalid configuration (3 errors)" in res.stderr
        for path in paths:
            assert f"  - {path}" in res.stderr
    res, _ = run("validate", bad_file, "--json")
    assert res.returncode == 2
    assert [e["path"] for e in json.loads(res.stdout)["errors"]] == paths


def test_duplicate_host_in_a_file_exits_2(cluster: dict, tmp_path: Path) -> None:
    text = json.dumps({**cluster, "node_dict": {"h1": {}, "h2": {}}}).replace(
        '"h2": {}', '"h2": {}, "h1": {"x": 1}'
    )
    path = tmp_path / "dup.json"
    path.write_text(text)
    res, _ = run("validate", str(path), "--json")
    assert res.returncode == 2
    assert [e["path"] for e in json.loads(res.stdout)["errors"]] == ["node_dict.h1"]


def test_missing_key_warns_in_validate_and_refuses_elsewhere(
    cluster: dict, write_json, tmp_path: Path
) -> None:
    cluster["node_dict"] = {h: {} for h in UNREACHABLE}
    cluster["priv_key_file"] = str(tmp_path / "absent_key")
    path = write_json("nokey.json", cluster)
    res, _ = run("validate", path)
    assert res.returncode == 0, res.stderr
    assert "warnings:\n  - priv_key_file: " in res.stdout
    assert "does not exist on this machine" in res.stdout
    for command in ("plan", "up", "down", "status"):
        res, took = run(command, "--cluster-file", path, "--connect-timeout", "30")
        assert res.returncode == 2, (command, res.stderr)
        assert "  - priv_key_file: " in res.stderr and "does not exist" in res.stderr
        assert took < 10, command
    res, took = run("exec", "--cluster-file", path, "--on-host", "--json", "true")
    assert res.returncode == 2
    assert json.loads(res.stdout)["errors"][0]["path"] == "priv_key_file"
    # A key that exists but OpenSSH would refuse is an error for validate too.
    cluster["priv_key_file"] = str(write_key(tmp_path / "open_key", mode=0o644))
    res, _ = run("validate", write_json("open.json", cluster))
    assert res.returncode == 2
    assert "chmod 600" in res.stderr


@pytest.mark.parametrize("value", ["0", "-1", "-0.5", "nan", "NaN", "inf", "-inf", "abc", ""])
@pytest.mark.parametrize("option", ["--timeout", "--connect-timeout"])
def test_timeouts_must_be_finite_and_positive(capsys, option: str, value: str) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["exec", "--cluster-file", "c.json", f"{option}={value}", "true"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err
    assert "seconds" in err


def test_timeouts_accept_positive_numbers() -> None:
    args = cli.build_parser().parse_args(
        ["exec", "--cluster-file", "c.json", "--timeout", "0.5", "--connect-timeout", "3", "x"]
    )
    assert (args.timeout, args.connect_timeout) == (0.5, 3.0)
    assert cli.build_parser().parse_args(["plan", "--cluster-file", "c"]).connect_timeout == 10.0
