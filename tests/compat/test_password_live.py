"""Password authentication against a real sshd that accepts only passwords (harness: a private
mount namespace with its own /etc/shadow), through OpenSSH's askpass: ``cvs_core.Cluster``,
``Pssh``, ``MultiProcessPssh`` (both modes) and the orchestrator. The password must never show
in a process's command line or environment, in a log line, in ``repr()`` or in an exception."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from harness.sshd_cluster import SshdCluster, password_host_missing, prerequisites_missing

import cvs_core
from cvs_core.compat.orchestrators import factory
from cvs_core.compat.parallel import MultiProcessPssh, Pssh
from cvs_core.compat.parallel import client as client_mod
from cvs_core.compat.parallel.config import ParallelConfig

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def pw_cluster(tmp_path_factory: pytest.TempPathFactory):
    why = prerequisites_missing() or password_host_missing()
    if why:
        if os.environ.get("CVS_CORE_REQUIRE_LIVE") == "1":
            pytest.fail(f"CVS_CORE_REQUIRE_LIVE=1 but {why}")
        pytest.skip(why)
    cluster = SshdCluster(2, tmp_path_factory.mktemp("sshd-pw")).start(password_host=True)
    yield cluster
    cluster.stop()


@pytest.fixture
def env(pw_cluster, monkeypatch):
    monkeypatch.setenv(client_mod.ENV_KNOWN_HOSTS, str(pw_cluster.known_hosts))
    monkeypatch.setenv(client_mod.ENV_SSH_CONFIG, str(pw_cluster.ssh_config))
    monkeypatch.delenv(client_mod.ENV_HOST_KEY_POLICY, raising=False)
    return pw_cluster


def leaks(secret: str) -> list[str]:
    """Every /proc/<pid>/{cmdline,environ} that contains ``secret``."""
    needle = secret.encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        for part in ("cmdline", "environ"):
            try:
                if needle in Path(f"/proc/{pid}/{part}").read_bytes():
                    found.append(f"{pid}/{part}")
            except OSError:
                continue
    return found


def secret_files() -> list[Path]:
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")
    if not (base.is_dir() and len(str(base)) < 40):
        base = Path("/tmp")
    return list(base.glob(f"cvs-core-{os.getpid()}-*/*.pw"))


def test_cluster_with_a_password(env) -> None:
    host = env.extra["password"].destination
    with cvs_core.Cluster(
        [host], user=env.user, password=env.password, ssh_config=env.ssh_config
    ) as cl:
        r = cl.exec("echo $CVS_HOST_NAME")[0]
        assert (r.status, r.stdout) == ("ok", "password\n"), r.error
        assert leaks(env.password) == []  # while the master is connected
        assert leaks("cvs-core-") != []  # the scan does see our masters' command lines
        assert secret_files() == []  # removed once the master authenticated
        assert env.password not in repr(cl)
    with cvs_core.Cluster([host], user=env.user, password="wrong", ssh_config=env.ssh_config) as cl:
        r = cl.exec("true")[0]
        assert r.status == "auth_failed", r.error
    with cvs_core.Cluster([host], user=env.user, ssh_config=env.ssh_config) as cl:
        assert cl.exec("true")[0].status == "auth_failed"  # keys only: the host refuses them


def test_pssh_with_a_password_never_leaks_it(env, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    host = env.extra["password"].destination
    p = Pssh(None, [host], user=env.user, password=env.password)
    try:
        assert p.exec("echo in") == {host: "in\n\n"}
        assert p.exec("id -u", detailed=True)[host]["exit_code"] == 0
        assert leaks(env.password) == [] and secret_files() == []
        assert env.password not in repr(p) and env.password not in repr(p.client)
    finally:
        p.destroy_clients()
    messages = [r.getMessage() for r in caplog.records]
    assert messages and not any(env.password in m for m in messages)
    bad = Pssh(None, [host], user=env.user, password=env.password + "x")
    try:
        with pytest.raises(Exception) as info:
            bad.exec("true")
        assert "Authentication error" in str(info.value)
        assert env.password not in str(info.value) and env.password not in repr(info.value)
    finally:
        bad.destroy_clients()


def test_multiprocess_pssh_with_a_password_in_both_modes(env) -> None:
    host, keyed = env.extra["password"].destination, env.hosts[0]
    # non-sharded, then sharded (two shards of one host: the password host, and a host that
    # takes the harness key, which OpenSSH offers before it asks for the password)
    for shards in (0, 1):
        h = MultiProcessPssh(
            None,
            [host, keyed],
            user=env.user,
            password=env.password,
            config=ParallelConfig(hosts_per_shard=shards),
        )
        try:
            assert (h.pssh is None) == (shards == 1)
            assert h.exec("echo $CVS_HOST_NAME", print_console=False) == {
                host: "password\n\n",
                keyed: "host1\n\n",
            }
            assert leaks(env.password) == []
        finally:
            h.destroy_clients()


def test_orchestrator_password(env) -> None:
    host = env.extra["password"].destination
    cfg = factory.OrchestratorConfig(
        orchestrator="baremetal",
        node_dict={host: {}},
        username=env.user,
        priv_key_file="id_rsa",
        password=env.password,
    )
    orch = factory.OrchestratorFactory.create_orchestrator(logging.getLogger("t"), cfg)
    try:
        assert orch.exec("echo orch") == {host: "orch\n\n"}
        assert orch.exec_on_head("echo head", detailed=True)[host]["exit_code"] == 0
    finally:
        orch.close()
