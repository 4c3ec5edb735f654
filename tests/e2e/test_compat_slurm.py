"""CVS's own surfaces over the Slurm transport, with no SSH key anywhere: ``Pssh`` and the
``ContainerOrchestrator`` (cvs_core.compat) run unchanged, inside an allocation
(``transport=auto``, as under ``salloc``/``sbatch``) or with ``CVS_CORE_TRANSPORT=slurm``.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from tests.e2e.test_compat_orchestrator import RUN_ARGS

from cvs_core.compat.orchestrators.factory import OrchestratorConfig, OrchestratorFactory
from cvs_core.compat.parallel import Pssh

pytestmark = pytest.mark.docker

NO_KEY = "/nonexistent/cvs-core/id_rsa"


@pytest.fixture
def in_allocation(slurm_cluster, monkeypatch):
    """This process runs as if inside `salloc` on every node: SLURM_JOB_ID set, transport auto."""
    dc = slurm_cluster
    for k, v in dc.slurm_env().items():
        monkeypatch.setenv(k, v)
    job = dc.salloc(dc.n)
    monkeypatch.setenv("SLURM_JOB_ID", job)
    monkeypatch.setenv("CVS_CORE_TRANSPORT", "auto")
    # Any SSH attempt would fail: no key, and no ssh configuration pointing at the nodes.
    monkeypatch.delenv("CVS_CORE_SSH_CONFIG", raising=False)
    yield job
    dc.scancel(job)


def test_pssh_runs_inside_an_allocation_without_keys(slurm_cluster, in_allocation) -> None:
    dc = slurm_cluster
    p = Pssh(None, list(dc.hosts), user=dc.user, pkey=NO_KEY)
    out = p.exec('echo "$(hostname) $SLURM_JOB_ID"')
    assert list(out) == dc.hosts
    assert [v.split() for v in out.values()] == [[n, in_allocation] for n in dc.names]
    detailed = p.exec("exit 3", detailed=True)
    assert [v["exit_code"] for v in detailed.values()] == [3] * dc.n


def test_container_orchestrator_runs_over_slurm_without_keys(
    slurm_cluster, in_allocation, tmp_path, monkeypatch
) -> None:
    dc = slurm_cluster
    monkeypatch.setenv("CVS_CORE_INFINIBAND_EXPANSION", "guarded")
    script = tmp_path / "setup.sh"
    script.write_text("#!/bin/bash\necho provisioned > /var/tmp/p\n")
    name = f"compat_slurm_{uuid.uuid4().hex[:8]}"
    cluster = {
        "node_dict": {h: {} for h in dc.hosts},
        "username": dc.user,
        "priv_key_file": NO_KEY,
        "orchestrator": "container",
        "container": {
            "image": dc.IMAGE_WITH_SSHD,
            "name": name,
            "lifetime": "per_run",
            "setup_script": str(script),
            "runtime": {"name": "docker", "args": {"network": "host", "privileged": False}},
        },
    }
    cfg = OrchestratorConfig.from_configs(cluster)
    orch = OrchestratorFactory.create_orchestrator(logging.getLogger("compat-slurm"), cfg)
    try:
        assert orch.setup_containers(**RUN_ARGS) is True
        for i in range(dc.n):
            assert dc.docker(i, "exec", name, "cat", "/var/tmp/p").stdout == "provisioned\n"
        assert orch.setup_sshd() is True
        plain = orch.exec("hostname")
        assert [v.split() for v in plain.values()] == [[n] for n in dc.names]
        detailed = orch.exec("exit 4", detailed=True)
        assert [v["exit_code"] for v in detailed.values()] == [4] * dc.n
        assert orch.teardown_containers() is True
        for i in range(dc.n):
            assert dc.docker(i, "ps", "-aq", "--filter", f"name=^{name}$").stdout == ""
    finally:
        orch.close()
        for i in range(dc.n):
            dc.docker(i, "rm", "-f", name, check=False)
