"""Fixtures for end-to-end tests on the multi-node Docker harness (harness/docker_cluster.py).

Self-contained on purpose: it does not import cvs_core, so the harness can be tested (and
debugged) without building the extension:
    python -m pytest tests/e2e -q -p no:cacheprovider --rootdir tests/e2e --confcutdir tests/e2e

Tests that need the nodes take the session-scoped ``docker_cluster`` fixture (3 nodes) and
carry the ``docker`` marker. Without the prerequisites (root, docker.io, ...) they are skipped
with the reason, unless ``CVS_CORE_REQUIRE_LIVE=1`` (CI), where that is a failure. The same
cluster runs Slurm (slurmctld + one slurmd per node) when Slurm is installed; tests that need
it take ``slurm_cluster`` (the same cluster), skipped or failed alike without Slurm.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness.docker_cluster import (  # noqa: E402
    DockerCluster,
    prerequisites_missing,
    slurm_prerequisites_missing,
)

LIVE_REQUIRED = os.environ.get("CVS_CORE_REQUIRE_LIVE") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "docker: needs the multi-node Docker harness (root, docker.io, namespaces)"
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    why = prerequisites_missing()
    slurm_why = slurm_prerequisites_missing()
    return [
        "docker harness: " + (f"UNAVAILABLE ({why})" if why else "available"),
        "slurm harness: " + (f"UNAVAILABLE ({slurm_why})" if slurm_why else "available"),
    ]


def require_docker_harness() -> None:
    """Skip (or, with CVS_CORE_REQUIRE_LIVE=1, fail) when the harness cannot run here."""
    why = prerequisites_missing()
    if why:
        if LIVE_REQUIRED:
            pytest.fail(f"CVS_CORE_REQUIRE_LIVE=1 but the docker harness cannot run: {why}")
        pytest.skip(f"docker harness unavailable: {why}")


def require_slurm_harness() -> None:
    """The same for the harness's Slurm mode (it also needs slurmctld, slurmd, srun, munged)."""
    why = slurm_prerequisites_missing()
    if why:
        if LIVE_REQUIRED:
            pytest.fail(f"CVS_CORE_REQUIRE_LIVE=1 but the Slurm harness cannot run: {why}")
        pytest.skip(f"Slurm harness unavailable: {why}")


@pytest.fixture
def docker_harness_available() -> None:
    """For tests that start their own DockerCluster."""
    require_docker_harness()


@pytest.fixture(scope="session")
def docker_cluster(tmp_path_factory: pytest.TempPathFactory):
    """Three nodes node1..node3 (each its own dockerd + sshd, and a slurmd when Slurm is
    installed), shared by the session and always stopped at its end. A failure to start is an
    error, never a skip: the prerequisites are there. The subnet is the first free 10.77.X/24
    (another session may hold 10.77.0): use ``docker_cluster.hosts``, never literal addresses.
    Without Slurm the docker tests still run; ``slurm_cluster`` skips (or fails under
    CVS_CORE_REQUIRE_LIVE=1)."""
    require_docker_harness()
    cluster = DockerCluster(
        3,
        workdir=tmp_path_factory.mktemp("docker-cluster"),
        prefix=os.environ.get("CVS_HARNESS_PREFIX", "node"),
        subnet=os.environ.get("CVS_HARNESS_SUBNET", "auto"),
        slurm=slurm_prerequisites_missing() is None,
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm_cluster(docker_cluster: DockerCluster) -> DockerCluster:
    """The session cluster, for tests that use its Slurm (``slurm_env()``, ``slurm()``,
    ``salloc()``...). Such a test leaves it as it found it: every node idle, no job left
    (scancel what it allocates, in a finally)."""
    require_slurm_harness()
    assert docker_cluster.slurm_mode, "the session cluster was started without Slurm"
    return docker_cluster


@pytest.fixture
def config_name(tmp_path: Path, docker_cluster):
    """Removes, at the end of the test, the containers named in ``tmp_path / "name"`` (the
    name the lifecycle tests' configurations use) on every node."""
    yield
    name_file = tmp_path / "name"
    if name_file.exists():
        for i in range(len(docker_cluster.hosts)):
            docker_cluster.docker(i, "rm", "-f", name_file.read_text(), check=False)
