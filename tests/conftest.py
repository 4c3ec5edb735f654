from __future__ import annotations

import copy
import json
import os
import sys
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


#: The shape of an OpenSSH private key: load_config reads the header, never the key itself.
FAKE_PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def write_key(path: Path, mode: int = 0o600, text: str = FAKE_PRIVATE_KEY) -> Path:
    """A private-key file as ssh-keygen leaves it (owner-only unless ``mode`` says else)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def cluster(user: str, tmp_path: Path) -> dict:
    # The key path keeps CVS's {user-id} placeholder: it is checked after substitution.
    write_key(tmp_path / user / ".ssh" / "id_rsa")
    return {
        "_comment": "a comment that mentions <changeme> is dropped before the guard",
        "username": "{user-id}",
        "priv_key_file": f"{tmp_path}/{{user-id}}/.ssh/id_rsa",
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


# -- live SSH: real sshd processes on loopback addresses ------------------------------------
sys.path.insert(0, str(REPO))
from harness.sshd_cluster import SshdCluster, prerequisites_missing  # noqa: E402

LIVE_REQUIRED = os.environ.get("CVS_CORE_REQUIRE_LIVE") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "live: needs real sshd processes (OpenSSH installed)")


def _require_live() -> None:
    why = prerequisites_missing()
    if why:
        if LIVE_REQUIRED:
            pytest.fail(f"CVS_CORE_REQUIRE_LIVE=1 but {why}")
        pytest.skip(why)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    """Six simulated hosts plus the failure cases (wrong host key, refused key, dead address,
    silent port), shared by the session; stopped (by PID) at the end."""
    _require_live()
    cluster = SshdCluster(6, tmp_path_factory.mktemp("sshd")).start(
        wrong_key_host=True, no_auth_host=True
    )
    yield cluster
    cluster.stop()


@pytest.fixture
def ssh_cluster(sshd):
    """A cvs_core.Cluster over the six healthy hosts, closed after the test."""
    import cvs_core

    cl = cvs_core.Cluster(sshd.hosts, ssh_config=sshd.ssh_config, connect_timeout=3)
    yield cl
    cl.close()
