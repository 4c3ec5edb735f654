"""Fixtures for end-to-end tests on the multi-node Docker harness (harness/docker_cluster.py).

Self-contained on purpose: it does not import cvs_core, so the harness can be tested (and
debugged) without building the extension:
    python -m pytest tests/e2e -q -p no:cacheprovider --rootdir tests/e2e --confcutdir tests/e2e

Tests that need the nodes take the session-scoped ``docker_cluster`` fixture (3 nodes) and
carry the ``docker`` marker. Without the prerequisites (root, docker.io, ...) they are skipped
with the reason, unless ``CVS_CORE_REQUIRE_LIVE=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness.docker_cluster import DockerCluster, prerequisites_missing  # noqa: E402

LIVE_REQUIRED = os.environ.get("CVS_CORE_REQUIRE_LIVE") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "docker: needs the multi-node Docker harness (root, docker.io, namespaces)"
    )


def pytest_report_header(config: pytest.Config) -> str:
    why = prerequisites_missing()
    return "docker harness: " + (f"UNAVAILABLE ({why})" if why else "available")


def require_docker_harness() -> None:
    """Skip (or, with CVS_CORE_REQUIRE_LIVE=1, fail) when the harness cannot run here."""
    why = prerequisites_missing()
    if why:
        if LIVE_REQUIRED:
            pytest.fail(f"CVS_CORE_REQUIRE_LIVE=1 but the docker harness cannot run: {why}")
        pytest.skip(f"docker harness unavailable: {why}")


@pytest.fixture
def docker_harness_available() -> None:
    """For tests that start their own DockerCluster."""
    require_docker_harness()


@pytest.fixture(scope="session")
def docker_cluster(tmp_path_factory: pytest.TempPathFactory):
    """Three nodes node1..node3 (each its own dockerd + sshd), shared by the session and always
    stopped at its end. A failure to start is an error, never a skip: the prerequisites are
    there. The subnet is the first free 10.77.X/24 (another session may hold 10.77.0): use
    ``docker_cluster.hosts``, never literal addresses."""
    require_docker_harness()
    cluster = DockerCluster(
        3,
        workdir=tmp_path_factory.mktemp("docker-cluster"),
        prefix=os.environ.get("CVS_HARNESS_PREFIX", "node"),
        subnet=os.environ.get("CVS_HARNESS_SUBNET", "auto"),
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def config_name(tmp_path: Path, docker_cluster):
    """Removes, at the end of the test, the containers named in ``tmp_path / "name"`` (the
    name the lifecycle tests' configurations use) on every node."""
    yield
    name_file = tmp_path / "name"
    if name_file.exists():
        for i in range(len(docker_cluster.hosts)):
            docker_cluster.docker(i, "rm", "-f", name_file.read_text(), check=False)
