"""CVS's ContainerOrchestrator (the drop-in `cvs_core.compat`) against real Docker engines.

This is CVS's own sequence of docker commands, provisioning and sshd steps, running on
cvs-core's transport, driven exactly as CVS's `orch` fixture drives it.
"""

from __future__ import annotations

import logging
import uuid

import pytest

from cvs_core.compat.orchestrators.factory import OrchestratorConfig, OrchestratorFactory

pytestmark = pytest.mark.docker

# The simulated nodes have no GPUs or InfiniBand and cannot grant memlock=-1: pass explicit,
# harmless run arguments (CVS's setup_containers accepts them as overrides).
RUN_ARGS = {
    "volumes": ["/root/.ssh:/host_ssh"],
    "devices": [],
    "capabilities": ["SYS_PTRACE"],
    "security_opts": [],
    "groups": [],
    "ulimits": ["stack=67108864"],
}


@pytest.fixture
def orch(docker_cluster, tmp_path, monkeypatch):
    dc = docker_cluster
    monkeypatch.setenv("CVS_CORE_SSH_CONFIG", str(dc.ssh_config))
    # CVS's InfiniBand expansion passes its unmatched glob to docker on nodes without IB.
    monkeypatch.setenv("CVS_CORE_INFINIBAND_EXPANSION", "guarded")
    script = tmp_path / "setup.sh"
    script.write_text("#!/bin/bash\necho provisioned > /var/tmp/p\n")
    name = f"compat_{uuid.uuid4().hex[:8]}"
    cluster = {
        "node_dict": {h: {} for h in dc.hosts},
        "username": dc.user,
        "priv_key_file": str(dc.key),
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
    o = OrchestratorFactory.create_orchestrator(logging.getLogger("compat-e2e"), cfg)
    yield o
    o.close()  # the orchestrator's SSH handles (CVS never closed them)
    for i in range(len(dc.hosts)):
        dc.docker(i, "rm", "-f", name, check=False)


def test_cvs_orchestrator_lifecycle_on_real_engines(docker_cluster, orch) -> None:
    dc = docker_cluster
    assert orch.setup_containers(**RUN_ARGS) is True
    name = orch.container_id
    for i in range(len(dc.hosts)):
        out = dc.docker(i, "exec", name, "cat", "/var/tmp/p").stdout
        assert out == "provisioned\n"
    assert orch.setup_sshd() is True
    # CVS's result contract: {host: str} and {host: {"output", "exit_code"}}.
    plain = orch.exec("hostname; cd /tmp && pwd")
    assert list(plain) == dc.hosts
    assert [v.split() for v in plain.values()] == [[f"node{i + 1}", "/tmp"] for i in range(3)]
    detailed = orch.exec("exit 4", detailed=True)
    assert [v["exit_code"] for v in detailed.values()] == [4, 4, 4], detailed
    sub = orch.exec("echo sub", hosts=dc.hosts[1:], detailed=True)
    assert list(sub) == dc.hosts[1:] and all(v["exit_code"] == 0 for v in sub.values())
    head = orch.exec_on_head("echo head", detailed=True)
    assert list(head) == dc.hosts[:1] and head[dc.hosts[0]]["output"].strip() == "head"
    big = orch.exec("echo " + "x" * 100_000 + " | wc -c")
    assert all(v.strip() == "100001" for v in big.values())
    assert orch.teardown_containers() is True
    for i in range(len(dc.hosts)):
        assert dc.docker(i, "ps", "-aq", "--filter", f"name=^{name}$").stdout == ""
