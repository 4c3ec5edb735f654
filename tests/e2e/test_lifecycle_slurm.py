"""The container lifecycle e2e suite over the Slurm transport: the same tests as
``test_lifecycle.py`` (per_run, persistent cold start and attach, refusals, teardown, the Python
API), on the same nodes, with ``CVS_CORE_TRANSPORT=slurm`` in the environment of the CLI and of
this process: every docker command, probe and lock travels as an srun step instead of SSH.
"""

from __future__ import annotations

import pytest
from tests.e2e import test_lifecycle as base
from tests.e2e.test_lifecycle import assert_intact, cli, report

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def over_slurm(slurm_cluster, monkeypatch):
    for k, v in slurm_cluster.slurm_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CVS_CORE_TRANSPORT", "slurm")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


persistent = base.persistent

test_per_run_up_exec_down = base.test_per_run_up_exec_down
test_per_run_provisioning_failure_names_the_node = (
    base.test_per_run_provisioning_failure_names_the_node
)
test_persistent_cold_start_without_sshd_then_attach = (
    base.test_persistent_cold_start_without_sshd_then_attach
)
test_no_launch_verifies_and_never_removes = base.test_no_launch_verifies_and_never_removes
test_partial_is_refused_and_nothing_removed = base.test_partial_is_refused_and_nothing_removed
test_drift_is_refused_unless_recreate = base.test_drift_is_refused_unless_recreate
test_image_skew_before_cold_start_is_refused = base.test_image_skew_before_cold_start_is_refused
test_concurrent_up_makes_one_container_per_node = (
    base.test_concurrent_up_makes_one_container_per_node
)
test_status_and_plan_change_nothing = base.test_status_and_plan_change_nothing
test_python_api_drives_the_same_lifecycle = base.test_python_api_drives_the_same_lifecycle
test_down_orphans_removes_crashed_per_run_containers_only = (
    base.test_down_orphans_removes_crashed_per_run_containers_only
)


def test_unreachable_node_is_refused_and_nothing_removed(slurm_cluster, persistent) -> None:
    """The Slurm counterpart of a stopped sshd: a node whose slurmd is gone cannot be probed,
    so a persistent `up` refuses (a failed probe is never read as "absent")."""
    dc = slurm_cluster
    cfg, name = persistent
    dc.stop_slurmd(1)
    try:
        up = cli(dc, cfg, "up", "--pull", "never", "--connect-timeout", "3")
        assert up.returncode == 1, up.stdout + up.stderr
        setup = report(up)[0]
        assert setup["kind"] in ("refuse_probe_failed", "lock_failed"), setup
        assert dc.hosts[1] in setup["message"]
    finally:
        dc.start_slurmd(1)
        dc.wait_slurm_idle(150)
    assert_intact(dc, name)
