from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def user(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fixed control-host identity, so placeholder and default-name results are predictable."""
    for var in ("USER", "LOGNAME", "USERNAME", "LNAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("USER", "cvsuser")
    monkeypatch.setenv("LOGNAME", "cvsuser")
    return "cvsuser"


@pytest.fixture
def cluster(user: str) -> dict:
    return {
        "_comment": "a comment that mentions <changeme> is dropped before the guard",
        "username": "{user-id}",
        "priv_key_file": "/home/{user-id}/.ssh/id_rsa",
        "node_dict": {"10.0.0.1": {"bmc_ip": "NA"}, "10.0.0.2": {"bmc_ip": "NA"}},
        "orchestrator": "container",
        "container": {"image": "rocm/cvs:latest", "lifetime": "persistent"},
    }


@pytest.fixture
def write_json(tmp_path: Path):
    def write(name: str, doc: object) -> str:
        path = tmp_path / name
        path.write_text(json.dumps(doc))
        return str(path)

    return write


def deep(d: dict) -> dict:
    return copy.deepcopy(d)
