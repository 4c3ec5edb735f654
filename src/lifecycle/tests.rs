use super::*;
use proptest::prelude::*;

const NAME: &str = "cvs_c";
const IMAGE: &str = "rocm/cvs:latest";

fn sha(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn up() -> ProbeState {
    ProbeState {
        running: true,
        exit_code: 0,
        name: NAME.into(),
    }
}

fn down(found: &str) -> ProbeState {
    ProbeState {
        running: false,
        exit_code: 0,
        name: found.into(),
    }
}

fn err(code: i64) -> ProbeState {
    ProbeState {
        running: false,
        exit_code: code,
        name: String::new(),
    }
}

fn img(container: &str, image: &str) -> ImageState {
    ImageState {
        container_sha: container.into(),
        image_sha: image.into(),
    }
}

fn table<T: Clone>(rows: &[(&str, T)]) -> Vec<(String, T)> {
    rows.iter()
        .map(|(h, v)| ((*h).to_owned(), v.clone()))
        .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn decide(
    lifetime: Lifetime,
    running: &[(String, ProbeState)],
    image_status: Option<&[(String, ImageState)]>,
    hosts: Option<&[String]>,
) -> Result<SetupDecision> {
    decide_setup(&SetupInput {
        lifetime,
        running,
        image_status,
        hosts,
        container_name: NAME,
        image: IMAGE,
    })
}

fn decide_ok(
    lifetime: Lifetime,
    running: &[(String, ProbeState)],
    image_status: Option<&[(String, ImageState)]>,
    hosts: Option<&[String]>,
) -> SetupDecision {
    decide(lifetime, running, image_status, hosts).expect("a decision")
}

/// Image status where every listed host runs the local image A.
fn matching(hosts: &[&str]) -> Vec<(String, ImageState)> {
    hosts
        .iter()
        .map(|h| ((*h).to_owned(), img(&sha('a'), &sha('a'))))
        .collect()
}

#[test]
fn decision_kind_names_and_proceeds() {
    use DecisionKind::*;
    let cases = [
        (VerifyOk, "verify_ok", true),
        (VerifyFailed, "verify_failed", false),
        (Launch, "launch", true),
        (Attach, "attach", true),
        (RefusePartial, "refuse_partial", false),
        (RefuseProbeFailed, "refuse_probe_failed", false),
        (RefuseImageSkew, "refuse_image_skew", false),
        (RefuseUnreadableSha, "refuse_unreadable_sha", false),
        (NeedImageStatus, "need_image_status", false),
    ];
    for (kind, name, proceeds) in cases {
        assert_eq!(kind.as_str(), name);
        assert_eq!(kind.proceeds(), proceeds, "{name}");
    }
}

/// Every lifetime × probe state, checking the kind and the full partition.
#[test]
fn lifetime_by_probe_state_table() {
    use DecisionKind::*;
    use Lifetime::*;

    struct Scenario {
        name: &'static str,
        running: Vec<(String, ProbeState)>,
        hosts: Option<Vec<String>>,
    }
    let scenarios = [
        Scenario {
            name: "all running",
            running: table(&[("h1", up()), ("h2", up())]),
            hosts: None,
        },
        Scenario {
            name: "none running",
            running: table(&[("h1", down("")), ("h2", down(""))]),
            hosts: None,
        },
        Scenario {
            name: "some running",
            running: table(&[("h1", up()), ("h2", down(""))]),
            hosts: None,
        },
        Scenario {
            name: "probe failed (exit != 0)",
            running: table(&[("h1", up()), ("h2", err(255))]),
            hosts: None,
        },
        Scenario {
            name: "probe failed (host absent)",
            running: table(&[("h1", up())]),
            hosts: Some(strings(&["h1", "h2"])),
        },
        Scenario {
            name: "failed + partial",
            running: table(&[("h1", up()), ("h2", down("")), ("h3", err(1))]),
            hosts: None,
        },
        Scenario {
            name: "exit != 0 but running claimed",
            running: table(&[
                ("h1", up()),
                (
                    "h2",
                    ProbeState {
                        exit_code: 1,
                        ..up()
                    },
                ),
            ]),
            hosts: None,
        },
        Scenario {
            name: "single host running",
            running: table(&[("h1", up())]),
            hosts: None,
        },
        Scenario {
            name: "single host missing",
            running: table(&[("h1", down(""))]),
            hosts: None,
        },
        Scenario {
            name: "single host failed",
            running: table(&[("h1", err(124))]),
            hosts: None,
        },
    ];
    // (scenario, lifetime) -> (kind, running, missing, failed)
    #[allow(clippy::type_complexity)]
    let expected: [(&str, Lifetime, DecisionKind, &[&str], &[&str], &[&str]); 30] = [
        ("all running", NoLaunch, VerifyOk, &["h1", "h2"], &[], &[]),
        (
            "all running",
            PerRun,
            Launch,
            &["h1", "h2"],
            &["h1", "h2"],
            &[],
        ),
        ("all running", Persistent, Attach, &["h1", "h2"], &[], &[]),
        (
            "none running",
            NoLaunch,
            VerifyFailed,
            &[],
            &["h1", "h2"],
            &[],
        ),
        ("none running", PerRun, Launch, &[], &["h1", "h2"], &[]),
        ("none running", Persistent, Launch, &[], &["h1", "h2"], &[]),
        (
            "some running",
            NoLaunch,
            VerifyFailed,
            &["h1"],
            &["h2"],
            &[],
        ),
        ("some running", PerRun, Launch, &["h1"], &["h1", "h2"], &[]),
        (
            "some running",
            Persistent,
            RefusePartial,
            &["h1"],
            &["h2"],
            &[],
        ),
        (
            "probe failed (exit != 0)",
            NoLaunch,
            VerifyFailed,
            &["h1"],
            &[],
            &["h2"],
        ),
        (
            "probe failed (exit != 0)",
            PerRun,
            Launch,
            &["h1"],
            &["h1", "h2"],
            &["h2"],
        ),
        (
            "probe failed (exit != 0)",
            Persistent,
            RefuseProbeFailed,
            &["h1"],
            &[],
            &["h2"],
        ),
        (
            "probe failed (host absent)",
            NoLaunch,
            VerifyFailed,
            &["h1"],
            &[],
            &["h2"],
        ),
        (
            "probe failed (host absent)",
            PerRun,
            Launch,
            &["h1"],
            &["h1", "h2"],
            &["h2"],
        ),
        (
            "probe failed (host absent)",
            Persistent,
            RefuseProbeFailed,
            &["h1"],
            &[],
            &["h2"],
        ),
        (
            "failed + partial",
            NoLaunch,
            VerifyFailed,
            &["h1"],
            &["h2"],
            &["h3"],
        ),
        (
            "failed + partial",
            PerRun,
            Launch,
            &["h1"],
            &["h1", "h2", "h3"],
            &["h3"],
        ),
        (
            "failed + partial",
            Persistent,
            RefuseProbeFailed,
            &["h1"],
            &["h2"],
            &["h3"],
        ),
        (
            "exit != 0 but running claimed",
            NoLaunch,
            VerifyFailed,
            &["h1"],
            &[],
            &["h2"],
        ),
        (
            "exit != 0 but running claimed",
            PerRun,
            Launch,
            &["h1"],
            &["h1", "h2"],
            &["h2"],
        ),
        (
            "exit != 0 but running claimed",
            Persistent,
            RefuseProbeFailed,
            &["h1"],
            &[],
            &["h2"],
        ),
        ("single host running", NoLaunch, VerifyOk, &["h1"], &[], &[]),
        ("single host running", PerRun, Launch, &["h1"], &["h1"], &[]),
        ("single host running", Persistent, Attach, &["h1"], &[], &[]),
        (
            "single host missing",
            NoLaunch,
            VerifyFailed,
            &[],
            &["h1"],
            &[],
        ),
        ("single host missing", PerRun, Launch, &[], &["h1"], &[]),
        ("single host missing", Persistent, Launch, &[], &["h1"], &[]),
        (
            "single host failed",
            NoLaunch,
            VerifyFailed,
            &[],
            &[],
            &["h1"],
        ),
        ("single host failed", PerRun, Launch, &[], &["h1"], &["h1"]),
        (
            "single host failed",
            Persistent,
            RefuseProbeFailed,
            &[],
            &[],
            &["h1"],
        ),
    ];
    // Every scenario appears under every lifetime.
    for s in &scenarios {
        for lt in [NoLaunch, PerRun, Persistent] {
            assert!(
                expected.iter().any(|e| e.0 == s.name && e.1 == lt),
                "missing row for {} / {lt:?}",
                s.name
            );
        }
    }
    for (name, lifetime, kind, running, missing, failed) in expected {
        let s = scenarios.iter().find(|s| s.name == name).unwrap();
        let hosts_in_table: Vec<&str> = s.running.iter().map(|(h, _)| h.as_str()).collect();
        let status = matching(&hosts_in_table);
        let d = decide_ok(lifetime, &s.running, Some(&status), s.hosts.as_deref());
        let ctx = format!("{name} / {lifetime:?}: {d:?}");
        assert_eq!(d.kind, kind, "{ctx}");
        assert_eq!(d.running_hosts, running, "{ctx}");
        assert_eq!(d.missing_hosts, missing, "{ctx}");
        assert_eq!(d.failed_hosts, failed, "{ctx}");
        assert!(d.stale_hosts.is_empty(), "{ctx}");
        assert!(d.warnings.is_empty(), "{ctx}");
        assert_eq!(d.kind.proceeds(), kind.proceeds(), "{ctx}");
    }
}

#[test]
fn verify_ok_message() {
    let running = table(&[("h1", up()), ("h2", up()), ("h3", up())]);
    let d = decide_ok(Lifetime::NoLaunch, &running, None, None);
    assert_eq!(d.kind, DecisionKind::VerifyOk);
    assert_eq!(d.message, "Container 'cvs_c' is running on all 3 hosts");
}

#[test]
fn verify_failed_message_lists_every_failure_in_host_order() {
    let running = table(&[
        ("h1", down("")),
        ("h2", err(255)),
        ("h4", down("other")),
        ("h5", up()),
    ]);
    let hosts = strings(&["h1", "h2", "h3", "h4", "h5"]);
    let d = decide_ok(Lifetime::NoLaunch, &running, None, Some(&hosts));
    assert_eq!(d.kind, DecisionKind::VerifyFailed);
    assert_eq!(
        d.message,
        "Container 'cvs_c' not running on hosts: [\"h1 (container not running, found: '')\", \
         'h2 (exit code 255)', 'h3 (exit code -1)', \
         \"h4 (container not running, found: 'other')\"]"
    );
    assert_eq!(d.running_hosts, ["h5"]);
    assert_eq!(d.missing_hosts, ["h1", "h4"]);
    assert_eq!(d.failed_hosts, ["h2", "h3"]);
}

#[test]
fn per_run_launch_message() {
    let running = table(&[("h1", up()), ("h2", down(""))]);
    let d = decide_ok(Lifetime::PerRun, &running, None, None);
    assert_eq!(d.kind, DecisionKind::Launch);
    assert_eq!(d.message, "Launching per_run container 'cvs_c' on 2 hosts");
}

#[test]
fn persistent_launch_message() {
    let running = table(&[("h1", down("")), ("h2", down(""))]);
    let d = decide_ok(Lifetime::Persistent, &running, None, None);
    assert_eq!(d.kind, DecisionKind::Launch);
    assert_eq!(
        d.message,
        "Persistent container not running on any host, launching..."
    );
}

#[test]
fn persistent_probe_failed_message_and_priority_over_partial() {
    let running = table(&[("h1", up()), ("h2", down("")), ("h4", err(1))]);
    let hosts = strings(&["h1", "h2", "h3", "h4"]);
    let d = decide_ok(Lifetime::Persistent, &running, None, Some(&hosts));
    assert_eq!(d.kind, DecisionKind::RefuseProbeFailed);
    assert_eq!(
        d.message,
        "Cannot determine state of persistent container 'cvs_c' on ['h3', 'h4'] (probe failed: \
         SSH/sudo/docker error, timeout, or host unreachable). Refusing to act on an \
         untrustworthy probe -- resolve host/daemon health and rerun."
    );
}

#[test]
fn persistent_all_probes_failed_never_launches() {
    // CVS at its PR state read this as "not running anywhere" and cold-started with rm -f.
    let running = table(&[("h1", err(255)), ("h2", err(1))]);
    let d = decide_ok(Lifetime::Persistent, &running, None, None);
    assert_eq!(d.kind, DecisionKind::RefuseProbeFailed);
    assert_eq!(d.failed_hosts, ["h1", "h2"]);
    assert!(d.missing_hosts.is_empty());
}

#[test]
fn persistent_partial_message() {
    let running = table(&[("h1", up()), ("h2", down("")), ("h3", up())]);
    let d = decide_ok(Lifetime::Persistent, &running, None, None);
    assert_eq!(d.kind, DecisionKind::RefusePartial);
    assert_eq!(
        d.message,
        "Persistent container 'cvs_c' is running on ['h1', 'h3'] but missing on ['h2']. Refusing \
         to auto-relaunch: relaunching would force-remove the container on the running hosts and \
         destroy their overlay. Start it on the missing hosts, or remove it everywhere, then \
         rerun."
    );
}

#[test]
fn persistent_need_image_status_message() {
    let running = table(&[("h1", up()), ("h2", up())]);
    let d = decide_ok(Lifetime::Persistent, &running, None, None);
    assert_eq!(d.kind, DecisionKind::NeedImageStatus);
    assert!(!d.kind.proceeds());
    assert_eq!(d.running_hosts, ["h1", "h2"]);
    assert_eq!(
        d.message,
        "Persistent container 'cvs_c' is running on all 2 hosts; image status is needed to \
         verify it"
    );
}

#[test]
fn persistent_attach_when_shas_match() {
    let running = table(&[("h1", up()), ("h2", up())]);
    let status = matching(&["h1", "h2"]);
    let d = decide_ok(Lifetime::Persistent, &running, Some(&status), None);
    assert_eq!(d.kind, DecisionKind::Attach);
    assert_eq!(
        d.message,
        "Attaching to persistent container 'cvs_c' running on all 2 hosts"
    );
    assert!(d.stale_hosts.is_empty());
    assert!(d.warnings.is_empty());
}

#[test]
fn persistent_attach_warns_per_stale_host() {
    let running = table(&[("h1", up()), ("h2", up()), ("h3", up())]);
    let status = table(&[
        ("h1", img(&sha('a'), &sha('b'))),
        ("h2", img(&sha('a'), &sha('a'))),
        ("h3", img(&sha('a'), "")),
    ]);
    let d = decide_ok(Lifetime::Persistent, &running, Some(&status), None);
    assert_eq!(d.kind, DecisionKind::Attach);
    assert_eq!(d.stale_hosts, ["h1", "h3"]);
    assert_eq!(
        d.warnings,
        [
            "Persistent container 'cvs_c' on h1 runs image sha256:aaaaaaaaaaaa but local \
             'rocm/cvs:latest' is sha256:bbbbbbbbbbbb; overlay may be stale",
            // An unreadable local tag is reported as CVS does (Python's ''[:19] is '').
            "Persistent container 'cvs_c' on h3 runs image sha256:aaaaaaaaaaaa but local \
             'rocm/cvs:latest' is ; overlay may be stale",
        ]
    );
    assert!(d.missing_hosts.is_empty() && d.failed_hosts.is_empty());
}

#[test]
fn persistent_image_skew_message() {
    let running = table(&[("h1", up()), ("h2", up())]);
    let status = table(&[
        ("h1", img(&sha('a'), &sha('a'))),
        ("h2", img(&sha('b'), &sha('a'))),
    ]);
    let d = decide_ok(Lifetime::Persistent, &running, Some(&status), None);
    assert_eq!(d.kind, DecisionKind::RefuseImageSkew);
    assert_eq!(
        d.message,
        "Cross-host image SHA skew for container 'cvs_c': hosts are running different images \
         {'h1': 'sha256:aaaaaaaaaaaa', 'h2': 'sha256:bbbbbbbbbbbb'}"
    );
    assert!(d.stale_hosts.is_empty(), "stale is only reported on attach");
    assert!(d.warnings.is_empty());
}

#[test]
fn skew_repr_cuts_on_char_boundaries_and_keeps_short_shas() {
    let running = table(&[("h1", up()), ("h2", up())]);
    let status = table(&[("h1", img(&"é".repeat(25), "x")), ("h2", img("short", "x"))]);
    let d = decide_ok(Lifetime::Persistent, &running, Some(&status), None);
    assert_eq!(d.kind, DecisionKind::RefuseImageSkew);
    assert_eq!(
        d.message,
        format!(
            "Cross-host image SHA skew for container 'cvs_c': hosts are running different images \
             {{'h1': '{}', 'h2': 'short'}}",
            "é".repeat(19)
        )
    );
}

#[test]
fn sha_prefix_is_pythons_first_19_chars() {
    assert_eq!(sha_prefix(&sha('a')), "sha256:aaaaaaaaaaaa");
    assert_eq!(sha_prefix(""), "");
    assert_eq!(sha_prefix("abc"), "abc");
    assert_eq!(sha_prefix(&"x".repeat(19)), "x".repeat(19));
    assert_eq!(sha_prefix(&"日".repeat(20)), "日".repeat(19));
}

#[test]
fn persistent_unreadable_sha_message() {
    let running = table(&[("h1", up()), ("h2", up()), ("h3", up())]);
    // h2 printed nothing for the container, h3 is absent from the image status.
    let status = table(&[
        ("h1", img(&sha('a'), &sha('a'))),
        ("h2", img("", &sha('a'))),
    ]);
    let d = decide_ok(Lifetime::Persistent, &running, Some(&status), None);
    assert_eq!(d.kind, DecisionKind::RefuseUnreadableSha);
    assert_eq!(
        d.message,
        "Could not read the running image SHA for container 'cvs_c' on ['h2', 'h3']; cannot \
         verify image consistency across hosts"
    );
}

#[test]
fn unreadable_wins_over_skew() {
    let running = table(&[("h1", up()), ("h2", up()), ("h3", up())]);
    let status = table(&[
        ("h1", img(&sha('a'), &sha('a'))),
        ("h2", img(&sha('b'), &sha('a'))),
        ("h3", img("", &sha('a'))),
    ]);
    let d = decide_ok(Lifetime::Persistent, &running, Some(&status), None);
    assert_eq!(d.kind, DecisionKind::RefuseUnreadableSha);
    assert!(d.message.contains("on ['h3'];"), "{}", d.message);
}

#[test]
fn empty_image_status_is_unreadable_everywhere() {
    let running = table(&[("h1", up()), ("h2", up())]);
    let d = decide_ok(Lifetime::Persistent, &running, Some(&[]), None);
    assert_eq!(d.kind, DecisionKind::RefuseUnreadableSha);
    assert!(d.message.contains("on ['h1', 'h2'];"), "{}", d.message);
}

#[test]
fn image_status_of_unexpected_hosts_is_ignored() {
    let running = table(&[("h1", up()), ("h2", up()), ("hx", up())]);
    let hosts = strings(&["h1", "h2"]);
    let status = table(&[
        ("hx", img(&sha('c'), &sha('c'))),
        ("h1", img(&sha('a'), &sha('a'))),
        ("h2", img(&sha('a'), &sha('a'))),
    ]);
    let d = decide_ok(Lifetime::Persistent, &running, Some(&status), Some(&hosts));
    assert_eq!(d.kind, DecisionKind::Attach);
    assert_eq!(d.running_hosts, ["h1", "h2"]);
}

#[test]
fn hosts_order_wins_and_extra_probed_hosts_are_ignored() {
    let running = table(&[
        ("h1", down("")),
        ("hx", err(255)),
        ("h2", up()),
        ("h3", down("")),
        ("h4", up()),
    ]);
    let hosts = strings(&["h4", "h3", "h2", "h1"]);
    let d = decide_ok(Lifetime::Persistent, &running, None, Some(&hosts));
    // hx's failed probe would otherwise win; it is not one of ours.
    assert_eq!(d.kind, DecisionKind::RefusePartial);
    assert_eq!(d.running_hosts, ["h4", "h2"]);
    assert_eq!(d.missing_hosts, ["h3", "h1"]);
    assert!(d.failed_hosts.is_empty());
    assert_eq!(
        d.message,
        "Persistent container 'cvs_c' is running on ['h4', 'h2'] but missing on ['h3', 'h1']. \
         Refusing to auto-relaunch: relaunching would force-remove the container on the running \
         hosts and destroy their overlay. Start it on the missing hosts, or remove it everywhere, \
         then rerun."
    );

    let d = decide_ok(Lifetime::PerRun, &running, None, Some(&hosts));
    assert_eq!(d.missing_hosts, ["h4", "h3", "h2", "h1"]);
    assert_eq!(d.message, "Launching per_run container 'cvs_c' on 4 hosts");

    let d = decide_ok(Lifetime::NoLaunch, &running, None, Some(&hosts));
    assert_eq!(
        d.message,
        "Container 'cvs_c' not running on hosts: [\"h3 (container not running, found: '')\", \
         \"h1 (container not running, found: '')\"]"
    );
}

#[test]
fn without_hosts_the_probe_order_is_reported() {
    let running = table(&[("h2", up()), ("h1", down("")), ("h3", up())]);
    let d = decide_ok(Lifetime::Persistent, &running, None, None);
    assert_eq!(d.running_hosts, ["h2", "h3"]);
    assert_eq!(d.missing_hosts, ["h1"]);
}

#[test]
fn no_hosts_is_an_error() {
    for lifetime in [Lifetime::NoLaunch, Lifetime::PerRun, Lifetime::Persistent] {
        let e = decide(lifetime, &[], None, None).unwrap_err();
        assert_eq!(e, Error::InvalidArgument("no hosts to decide for".into()));
        // An explicit empty host list decides for nobody, whatever was probed.
        let running = table(&[("h1", up())]);
        let e = decide(lifetime, &running, None, Some(&[])).unwrap_err();
        assert_eq!(e.to_string(), "no hosts to decide for");
    }
}

#[test]
fn duplicate_hosts_are_an_error() {
    let dup = table(&[("h1", up()), ("h1", down(""))]);
    let e = decide(Lifetime::Persistent, &dup, None, None).unwrap_err();
    assert_eq!(
        e,
        Error::InvalidArgument("host 'h1' appears more than once in the running probe".into())
    );

    let running = table(&[("h1", up())]);
    let hosts = strings(&["h1", "h1"]);
    let e = decide(Lifetime::PerRun, &running, None, Some(&hosts)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "host 'h1' appears more than once in the expected hosts"
    );

    let status = table(&[("h1", img(&sha('a'), &sha('a'))), ("h1", img("", ""))]);
    let e = decide(Lifetime::Persistent, &running, Some(&status), None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "host 'h1' appears more than once in the image status"
    );
}

#[test]
fn image_status_does_not_matter_outside_persistent_attach() {
    let running = table(&[("h1", up()), ("h2", up())]);
    let skewed = table(&[("h1", img(&sha('a'), "")), ("h2", img("", ""))]);
    for (lifetime, kind) in [
        (Lifetime::NoLaunch, DecisionKind::VerifyOk),
        (Lifetime::PerRun, DecisionKind::Launch),
    ] {
        let d = decide_ok(lifetime, &running, Some(&skewed), None);
        assert_eq!(d.kind, kind);
        assert!(d.stale_hosts.is_empty() && d.warnings.is_empty());
    }
}

#[test]
fn hosts_needing_sshd_keeps_nonzero_in_order() {
    let pre = vec![
        ("h1".to_owned(), 0),
        ("h2".to_owned(), 1),
        ("h3".to_owned(), -1),
        ("h4".to_owned(), 0),
        ("h5".to_owned(), 255),
    ];
    assert_eq!(hosts_needing_sshd(&pre), ["h2", "h3", "h5"]);
    assert!(hosts_needing_sshd(&[]).is_empty());
    assert!(hosts_needing_sshd(&[("h1".to_owned(), 0)]).is_empty());
}

#[test]
fn parse_is_running_cases() {
    // (output, exit code, running, name)
    let cases: &[(&str, i64, bool, &str)] = &[
        ("cvs_c\n", 0, true, "cvs_c"),
        ("  cvs_c \r\n\t", 0, true, "cvs_c"),
        ("\u{1c}cvs_c\u{1f}", 0, true, "cvs_c"),
        ("", 0, false, ""),
        ("cvs_c", 1, false, "cvs_c"),
        ("cvs_c", 255, false, "cvs_c"),
        ("cvs_c_old\n", 0, false, "cvs_c_old"),
        (
            "sudo: unable to resolve host node1: Name or service not known\ncvs_c\n",
            0,
            false,
            "sudo: unable to resolve host node1: Name or service not known\ncvs_c",
        ),
    ];
    for &(output, code, running, name) in cases {
        let p = parse_is_running(NAME, output, code);
        assert_eq!(
            p,
            ProbeState {
                running,
                exit_code: code,
                name: name.into()
            },
            "{output:?} exit {code}"
        );
    }
}

#[test]
fn parse_image_sha_cases() {
    let a = sha('a');
    let b = sha('b');
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("{a}|{b}\n"), &a, &b),
        (format!("  {a} | {b}  "), &a, &b),
        (String::new(), "", ""),
        ("|".into(), "", ""),
        ("\n|\n".into(), "", ""),
        (format!("|{b}"), "", &b),
        (format!("{a}|"), &a, ""),
        (a.clone(), &a, ""),
        ("x|y|z".into(), "x", "y"),
    ];
    for (output, container, image) in cases {
        assert_eq!(
            parse_image_sha(&output),
            img(container, image),
            "{output:?}"
        );
    }
}

#[test]
fn decide_teardown_table() {
    let cases = [
        (Lifetime::NoLaunch, Some("cvs_c"), false),
        (Lifetime::NoLaunch, None, false),
        (Lifetime::PerRun, Some("cvs_c"), true),
        (Lifetime::PerRun, Some(""), false),
        (Lifetime::PerRun, None, false),
        (Lifetime::Persistent, Some("cvs_c"), false),
        (Lifetime::Persistent, None, false),
    ];
    for (lifetime, id, want) in cases {
        assert_eq!(decide_teardown(lifetime, id), want, "{lifetime:?} {id:?}");
    }
}

type GenHost = (Option<ProbeState>, Option<ImageState>);

/// One generated host: its probe (or none), and its image status entry (or none).
fn arb_host() -> impl Strategy<Value = GenHost> {
    let probe = (
        prop_oneof![3 => Just(0i64), 1 => Just(1i64), 1 => Just(255i64), 1 => Just(-1i64)],
        any::<bool>(),
        prop_oneof![
            Just(String::new()),
            Just(NAME.to_owned()),
            Just("junk".to_owned())
        ],
    )
        .prop_map(|(exit_code, running, name)| ProbeState {
            running,
            exit_code,
            name,
        });
    let shas = || prop_oneof![1 => Just(String::new()), 2 => Just(sha('a')), 2 => Just(sha('b'))];
    let image = (shas(), shas()).prop_map(|(container_sha, image_sha)| ImageState {
        container_sha,
        image_sha,
    });
    (
        prop_oneof![1 => Just(None), 6 => probe.prop_map(Some)],
        prop_oneof![1 => Just(None), 4 => image.prop_map(Some)],
    )
}

/// Host tables: fully random, or all hosts sharing one probe state with an occasional outlier.
/// Independent hosts almost never all agree, so without the uniform families the interesting
/// edges (all running with skewed or unreadable SHAs, all missing but one) would go untested.
fn arb_table() -> impl Strategy<Value = Vec<GenHost>> {
    let near = |base: ProbeState| {
        prop::collection::vec(
            prop_oneof![
                6 => (Just(Some(base.clone())), arb_host().prop_map(|(_, s)| s)),
                1 => arb_host(),
            ],
            1..7,
        )
    };
    prop_oneof![
        2 => prop::collection::vec(arb_host(), 1..7),
        2 => near(up()),
        1 => near(down("")),
    ]
}

proptest! {
    /// The overlay-safety invariant: persistent never launches (rm -f) unless every host
    /// answered "not running", and never attaches unless every host runs one readable image.
    #[test]
    fn persistent_launch_and_attach_are_safe(
        generated in arb_table(),
        give_hosts in any::<bool>(),
        give_images in any::<bool>(),
    ) {
        let names: Vec<String> = (0..generated.len()).map(|i| format!("h{i}")).collect();
        let running: Vec<(String, ProbeState)> = names
            .iter()
            .zip(&generated)
            .filter_map(|(h, (p, _))| Some((h.clone(), p.clone()?)))
            .collect();
        let images: Vec<(String, ImageState)> = names
            .iter()
            .zip(&generated)
            .filter_map(|(h, (_, s))| Some((h.clone(), s.clone()?)))
            .collect();
        let hosts = give_hosts.then_some(names.as_slice());
        let expected: Vec<&String> = if give_hosts {
            names.iter().collect()
        } else {
            running.iter().map(|(h, _)| h).collect()
        };
        let result = decide(
            Lifetime::Persistent,
            &running,
            give_images.then_some(images.as_slice()),
            hosts,
        );
        if expected.is_empty() {
            prop_assert!(result.is_err());
            return Ok(());
        }
        let d = result.unwrap();
        let probe_of = |h: &String| running.iter().find(|(n, _)| n == h).map(|(_, p)| p);

        prop_assert_eq!(
            d.running_hosts.len() + d.missing_hosts.len() + d.failed_hosts.len(),
            expected.len()
        );
        prop_assert!(!matches!(d.kind, DecisionKind::VerifyOk | DecisionKind::VerifyFailed));
        if d.kind == DecisionKind::Launch {
            for h in &expected {
                let p = probe_of(h);
                prop_assert!(
                    p.is_some_and(|p| p.exit_code == 0 && !p.running),
                    "launched over {} with probe {:?}", h, p
                );
            }
        }
        if d.kind == DecisionKind::Attach {
            prop_assert!(give_images);
            let mut shas: Vec<&str> = Vec::new();
            for h in &expected {
                let p = probe_of(h);
                prop_assert!(p.is_some_and(|p| p.exit_code == 0 && p.running));
                let s = images.iter().find(|(n, _)| n == *h).map(|(_, s)| s);
                prop_assert!(s.is_some_and(|s| !s.container_sha.is_empty()));
                let sha = s.unwrap().container_sha.as_str();
                if !shas.contains(&sha) {
                    shas.push(sha);
                }
            }
            prop_assert_eq!(shas.len(), 1);
        }
        if d.kind != DecisionKind::Attach {
            prop_assert!(d.stale_hosts.is_empty() && d.warnings.is_empty());
        }
    }
}
