"""The cluster file's ``transport`` and ``slurm`` keys: validation, the getters, which engine
``Cluster.from_config`` builds (explicit > CVS_CORE_TRANSPORT > file) and the CLI's
``--transport``. Nothing here needs Slurm: building a Slurm cluster contacts nothing, and the
calls that run use stand-in ``srun``/``scontrol`` scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cvs_core
from cvs_core import cli


@pytest.fixture(autouse=True)
def no_slurm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run the same inside an allocation or with a transport exported."""
    monkeypatch.delenv("CVS_CORE_TRANSPORT", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


@pytest.fixture
def base(cluster: dict) -> dict:
    """A baremetal cluster file with a key file that exists."""
    cluster = {k: v for k, v in cluster.items() if k not in ("container", "orchestrator")}
    return cluster


@pytest.fixture
def keyless(base: dict) -> dict:
    """A Slurm-only cluster file: no priv_key_file."""
    return {k: v for k, v in base.items() if k != "priv_key_file"}


def paths(exc: pytest.ExceptionInfo) -> list[str]:
    return [path for path, _ in exc.value.issues]


# -- the getters ------------------------------------------------------------------------------


def test_defaults_without_transport_or_slurm(base: dict) -> None:
    cfg = cvs_core.load_config(base)
    assert cfg.transport is None
    assert cfg.slurm == {}
    assert cfg.effective_transport == "ssh"


def test_transport_and_slurm_getters(base: dict, user: str) -> None:
    base["transport"] = "slurm"
    base["slurm"] = {
        "partition": "gpu",
        "account": "proj_{user-id}",
        "job_id": 4242,
        "time": "00:30:00",
        "_comment": "comments are dropped",
    }
    cfg = cvs_core.load_config(base)
    assert cfg.transport == "slurm"
    assert cfg.effective_transport == "slurm"
    assert cfg.slurm == {
        "partition": "gpu",
        "account": f"proj_{user}",
        "job_id": "4242",
        "time": "00:30:00",
    }
    # The getter hands out a copy.
    cfg.slurm["partition"] = "other"
    assert cfg.slurm["partition"] == "gpu"
    assert cfg.to_dict()["transport"] == "slurm"


def test_auto_follows_slurm_job_id(base: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    base["transport"] = "auto"
    assert cvs_core.load_config(base).effective_transport == "ssh"
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    cfg = cvs_core.load_config(base)
    assert (cfg.transport, cfg.effective_transport) == ("auto", "slurm")


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["pdsh", "SSH", "", 1, ["ssh"]])
def test_bad_transport_names_the_allowed_values(base: dict, value: object) -> None:
    base["transport"] = value
    with pytest.raises(cvs_core.ConfigError) as exc:
        cvs_core.load_config(base)
    assert paths(exc) == ["transport"]
    assert "must be 'ssh', 'slurm' or 'auto'" in str(exc.value)


def test_bad_environment_transport_is_a_config_error(
    base: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CVS_CORE_TRANSPORT", "k8s")
    with pytest.raises(cvs_core.ConfigError) as exc:
        cvs_core.load_config(base)
    assert paths(exc) == ["transport"]
    assert "CVS_CORE_TRANSPORT" in str(exc.value) and "'k8s'" in str(exc.value)
    # An explicit choice does not look at the environment.
    assert cvs_core.load_config(base, transport="ssh").effective_transport == "ssh"


def test_slurm_problems_are_reported_together_with_paths(base: dict) -> None:
    base["username"] = 5
    base["transport"] = "pbs"
    base["slurm"] = {
        "partition": "gpu queue",
        "account": 12,
        "job_id": -3,
        "time": True,
        "reservation": "r;x",
    }
    with pytest.raises(cvs_core.ConfigError) as exc:
        cvs_core.load_config(base)
    assert paths(exc) == [
        "username",
        "transport",
        "slurm.partition",
        "slurm.account",
        "slurm.job_id",
        "slurm.time",
        "slurm.reservation",
    ]
    messages = dict(exc.value.issues)
    assert "letters, digits and - _ . : + only" in messages["slurm.partition"]
    assert 'write it quoted: "12"' in messages["slurm.account"]
    assert "non-negative integer" in messages["slurm.job_id"]


@pytest.mark.parametrize("value", ["gpu", [], 3])
def test_slurm_must_be_an_object(base: dict, value: object) -> None:
    base["slurm"] = value
    with pytest.raises(cvs_core.ConfigError) as exc:
        cvs_core.load_config(base)
    assert paths(exc) == ["slurm"]
    assert "expected an object" in str(exc.value)


def test_unknown_slurm_key_is_a_warning(base: dict) -> None:
    base["slurm"] = {"partiton": "gpu", "account": "a"}
    cfg = cvs_core.load_config(base)
    assert cfg.warnings == ["slurm.partiton: unknown key, ignored (check the spelling)"]
    assert cfg.slurm == {"account": "a"}


def test_changeme_in_slurm_names_the_path(base: dict) -> None:
    base["slurm"] = {"account": "<changeme>"}
    with pytest.raises(cvs_core.UnresolvedPlaceholderError) as exc:
        cvs_core.load_config(base)
    assert exc.value.path == "slurm.account"


def test_slurm_needs_no_key_file(keyless: dict, tmp_path: Path) -> None:
    keyless["transport"] = "slurm"
    cfg = cvs_core.load_config(keyless)
    assert cfg.priv_key_file == ""
    # Named but missing: not checked with Slurm either.
    keyless["priv_key_file"] = str(tmp_path / "absent")
    assert cvs_core.load_config(keyless).warnings == []


def test_ssh_still_requires_the_key_file_with_cvs_message(
    keyless: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    for transport in (None, "ssh", "auto"):
        doc = dict(keyless)
        if transport:
            doc["transport"] = transport
        with pytest.raises(cvs_core.ConfigError, match=r"^priv_key_file must be provided in "):
            cvs_core.load_config(doc)
    # The environment or an argument choosing ssh over the file's slurm needs the key too.
    keyless["transport"] = "slurm"
    with pytest.raises(cvs_core.ConfigError, match="priv_key_file must be provided"):
        cvs_core.load_config(keyless, transport="ssh")
    monkeypatch.setenv("CVS_CORE_TRANSPORT", "ssh")
    with pytest.raises(cvs_core.ConfigError, match="priv_key_file must be provided"):
        cvs_core.load_config(keyless)


# -- Cluster.from_config ----------------------------------------------------------------------


def built(cfg: cvs_core.ClusterConfig, **kwargs: object) -> str:
    cluster = cvs_core.Cluster.from_config(cfg, **kwargs)
    try:
        return cluster.transport
    finally:
        cluster.close()


@pytest.mark.parametrize(
    ("file", "env", "job", "want"),
    [
        (None, None, None, "ssh"),
        ("slurm", None, None, "slurm"),
        ("ssh", "slurm", None, "slurm"),
        ("slurm", "ssh", None, "ssh"),
        ("auto", None, "7", "slurm"),
        ("auto", None, None, "ssh"),
        ("ssh", "auto", "7", "slurm"),
        (None, "  ", None, "ssh"),
    ],
)
def test_from_config_follows_environment_over_file(
    base: dict,
    monkeypatch: pytest.MonkeyPatch,
    file: str | None,
    env: str | None,
    job: str | None,
    want: str,
) -> None:
    if file:
        base["transport"] = file
    if env:
        monkeypatch.setenv("CVS_CORE_TRANSPORT", env)
    if job:
        monkeypatch.setenv("SLURM_JOB_ID", job)
    cfg = cvs_core.load_config(base)
    assert cfg.effective_transport == want
    assert built(cfg) == want


def test_explicit_transport_wins(base: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    base["transport"] = "slurm"
    monkeypatch.setenv("CVS_CORE_TRANSPORT", "slurm")
    cfg = cvs_core.load_config(base)
    assert built(cfg) == "slurm"
    assert built(cfg, transport="ssh") == "ssh"
    assert built(cfg, transport=None) == "slurm"  # None is "not given"
    base["transport"] = "ssh"
    monkeypatch.setenv("CVS_CORE_TRANSPORT", "ssh")
    cfg = cvs_core.load_config(base)
    assert built(cfg, transport="slurm") == "slurm"
    # load_config's own argument sets the configuration's transport.
    assert built(cvs_core.load_config(base, transport="slurm")) == "slurm"
    with pytest.raises(cvs_core.ConfigError) as exc:
        cvs_core.load_config(base, transport="pdsh")
    assert paths(exc) == ["transport"]


def test_from_config_without_a_key_file(keyless: dict) -> None:
    keyless["transport"] = "slurm"
    cfg = cvs_core.load_config(keyless)
    assert built(cfg) == "slurm"
    # Forcing ssh on it builds a cluster that uses ssh's own keys (no empty -i).
    assert built(cfg, transport="ssh") == "ssh"


def test_bad_caller_slurm_option_is_refused(base: dict) -> None:
    base["transport"] = "slurm"
    base["slurm"] = {"partition": "gpu"}
    cfg = cvs_core.load_config(base)
    with pytest.raises(cvs_core.CvsError, match="partition"):
        cvs_core.Cluster.from_config(cfg, slurm={"partition": "a b"})
    with pytest.raises(cvs_core.CvsError, match='unknown slurm option "nodes"'):
        cvs_core.Cluster.from_config(cfg, slurm={"nodes": "x"})


def _fake_slurm(tmp_path: Path, hosts: list[str]) -> tuple[Path, Path, Path]:
    """Stand-in scontrol (the hosts are idle nodes), salloc (records its argv in salloc.argv,
    grants job 77 and holds it like the real one until its stdin closes) and srun (records its
    argv, fails)."""
    argv_file = tmp_path / "srun.argv"
    scontrol = tmp_path / "scontrol"
    lines = "\\n".join(f"NodeName={h} NodeAddr={h} NodeHostName={h} State=IDLE" for h in hosts)
    scontrol.write_text(f"#!/bin/sh\nprintf '{lines}\\n'\n")
    salloc = tmp_path / "salloc"
    salloc.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "salloc.argv"}\n'
        'echo "salloc: Granted job allocation 77" >&2\nexec cat >/dev/null\n'
    )
    srun = tmp_path / "srun"
    srun.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv_file}\nexit 3\n')
    for script in (scontrol, srun, salloc):
        script.chmod(0o755)
    return scontrol, srun, argv_file


def test_from_config_passes_the_file_slurm_block_under_the_callers_keys(
    base: dict, tmp_path: Path
) -> None:
    base["transport"] = "slurm"
    base["slurm"] = {"partition": "gpu", "account": "acct", "time": 5}
    cfg = cvs_core.load_config(base)
    scontrol, srun, argv_file = _fake_slurm(tmp_path, cfg.hosts)
    salloc = tmp_path / "salloc"
    caller = {
        "srun": str(srun),
        "salloc": str(salloc),
        "scontrol": str(scontrol),
        "account": "mine",
    }
    with cvs_core.Cluster.from_config(cfg, slurm=caller) as cluster:
        results = cluster.exec("true", timeout=20)
    assert not results.ok  # the stand-in srun runs nothing
    # placement goes to the allocation cvs-core makes; steps run inside it
    argv = (tmp_path / "salloc.argv").read_text().splitlines()
    pairs = list(zip(argv, argv[1:]))
    assert ("--partition", "gpu") in pairs  # from the file
    assert ("--account", "mine") in pairs  # the caller's key wins
    assert ("--account", "acct") not in pairs
    assert ("--time", "5") in pairs  # an integer in the file, as text
    steps = argv_file.read_text().splitlines()
    assert ("--jobid", "77") in list(zip(steps, steps[1:]))
    assert "--partition" not in steps
    assert caller["account"] == "mine" and len(caller) == 4


def test_from_config_passes_the_file_job_id(base: dict, tmp_path: Path) -> None:
    base["transport"] = "slurm"
    base["slurm"] = {"job_id": 4242}
    cfg = cvs_core.load_config(base)
    scontrol, srun, argv_file = _fake_slurm(tmp_path, cfg.hosts)
    with cvs_core.Cluster.from_config(
        cfg, slurm={"srun": str(srun), "scontrol": str(scontrol)}
    ) as cluster:
        cluster.exec("true", timeout=20)
    argv = argv_file.read_text().splitlines()
    assert ("--jobid", "4242") in list(zip(argv, argv[1:]))


# -- CLI --------------------------------------------------------------------------------------


def test_cli_transport_flag_parses_on_every_command() -> None:
    parser = cli.build_parser()
    for command in (["validate", "f.json"], ["plan"], ["up"], ["down"], ["status"]):
        args = parser.parse_args([*command, "--transport", "slurm"])
        assert args.transport == "slurm", command
        assert parser.parse_args(command).transport is None
    args = parser.parse_args(["exec", "--transport", "auto", "hostname"])
    assert (args.transport, args.command) == ("auto", "hostname")
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["plan", "--transport", "pdsh"])
    assert exc.value.code == 2


def test_cli_transport_flag_beats_environment_and_file(
    keyless: dict, write_json, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    keyless["transport"] = "ssh"
    path = write_json("c.json", keyless)
    monkeypatch.setenv("CVS_CORE_TRANSPORT", "ssh")
    # ssh from file and environment: priv_key_file is required.
    assert cli.main(["validate", path, "--json"]) == 2
    errors = json.loads(capsys.readouterr().out)["errors"]
    assert errors == [
        {"path": "priv_key_file", "message": "priv_key_file must be provided in configuration"}
    ]
    # --transport slurm: no key needed, nothing to warn about.
    assert cli.main(["validate", path, "--json", "--transport", "slurm"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["transport"] == "slurm"
    assert out["warnings"] == []
    # ... and the commands that connect refuse the keyless file over ssh, not over slurm.
    assert cli.main(["exec", "--cluster-file", path, "--on-host", "true"]) == 2
    assert "priv_key_file must be provided" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [["exec", "--on-host", "true"], ["exec", "true"], ["status"], ["plan"]],
)
def test_cli_commands_run_on_the_transport_the_flag_names(
    cluster: dict, write_json, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command, capsys
) -> None:
    """With ``--transport slurm``, a keyless file that says ssh reaches the hosts through srun
    (stand-ins found on PATH, as the real ones would be)."""
    cluster.pop("priv_key_file")
    cluster["transport"] = "ssh"
    path = write_json("c.json", cluster)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _, _, argv_file = _fake_slurm(bin_dir, list(cluster["node_dict"]))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    name, *rest = command
    rc = cli.main([name, "--cluster-file", path, "--transport", "slurm", "--json", *rest])
    capsys.readouterr()
    assert rc == 1  # the stand-in srun fails every host
    assert argv_file.exists(), "srun was never run"
    # Without the flag the file's ssh needs a key: refused before any host is contacted.
    argv_file.unlink()
    assert cli.main([name, "--cluster-file", path, *rest]) == 2
    assert "priv_key_file must be provided" in capsys.readouterr().err
    assert not argv_file.exists()


def test_cli_validate_human_shows_the_transport(keyless: dict, write_json, capsys) -> None:
    keyless["transport"] = "slurm"
    keyless["slurm"] = {"partition": "gpu", "job_id": 12}
    assert cli.main(["validate", write_json("c.json", keyless)]) == 0
    out = capsys.readouterr().out
    assert "transport: slurm  partition=gpu job_id=12" in out
    assert "ssh user:" not in out


def test_cli_validate_reports_transport_errors_with_exit_2(base: dict, write_json) -> None:
    base["transport"] = "pdsh"
    base["slurm"] = {"partition": "gpu queue", "qos": "high"}
    path = write_json("bad.json", base)
    res = subprocess.run(
        [sys.executable, "-m", "cvs_core", "validate", path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 2, res.stderr
    assert "invalid configuration (2 errors)" in res.stderr
    assert "  - transport: must be 'ssh', 'slurm' or 'auto', got 'pdsh'" in res.stderr
    assert "  - slurm.partition: 'gpu queue' must be" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "cvs_core", "validate", path, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 2
    assert [e["path"] for e in json.loads(res.stdout)["errors"]] == [
        "transport",
        "slurm.partition",
    ]


def test_cli_validate_flags_a_bad_environment_transport(
    base: dict, write_json, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    path = write_json("c.json", base)
    monkeypatch.setenv("CVS_CORE_TRANSPORT", "k8s")
    assert cli.main(["validate", path, "--json"]) == 2
    errors = json.loads(capsys.readouterr().out)["errors"]
    assert [e["path"] for e in errors] == ["transport"]
    assert "CVS_CORE_TRANSPORT" in errors[0]["message"]
    # --transport makes the environment irrelevant.
    assert cli.main(["validate", path, "--json", "--transport", "ssh"]) == 0
    capsys.readouterr()
