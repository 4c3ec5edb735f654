"""decide_setup / decide_teardown / hosts_needing_sshd and the probe parsers via Python."""

from __future__ import annotations

import pytest

import cvs_core

SHA_A = "sha256:" + "a" * 64
SHA_B = "sha256:" + "b" * 64


def up(name: str = "c1") -> dict:
    return {"running": True, "exit_code": 0, "name": name}


def down() -> dict:
    return {"running": False, "exit_code": 0, "name": ""}


def failed(code: int = 255) -> dict:
    return {"running": False, "exit_code": code, "name": ""}


def same(sha: str = SHA_A) -> dict:
    return {"container_sha": sha, "image_sha": sha}


def decide(
    lifetime: str, running: dict, images: dict | None = None, **kw
) -> cvs_core.SetupDecision:
    return cvs_core.decide_setup(lifetime, running, images, name="c1", image="img:1", **kw)


@pytest.mark.parametrize(
    ("lifetime", "running", "images", "kind"),
    [
        ("no_launch", {"h1": up(), "h2": up()}, None, "verify_ok"),
        ("no_launch", {"h1": up(), "h2": down()}, None, "verify_failed"),
        ("no_launch", {"h1": failed(), "h2": up()}, None, "verify_failed"),
        ("per_run", {"h1": up(), "h2": down()}, None, "launch"),
        ("per_run", {"h1": failed()}, None, "launch"),
        ("persistent", {"h1": down(), "h2": down()}, None, "launch"),
        ("persistent", {"h1": up(), "h2": down()}, None, "refuse_partial"),
        ("persistent", {"h1": failed(), "h2": failed()}, None, "refuse_probe_failed"),
        ("persistent", {"h1": failed(), "h2": up(), "h3": down()}, None, "refuse_probe_failed"),
        ("persistent", {"h1": up(), "h2": up()}, None, "need_image_status"),
        ("persistent", {"h1": up(), "h2": up()}, {"h1": same(), "h2": same()}, "attach"),
        ("persistent", {"h1": up()}, {"h1": same()}, "attach"),
        (
            "persistent",
            {"h1": up(), "h2": up()},
            {"h1": same(SHA_A), "h2": same(SHA_B)},
            "refuse_image_skew",
        ),
        (
            "persistent",
            {"h1": up(), "h2": up()},
            {"h1": same(), "h2": {"container_sha": "", "image_sha": SHA_A}},
            "refuse_unreadable_sha",
        ),
    ],
)
def test_decision_table(lifetime: str, running: dict, images, kind: str) -> None:
    d = decide(lifetime, running, images)
    assert isinstance(d, cvs_core.SetupDecision)
    assert d.kind == kind
    assert d.proceeds == (kind in {"verify_ok", "launch", "attach"})


def test_failed_probe_under_persistent_never_launches() -> None:
    # CVS at its PR state treated exit_code != 0 as "absent" and cold-started with rm -f.
    d = decide("persistent", {"h1": failed(1), "h2": failed(124)})
    assert d.kind == "refuse_probe_failed"
    assert d.failed_hosts == ["h1", "h2"]
    assert d.message == (
        "Cannot determine state of persistent container 'c1' on ['h1', 'h2'] (probe failed: "
        "SSH/sudo/docker error, timeout, or host unreachable). Refusing to act on an "
        "untrustworthy probe -- resolve host/daemon health and rerun."
    )


def test_partial_lists_hosts_and_refuses() -> None:
    d = decide("persistent", {"h1": up(), "h2": down(), "h3": up()})
    assert (d.running_hosts, d.missing_hosts) == (["h1", "h3"], ["h2"])
    assert d.message.startswith(
        "Persistent container 'c1' is running on ['h1', 'h3'] but missing on ['h2']. "
        "Refusing to auto-relaunch:"
    )


def test_cold_start_message_is_cvs() -> None:
    d = decide("persistent", {"h1": down()})
    assert d.message == "Persistent container not running on any host, launching..."


def test_attach_warns_per_stale_host() -> None:
    d = decide(
        "persistent",
        {"h1": up(), "h2": up()},
        {"h1": same(), "h2": {"container_sha": SHA_A, "image_sha": SHA_B}},
    )
    assert d.kind == "attach"
    assert d.stale_hosts == ["h2"]
    assert d.warnings == [
        f"Persistent container 'c1' on h2 runs image {SHA_A[:19]} but local 'img:1' is "
        f"{SHA_B[:19]}; overlay may be stale"
    ]


def test_unreadable_wins_over_skew() -> None:
    d = decide(
        "persistent",
        {"h1": up(), "h2": up(), "h3": up()},
        {"h1": same(SHA_A), "h2": same(SHA_B), "h3": {"container_sha": "", "image_sha": ""}},
    )
    assert d.kind == "refuse_unreadable_sha"
    assert d.message == (
        "Could not read the running image SHA for container 'c1' on ['h3']; cannot verify "
        "image consistency across hosts"
    )


def test_verify_failed_message_matches_cvs() -> None:
    d = decide(
        "no_launch", {"h1": failed(1), "h2": {"running": False, "exit_code": 0, "name": "x"}}
    )
    assert d.message == (
        "Container 'c1' not running on hosts: ['h1 (exit code 1)', "
        "\"h2 (container not running, found: 'x')\"]"
    )


def test_expected_hosts_absent_from_probe_count_as_failed() -> None:
    d = decide("persistent", {"h1": down()}, hosts=["h1", "h2"])
    assert d.kind == "refuse_probe_failed"
    assert d.failed_hosts == ["h2"]


def test_bad_lifetime_and_empty_hosts_are_errors() -> None:
    with pytest.raises(cvs_core.ConfigError, match=r"container\.lifetime must be one of"):
        cvs_core.decide_setup("forever", {"h1": up()})
    with pytest.raises(cvs_core.CvsError, match="no hosts"):
        cvs_core.decide_setup("per_run", {})


def test_decide_teardown() -> None:
    assert cvs_core.decide_teardown("per_run", "c1") is True
    assert cvs_core.decide_teardown("per_run", None) is False
    assert cvs_core.decide_teardown("per_run", "") is False
    assert cvs_core.decide_teardown("persistent", "c1") is False
    assert cvs_core.decide_teardown("no_launch", "c1") is False


def test_hosts_needing_sshd_accepts_both_shapes() -> None:
    detailed = {"h1": {"output": "", "exit_code": 0}, "h2": {"output": "", "exit_code": 1}}
    assert cvs_core.hosts_needing_sshd(detailed) == ["h2"]
    assert cvs_core.hosts_needing_sshd({"a": 1, "b": 0, "c": -1}) == ["a", "c"]


def test_probe_parsers_feed_decide_setup() -> None:
    ps = {
        "h1": {"output": "c1\n", "exit_code": 0},
        "h2": {"output": "", "exit_code": 0},
        "h3": {"output": "sudo: unable to resolve host\nc1", "exit_code": 0},
        "h4": {"output": "Cannot connect to the Docker daemon", "exit_code": 1},
    }
    running = cvs_core.parse_running_probe("c1", ps)
    assert running["h1"] == {"exit_code": 0, "running": True, "name": "c1"}
    assert running["h2"]["running"] is False
    assert running["h3"]["running"] is False
    assert running["h4"]["exit_code"] == 1
    images = cvs_core.parse_image_probe({"h1": {"output": f"{SHA_A}|{SHA_B}\n", "exit_code": 0}})
    assert images == {"h1": {"container_sha": SHA_A, "image_sha": SHA_B}}
    assert cvs_core.parse_image_probe({"h1": "|"}) == {"h1": {"container_sha": "", "image_sha": ""}}


def test_inline_script_too_large_is_refused_before_any_host(tmp_path, capsys) -> None:
    """Found when the lifecycle is built (exit 2 from the CLI), not after containers were
    launched on every host. The host is TEST-NET-1: nothing may try to reach it."""
    import json

    from cvs_core import cli

    key = tmp_path / "id_test"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    script = tmp_path / "big.sh"
    script.write_bytes(b"#" * 16385)
    doc = {
        "node_dict": {"192.0.2.1": {}},
        "username": "root",
        "priv_key_file": str(key),
        "container": {"image": "img:1", "name": "c1", "lifetime": "persistent",
                      "setup_script": str(script)},
    }  # fmt: skip
    cfg = cvs_core.load_config(doc)
    with pytest.raises(cvs_core.ScriptTooLargeError) as err:
        cvs_core.ContainerLifecycle(cfg, inline_provision=True)
    assert err.value.size == 16385 and err.value.limit == 16384
    cvs_core.ContainerLifecycle(cfg)  # over stdin there is no cap
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(doc))
    assert cli.main(["up", "--cluster-file", str(path), "--inline-provision", "-q"]) == 2
    assert "16384" in capsys.readouterr().err
