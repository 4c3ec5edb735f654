//! Which engine a cluster uses (`transport`) and where its Slurm steps run (`slurm`): the
//! cluster file's keys, their validation, and the resolution explicit > `CVS_CORE_TRANSPORT` >
//! file > `ssh`. Pure: the environment is read through [`Env`]. `crate::transport` re-exports
//! [`Kind`], [`TRANSPORT_ENV`] and [`resolve_kind`].

use serde_json::{Map, Value};

use super::{Env, pyrepr};
use crate::error::{Error, Issue, Result};

/// Which engine a cluster uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ssh,
    Slurm,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ssh => "ssh",
            Kind::Slurm => "slurm",
        }
    }
}

/// The environment variable that overrides the configured transport.
pub const TRANSPORT_ENV: &str = "CVS_CORE_TRANSPORT";

/// Set by Slurm inside an allocation; `auto` means Slurm when it is.
pub const SLURM_JOB_ID_ENV: &str = "SLURM_JOB_ID";

/// The values `transport` takes.
pub const TRANSPORT_VALUES: [&str; 3] = ["ssh", "slurm", "auto"];

/// The keys of the cluster file's `slurm` block.
pub const SLURM_KEYS: [&str; 5] = ["partition", "account", "reservation", "job_id", "time"];

/// The cluster file's `slurm` block: where the Slurm engine places its steps. `job_id` and
/// `time` given as integers are kept as their decimal text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub reservation: Option<String>,
    pub job_id: Option<String>,
    pub time: Option<String>,
}

impl SlurmConfig {
    /// The keys that are set, in [`SLURM_KEYS`] order.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("partition", &self.partition),
            ("account", &self.account),
            ("reservation", &self.reservation),
            ("job_id", &self.job_id),
            ("time", &self.time),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }

    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        match key {
            "partition" => Some(&mut self.partition),
            "account" => Some(&mut self.account),
            "reservation" => Some(&mut self.reservation),
            "job_id" => Some(&mut self.job_id),
            "time" => Some(&mut self.time),
            _ => None,
        }
    }
}

/// A value srun takes as one word: 1 to 256 of `[A-Za-z0-9._:+-]` (what
/// `render::slurm::check_slurm_word` accepts).
pub fn is_slurm_word(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '+'))
}

/// `ssh` | `slurm` | `auto` (surrounding blanks ignored) to a kind; `auto` is Slurm when
/// `slurm_job_id` is set and not blank. `None` for any other value.
pub fn parse_kind(value: &str, slurm_job_id: Option<&str>) -> Option<Kind> {
    match value.trim() {
        "ssh" => Some(Kind::Ssh),
        "slurm" => Some(Kind::Slurm),
        "auto" => Some(match slurm_job_id.filter(|j| !j.trim().is_empty()) {
            Some(_) => Kind::Slurm,
            None => Kind::Ssh,
        }),
        _ => None,
    }
}

/// Resolve `ssh` | `slurm` | `auto` (Slurm when the process runs inside an allocation, i.e.
/// `SLURM_JOB_ID` is set). `env_override` is `CVS_CORE_TRANSPORT`, which wins over
/// `configured` (a cluster file's value); an explicit argument is passed as `env_override`'s
/// stronger sibling by the caller. Pure: the caller reads the environment.
pub fn resolve_kind(
    configured: Option<&str>,
    env_override: Option<&str>,
    slurm_job_id: Option<&str>,
) -> Result<Kind> {
    let (value, source) = match env_override.filter(|v| !v.trim().is_empty()) {
        Some(v) => (v, TRANSPORT_ENV),
        None => (configured.unwrap_or("ssh"), "transport"),
    };
    parse_kind(value, slurm_job_id).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{source} must be 'ssh', 'slurm' or 'auto', got {:?}",
            value.trim()
        ))
    })
}

const ALLOWED: &str = "'ssh', 'slurm' or 'auto'";

/// The file's `transport` as written (`None` when absent or null); a bad one is an error at
/// `transport`.
pub(crate) fn configured_transport(
    doc: &Map<String, Value>,
    errors: &mut Vec<Issue>,
) -> Option<String> {
    match doc.get("transport") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if TRANSPORT_VALUES.contains(&s.as_str()) => Some(s.clone()),
        Some(other) => {
            errors.push(Issue::at(
                "transport",
                format!("must be {ALLOWED}, got {}", pyrepr::value_repr(other)),
            ));
            None
        }
    }
}

/// The engine the configuration runs on: `explicit` (a caller's argument) > the environment's
/// `CVS_CORE_TRANSPORT` > the file's `transport` > `ssh`; `auto` follows `SLURM_JOB_ID`. A bad
/// explicit or environment value is an error at `transport` naming its source; the next source
/// then decides (so the rest of the file is still checked for something).
pub(crate) fn effective_kind(
    explicit: Option<&str>,
    configured: Option<&str>,
    env: &dyn Env,
    errors: &mut Vec<Issue>,
) -> Kind {
    let job = env.var(SLURM_JOB_ID_ENV);
    let job = job.as_deref();
    if let Some(value) = explicit {
        match parse_kind(value, job) {
            Some(kind) => return kind,
            None => errors.push(Issue::at(
                "transport",
                format!(
                    "the transport argument must be {ALLOWED}, got {}",
                    pyrepr::str_repr(value)
                ),
            )),
        }
    }
    if let Some(value) = env.var(TRANSPORT_ENV).filter(|v| !v.trim().is_empty()) {
        match parse_kind(&value, job) {
            Some(kind) => return kind,
            None => errors.push(Issue::at(
                "transport",
                format!(
                    "{TRANSPORT_ENV} in the environment must be {ALLOWED}, got {}",
                    pyrepr::str_repr(&value)
                ),
            )),
        }
    }
    configured
        .and_then(|c| parse_kind(c, job))
        .unwrap_or(Kind::Ssh)
}

/// The file's `slurm` block: every value an srun word (`job_id` and `time` may be non-negative
/// integers), errors at `slurm.<key>`, unknown keys warnings. Absent or null: nothing set.
pub(crate) fn slurm_block(
    doc: &Map<String, Value>,
    errors: &mut Vec<Issue>,
    warnings: &mut Vec<Issue>,
) -> SlurmConfig {
    let mut out = SlurmConfig::default();
    let block = match doc.get("slurm") {
        None | Some(Value::Null) => return out,
        Some(Value::Object(m)) => m,
        Some(other) => {
            errors.push(Issue::at(
                "slurm",
                format!("expected an object, got {}", pyrepr::value_repr(other)),
            ));
            return out;
        }
    };
    for (key, value) in block {
        let path = format!("slurm.{key}");
        let numeric = matches!(key.as_str(), "job_id" | "time");
        let Some(slot) = out.slot(key) else {
            warnings.push(Issue::at(path, "unknown key, ignored (check the spelling)"));
            continue;
        };
        let text = match value {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Number(n) if numeric && n.is_u64() => n.to_string(),
            Value::Number(n) if numeric => {
                errors.push(Issue::at(
                    &path,
                    format!("expected a string or a non-negative integer, got {n}"),
                ));
                continue;
            }
            Value::Number(n) => {
                errors.push(Issue::at(
                    &path,
                    format!("expected a string, got {n}; write it quoted: \"{n}\""),
                ));
                continue;
            }
            other => {
                let expected = if numeric {
                    "a string or a non-negative integer"
                } else {
                    "a string"
                };
                errors.push(Issue::at(
                    &path,
                    format!("expected {expected}, got {}", pyrepr::value_repr(other)),
                ));
                continue;
            }
        };
        if is_slurm_word(&text) {
            *slot = Some(text);
        } else {
            errors.push(Issue::at(
                &path,
                format!(
                    "{} must be 1 to 256 letters, digits and - _ . : + only",
                    pyrepr::str_repr(&text)
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::tests::FakeEnv;
    use crate::config::{ClusterConfig, LoadOptions, load_config};

    const DEFAULT: &str = "/pkg/default_container_setup.sh";

    fn env_with(vars: &[(&str, &str)]) -> FakeEnv {
        let mut env = FakeEnv::default();
        for (k, v) in vars {
            env.vars.insert((*k).to_owned(), (*v).to_owned());
        }
        env
    }

    fn load_with(
        cluster: Value,
        env: &FakeEnv,
        explicit: Option<&str>,
    ) -> crate::error::Result<ClusterConfig> {
        let options = LoadOptions {
            transport: explicit.map(str::to_owned),
            ..LoadOptions::default()
        };
        load_config(&cluster, None, env, DEFAULT, &options)
    }

    fn load(cluster: Value) -> crate::error::Result<ClusterConfig> {
        load_with(cluster, &FakeEnv::default(), None)
    }

    fn base() -> Value {
        json!({
            "node_dict": {"n1": {}, "n2": {}},
            "username": "{user-id}",
            "priv_key_file": "/home/{user-id}/.ssh/id_rsa",
        })
    }

    /// `base()` without a key file: what a Slurm-only cluster file looks like.
    fn keyless() -> Value {
        let mut c = base();
        c.as_object_mut().unwrap().remove("priv_key_file");
        c
    }

    fn issues(err: &Error) -> Vec<(String, String)> {
        err.issues()
            .into_iter()
            .map(|i| (i.path, i.message))
            .collect()
    }

    #[test]
    fn auto_follows_the_allocation_and_the_environment_wins() {
        assert_eq!(resolve_kind(None, None, None).unwrap(), Kind::Ssh);
        assert_eq!(
            resolve_kind(Some("auto"), None, Some("42")).unwrap(),
            Kind::Slurm
        );
        assert_eq!(
            resolve_kind(Some("auto"), None, Some("")).unwrap(),
            Kind::Ssh
        );
        assert_eq!(
            resolve_kind(Some("ssh"), Some("slurm"), None).unwrap(),
            Kind::Slurm
        );
        assert_eq!(
            resolve_kind(Some("slurm"), Some(" "), None).unwrap(),
            Kind::Slurm
        );
        let e = resolve_kind(None, Some("k8s"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CVS_CORE_TRANSPORT must be"), "{e}");
        let e = resolve_kind(Some("pdsh"), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("transport must be"), "{e}");
    }

    #[test]
    fn slurm_words() {
        for ok in ["gpu", "a-b_c.d:e+f", "42", &"x".repeat(256)] {
            assert!(is_slurm_word(ok), "{ok}");
        }
        for bad in ["", "a b", "a,b", "a;b", "$(x)", "é", &"x".repeat(257)] {
            assert!(!is_slurm_word(bad), "{bad}");
        }
    }

    #[test]
    fn defaults_without_transport_or_slurm() {
        let c = load(base()).unwrap();
        assert_eq!(c.transport, None);
        assert_eq!(c.slurm, SlurmConfig::default());
        assert_eq!(c.effective_transport, Kind::Ssh);
        let mut nulls = base();
        nulls["transport"] = Value::Null;
        nulls["slurm"] = Value::Null;
        let c = load(nulls).unwrap();
        assert_eq!((c.transport, c.effective_transport), (None, Kind::Ssh));
    }

    #[test]
    fn transport_values_and_what_they_resolve_to() {
        let in_job = env_with(&[("SLURM_JOB_ID", "1234")]);
        let none = FakeEnv::default();
        for (value, env, want) in [
            ("ssh", &none, Kind::Ssh),
            ("slurm", &none, Kind::Slurm),
            ("auto", &none, Kind::Ssh),
            ("auto", &in_job, Kind::Slurm),
            ("ssh", &in_job, Kind::Ssh),
        ] {
            let mut c = base();
            c["transport"] = json!(value);
            let cfg = load_with(c, env, None).unwrap();
            assert_eq!(cfg.transport.as_deref(), Some(value));
            assert_eq!(cfg.effective_transport, want, "{value}");
        }
    }

    #[test]
    fn bad_transport_is_an_error_naming_the_allowed_values() {
        for (value, shown) in [
            (json!("pdsh"), "'pdsh'"),
            (json!("SSH"), "'SSH'"),
            (json!(" ssh"), "' ssh'"),
            (json!(""), "''"),
            (json!(1), "1"),
            (json!(true), "True"),
            (json!(["ssh"]), "['ssh']"),
        ] {
            let mut c = base();
            c["transport"] = value.clone();
            let err = load(c).unwrap_err();
            assert_eq!(
                issues(&err),
                [(
                    "transport".to_owned(),
                    format!("transport: must be 'ssh', 'slurm' or 'auto', got {shown}")
                )],
                "{value}"
            );
        }
    }

    #[test]
    fn precedence_explicit_then_environment_then_file() {
        let mut c = base();
        c["transport"] = json!("slurm");
        let none = FakeEnv::default();
        let env_ssh = env_with(&[(TRANSPORT_ENV, "ssh")]);
        let env_auto_in_job = env_with(&[(TRANSPORT_ENV, "auto"), ("SLURM_JOB_ID", "7")]);
        let blank = env_with(&[(TRANSPORT_ENV, "  ")]);
        for (env, explicit, want) in [
            (&none, None, Kind::Slurm),
            (&env_ssh, None, Kind::Ssh),
            (&env_auto_in_job, None, Kind::Slurm),
            (&blank, None, Kind::Slurm),
            (&env_ssh, Some("slurm"), Kind::Slurm),
            (&none, Some("ssh"), Kind::Ssh),
            (&env_auto_in_job, Some("auto"), Kind::Slurm),
            (&none, Some("auto"), Kind::Ssh),
        ] {
            let cfg = load_with(c.clone(), env, explicit).unwrap();
            assert_eq!(cfg.effective_transport, want, "{explicit:?} {:?}", env.vars);
            // The configured value is the file's, whoever overrides it.
            assert_eq!(cfg.transport.as_deref(), Some("slurm"));
        }
    }

    #[test]
    fn bad_environment_or_argument_is_an_error_at_transport() {
        let env = env_with(&[(TRANSPORT_ENV, "k8s")]);
        let err = load_with(base(), &env, None).unwrap_err();
        assert_eq!(
            issues(&err),
            [(
                "transport".to_owned(),
                "transport: CVS_CORE_TRANSPORT in the environment must be 'ssh', 'slurm' or \
                 'auto', got 'k8s'"
                    .to_owned()
            )]
        );
        // An explicit choice makes the environment irrelevant.
        assert!(load_with(base(), &env, Some("ssh")).is_ok());
        let err = load_with(base(), &FakeEnv::default(), Some("pdsh")).unwrap_err();
        assert_eq!(
            issues(&err),
            [(
                "transport".to_owned(),
                "transport: the transport argument must be 'ssh', 'slurm' or 'auto', got 'pdsh'"
                    .to_owned()
            )]
        );
    }

    #[test]
    fn slurm_block_values() {
        let mut c = base();
        c["slurm"] = json!({
            "partition": "gpu-mi300",
            "account": "proj_{user-id}",
            "reservation": "maint:2",
            "job_id": 123456,
            "time": "01:00:00",
            "_comment": "dropped",
        });
        let cfg = load(c).unwrap();
        assert_eq!(
            cfg.slurm,
            SlurmConfig {
                partition: Some("gpu-mi300".into()),
                account: Some("proj_alice".into()),
                reservation: Some("maint:2".into()),
                job_id: Some("123456".into()),
                time: Some("01:00:00".into()),
            }
        );
        assert_eq!(
            cfg.slurm.pairs(),
            [
                ("partition", "gpu-mi300"),
                ("account", "proj_alice"),
                ("reservation", "maint:2"),
                ("job_id", "123456"),
                ("time", "01:00:00"),
            ]
        );
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        let mut c = base();
        c["slurm"] = json!({"time": 30, "job_id": "77", "partition": null});
        let cfg = load(c).unwrap();
        assert_eq!(cfg.slurm.pairs(), [("job_id", "77"), ("time", "30")]);
    }

    #[test]
    fn slurm_must_be_an_object() {
        for value in [json!("gpu"), json!([]), json!(5), json!(true)] {
            let mut c = base();
            c["slurm"] = value.clone();
            let err = load(c).unwrap_err();
            let got = issues(&err);
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0].0, "slurm");
            assert!(
                got[0].1.starts_with("slurm: expected an object, got"),
                "{got:?}"
            );
        }
    }

    #[test]
    fn slurm_value_errors_name_the_key() {
        let mut c = base();
        c["slurm"] = json!({
            "partition": "gpu queue",
            "account": 5,
            "reservation": "",
            "job_id": -1,
            "time": 1.5,
        });
        let err = load(c).unwrap_err();
        assert_eq!(
            issues(&err),
            [
                (
                    "slurm.partition".to_owned(),
                    "slurm.partition: 'gpu queue' must be 1 to 256 letters, digits and - _ . : + \
                     only"
                        .to_owned()
                ),
                (
                    "slurm.account".to_owned(),
                    "slurm.account: expected a string, got 5; write it quoted: \"5\"".to_owned()
                ),
                (
                    "slurm.reservation".to_owned(),
                    "slurm.reservation: '' must be 1 to 256 letters, digits and - _ . : + only"
                        .to_owned()
                ),
                (
                    "slurm.job_id".to_owned(),
                    "slurm.job_id: expected a string or a non-negative integer, got -1".to_owned()
                ),
                (
                    "slurm.time".to_owned(),
                    "slurm.time: expected a string or a non-negative integer, got 1.5".to_owned()
                ),
            ]
        );
        for (key, value, shown) in [
            ("job_id", json!(true), "True"),
            ("job_id", json!({"a": 1}), "{'a': 1}"),
            ("partition", json!(["gpu"]), "['gpu']"),
            ("account", json!("a;rm -rf /"), "'a;rm -rf /'"),
            ("time", json!("1:00 "), "'1:00 '"),
        ] {
            let mut c = base();
            c["slurm"] = json!({ key: value });
            let err = load(c).unwrap_err();
            let got = issues(&err);
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0].0, format!("slurm.{key}"));
            assert!(got[0].1.contains(shown), "{got:?}");
        }
    }

    #[test]
    fn unknown_slurm_keys_are_warnings() {
        let mut c = base();
        c["slurm"] = json!({"partiton": "gpu", "srun": "/opt/srun", "partition": "gpu"});
        let cfg = load(c).unwrap();
        let got: Vec<(String, String)> = cfg
            .warnings
            .iter()
            .map(|i| (i.path.clone(), i.message.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "slurm.partiton".to_owned(),
                    "slurm.partiton: unknown key, ignored (check the spelling)".to_owned()
                ),
                (
                    "slurm.srun".to_owned(),
                    "slurm.srun: unknown key, ignored (check the spelling)".to_owned()
                ),
            ]
        );
        assert_eq!(cfg.slurm.pairs(), [("partition", "gpu")]);
    }

    #[test]
    fn slurm_changeme_is_refused_with_its_path() {
        let mut c = base();
        c["slurm"] = json!({"account": "<changeme>"});
        match load(c).unwrap_err() {
            Error::UnresolvedPlaceholder { path, .. } => assert_eq!(path, "slurm.account"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transport_errors_are_collected_with_the_others() {
        let mut c = base();
        c["transport"] = json!("pdsh");
        c["slurm"] = json!({"partition": "a b"});
        c["orchestrator"] = json!("k8s");
        c["username"] = json!(5);
        let err = load(c).unwrap_err();
        let paths: Vec<String> = err.issues().into_iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            ["username", "transport", "slurm.partition", "orchestrator"]
        );
    }

    #[test]
    fn ssh_requires_the_key_file_with_cvs_message() {
        let none = FakeEnv::default();
        let in_job_env_ssh = env_with(&[("SLURM_JOB_ID", "9"), (TRANSPORT_ENV, "ssh")]);
        for (transport, env, explicit) in [
            (None, &none, None),
            (Some("ssh"), &none, None),
            (Some("auto"), &none, None),
            (Some("slurm"), &in_job_env_ssh, None),
            (Some("slurm"), &none, Some("ssh")),
        ] {
            let mut c = keyless();
            if let Some(t) = transport {
                c["transport"] = json!(t);
            }
            let err = load_with(c, env, explicit).unwrap_err();
            assert_eq!(
                issues(&err),
                [(
                    "priv_key_file".to_owned(),
                    "priv_key_file must be provided in configuration".to_owned()
                )],
                "{transport:?} {explicit:?}"
            );
        }
    }

    #[test]
    fn slurm_needs_no_key_file_and_does_not_check_one() {
        let none = FakeEnv::default();
        let in_job = env_with(&[("SLURM_JOB_ID", "9")]);
        let env_slurm = env_with(&[(TRANSPORT_ENV, "slurm")]);
        for (transport, env, explicit) in [
            (Some("slurm"), &none, None),
            (Some("auto"), &in_job, None),
            (None, &env_slurm, None),
            (Some("ssh"), &env_slurm, None),
            (Some("ssh"), &none, Some("slurm")),
        ] {
            let mut c = keyless();
            if let Some(t) = transport {
                c["transport"] = json!(t);
            }
            let cfg = load_with(c.clone(), env, explicit).unwrap();
            assert_eq!(cfg.effective_transport, Kind::Slurm);
            assert_eq!(cfg.priv_key_file, "");
            // Named but absent (or unusable) on this machine: not checked either.
            c["priv_key_file"] = json!("/nowhere/id_rsa");
            let cfg = load_with(c.clone(), env, explicit).unwrap();
            assert_eq!(cfg.priv_key_file, "/nowhere/id_rsa");
            assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
            c["priv_key_file"] = Value::Null;
            assert_eq!(load_with(c, env, explicit).unwrap().priv_key_file, "");
        }
        // A key that is there but not a string is still a malformed file.
        let mut c = keyless();
        c["transport"] = json!("slurm");
        c["priv_key_file"] = json!(5);
        let err = load(c).unwrap_err();
        assert_eq!(issues(&err)[0].0, "priv_key_file");
    }

    #[test]
    fn testsuite_can_set_the_transport() {
        let ts = json!({"transport": "slurm", "slurm": {"partition": "p"}});
        let cfg = load_config(
            &keyless(),
            Some(&ts),
            &FakeEnv::default(),
            DEFAULT,
            &LoadOptions::default(),
        )
        .unwrap();
        assert_eq!(cfg.effective_transport, Kind::Slurm);
        assert_eq!(cfg.slurm.partition.as_deref(), Some("p"));
    }
}
