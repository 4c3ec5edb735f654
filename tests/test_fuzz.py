"""scripts/fuzz_config.py on a fixed seed: arbitrary input never crashes cvs_core, never raises
InternalError, and fails only with the documented exceptions (ConfigError with a path)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_fuzz_config_finds_nothing_on_a_fixed_seed() -> None:
    script = str(REPO / "scripts" / "fuzz_config.py")
    res = subprocess.run(
        [sys.executable, script, "--cases", "2000", "--seed", "20240611"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2000 cases in" in res.stdout and "no violation" in res.stdout
    # The cases reach both sides of the loader: configurations that load and ones that do not.
    load = next(line for line in res.stdout.splitlines() if line.split()[:1] == ["load_config"])
    assert "ok " in load and "ConfigError " in load
