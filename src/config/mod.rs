//! Configuration: the cluster file + testsuite file model, CVS's resolution rules
//! (comments, `{user-id}`, `<changeme>`, lifetime, setup_script) and validation with
//! path-qualified errors. Pure: the control host is reached only through [`Env`].

mod container;
mod files;
mod json;
pub mod paths;
mod persist;
mod placeholders;
pub mod pyrepr;
mod transport;

use serde_json::{Map, Value};

pub use container::{
    ContainerSpec, DEFAULT_CAPABILITIES, DEFAULT_DEVICES, DEFAULT_ENVIRONMENT, DEFAULT_GROUPS,
    DEFAULT_IPC, DEFAULT_NETWORK, DEFAULT_SECURITY_OPTS, DEFAULT_ULIMITS, Lifetime,
    MAX_CONTAINER_NAME_LEN, MAX_INLINE_SETUP_SCRIPT_BYTES, RunArgs, VALID_CONTAINER_LIFETIMES,
    default_container_name, default_volumes, is_truthy, is_valid_container_name, resolve_lifetime,
    resolve_setup_script, sanitize_container_name, validate_container_name,
};
pub use files::{
    FILE_HEAD_BYTES, FileInfo, FileKind, MissingKey, check_key_file, check_setup_script,
    is_private_key_header,
};
pub use json::{MAX_NESTING_DEPTH, ParsedDocument, parse_json_document};
pub use persist::{
    CONTROL_DIR_ENV, DEFAULT_PERSIST, MAX_PERSIST, PERSIST_ENV, parse_persist, persist_value,
    resolve_persist, seconds as persist_seconds,
};
pub use placeholders::{
    CHANGEME_MARKER, USER_ID_PLACEHOLDER, placeholder_user, resolve_cluster_placeholders,
    resolve_cluster_placeholders_checked, strip_comment_keys,
};
pub use transport::{
    Kind, SLURM_JOB_ID_ENV, SLURM_KEYS, SlurmConfig, TRANSPORT_ENV, TRANSPORT_VALUES,
    is_slurm_word, parse_kind, resolve_kind,
};

use crate::error::{Error, Issue, Result};

/// What resolution needs to know about the control host. The Python binding answers with
/// Python's own `os`/`getpass` so results match CVS exactly; tests answer with a table.
pub trait Env {
    /// An environment variable of the control process.
    fn var(&self, name: &str) -> Option<String>;
    /// `getpass.getuser()` (used for CVS's default container name and volumes).
    fn control_user(&self) -> String;
    /// The working directory relative paths resolve against.
    fn cwd(&self) -> String;
    /// The home directory of the current user (`None`) or of a named user, as `expanduser`.
    fn home_of(&self, user: Option<&str>) -> Option<String>;
    /// Whether `path` names a regular file (after following links).
    fn is_file(&self, path: &str) -> bool;
    /// Kind, permissions, size and first bytes of `path` (after following links), for the
    /// checks of the files a configuration names.
    fn file_info(&self, path: &str) -> FileInfo;
}

/// How strict [`load_config`] is about the control host, and what reading the files found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// What a missing `priv_key_file` is: an error (before connecting), or a warning when the
    /// file is checked away from the control host. A key file that exists is checked either
    /// way.
    pub missing_key: MissingKey,
    /// Issues of the files' text (keys given twice) that the parsed values cannot show,
    /// reported with every other issue.
    pub text_issues: Vec<Issue>,
    /// The caller's transport (`ssh` | `slurm` | `auto`), stronger than `CVS_CORE_TRANSPORT`
    /// and the file's `transport`.
    pub transport: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            missing_key: MissingKey::Error,
            text_issues: Vec::new(),
            transport: None,
        }
    }
}

/// The resolved configuration: cluster file merged with the testsuite file.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// `baremetal` or `container` (lower-cased).
    pub orchestrator: String,
    /// `node_dict` keys in file order, or the `mgmt_ip` of each entry of a list.
    pub hosts: Vec<String>,
    /// The first host (CVS's head node).
    pub head_node: String,
    pub username: String,
    /// `""` when absent (allowed only when the effective transport is Slurm).
    pub priv_key_file: String,
    pub password: Option<String>,
    pub head_node_dict: Map<String, Value>,
    /// `env_vars` of the cluster file, in file order.
    pub env_vars: Vec<(String, String)>,
    pub container: Option<ContainerSpec>,
    /// The file's `transport` as written (`ssh`, `slurm` or `auto`), `None` when absent.
    pub transport: Option<String>,
    /// The file's `slurm` block.
    pub slurm: SlurmConfig,
    /// The file's `persist`: how long each host's SSH master outlives the process (`None`:
    /// masters end with it). `CVS_CORE_PERSIST` and an explicit argument win over it.
    pub persist: Option<std::time::Duration>,
    /// The engine this configuration runs on: the caller's choice, else `CVS_CORE_TRANSPORT`,
    /// else `transport`, else SSH (`auto` resolved against `SLURM_JOB_ID`).
    pub effective_transport: Kind,
    /// Non-fatal findings (unknown keys, fields CVS ignores).
    pub warnings: Vec<Issue>,
    /// The resolved document in the cluster file's own shape.
    pub resolved: Map<String, Value>,
}

/// CVS's `resolve_cluster_config_placeholders` plus comment stripping: the cluster part with
/// `_` keys dropped, `{user-id}` substituted and no `<changeme>` left; also the keys that
/// substitution made equal.
pub fn resolve_cluster_document(cluster: &Value, env: &dyn Env) -> Result<(Value, Vec<Issue>)> {
    let stripped = strip_comment_keys(cluster);
    resolve_cluster_placeholders_checked(&stripped, &placeholder_user(env))
}

fn as_document<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| {
        Error::config(Issue::verbatim(
            "",
            format!(
                "the {what} configuration must be a JSON object, got {}",
                pyrepr::value_repr(v)
            ),
        ))
    })
}

fn host_ok(h: &str) -> bool {
    !h.is_empty() && !h.starts_with('-') && !h.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The form two spellings of one host share: DNS names ignore case and a trailing dot, and an
/// IPv6 address has many spellings (`::1`, `0:0::1`).
fn host_identity(host: &str) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.trim_end_matches('.').to_ascii_lowercase(),
    }
}

fn hosts_of(node_dict: &Value, errors: &mut Vec<Issue>) -> Vec<String> {
    let errors_before = errors.len();
    let mut hosts: Vec<String> = Vec::new();
    // identity -> where the host was first listed (clusters have thousands of hosts)
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let mut add = |path: String, host: &str, errors: &mut Vec<Issue>| {
        if !host_ok(host) {
            errors.push(Issue::at(
                path,
                format!(
                    "{} is not a usable host name or address",
                    pyrepr::str_repr(host)
                ),
            ));
            return;
        }
        if let Some(first) = seen.get(&host_identity(host)) {
            errors.push(Issue::at(
                path,
                format!(
                    "host {} is listed twice (first at {first}); list each host once",
                    pyrepr::str_repr(host)
                ),
            ));
        } else {
            seen.insert(host_identity(host), path);
            hosts.push(host.to_owned());
        }
    };
    match node_dict {
        Value::Object(map) => {
            for key in map.keys() {
                add(format!("node_dict.{key}"), key, errors);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                match item.get("mgmt_ip") {
                    Some(Value::String(ip)) => add(format!("node_dict[{i}].mgmt_ip"), ip, errors),
                    _ => errors.push(Issue::at(
                        format!("node_dict[{i}].mgmt_ip"),
                        "each node_dict entry of a list needs a string mgmt_ip",
                    )),
                }
            }
        }
        other => errors.push(Issue::at(
            "node_dict",
            format!(
                "expected an object of hosts or a list of nodes, got {}",
                pyrepr::value_repr(other)
            ),
        )),
    }
    if hosts.is_empty() && errors.len() == errors_before {
        errors.push(Issue::at("node_dict", "lists no hosts"));
    }
    hosts
}

fn required_string(doc: &Map<String, Value>, key: &str, errors: &mut Vec<Issue>) -> Option<String> {
    match doc.get(key) {
        None | Some(Value::Null) => {
            errors.push(Issue::verbatim(
                key,
                format!("{key} must be provided in configuration"),
            ));
            None
        }
        Some(Value::String(s)) if !s.is_empty() && !s.contains('\0') => Some(s.clone()),
        Some(other) => {
            errors.push(Issue::at(
                key,
                format!(
                    "expected a non-empty string, got {}",
                    pyrepr::value_repr(other)
                ),
            ));
            None
        }
    }
}

/// `OrchestratorConfig.from_configs` done right: strip comments, resolve placeholders on the
/// cluster part only, shallow-merge the testsuite part (it wins), then validate everything and
/// report all issues at once. `default_setup_script` is the packaged script's absolute path;
/// `options` says what a missing key file is and carries the issues of the files' text.
pub fn load_config(
    cluster: &Value,
    testsuite: Option<&Value>,
    env: &dyn Env,
    default_setup_script: &str,
    options: &LoadOptions,
) -> Result<ClusterConfig> {
    let (cluster, collisions) = resolve_cluster_document(cluster, env)?;
    let mut doc = as_document(&cluster, "cluster")?.clone();
    if let Some(ts) = testsuite.filter(|v| !v.is_null()) {
        let ts = strip_comment_keys(ts);
        for (k, v) in as_document(&ts, "testsuite")? {
            doc.insert(k.clone(), v.clone());
        }
    }

    let mut errors: Vec<Issue> = options.text_issues.clone();
    errors.extend(collisions);
    let mut warnings: Vec<Issue> = Vec::new();

    // CVS's required keys first, with its messages, in its order.
    let node_dict = match doc.get("node_dict") {
        None | Some(Value::Null) => {
            errors.push(Issue::verbatim(
                "node_dict",
                "node_dict must be provided in configuration",
            ));
            None
        }
        Some(v) => Some(v.clone()),
    };
    let username = required_string(&doc, "username", &mut errors);
    // Which engine decides whether an SSH key is needed; its own errors are reported after
    // CVS's required keys.
    let mut transport_errors = Vec::new();
    let transport = transport::configured_transport(&doc, &mut transport_errors);
    let effective_transport = transport::effective_kind(
        options.transport.as_deref(),
        transport.as_deref(),
        env,
        &mut transport_errors,
    );
    let priv_key_file = match (effective_transport, doc.get("priv_key_file")) {
        // A Slurm-only cluster has no SSH keys: not required, not checked.
        (Kind::Slurm, None | Some(Value::Null)) => Some(String::new()),
        (Kind::Slurm, _) => required_string(&doc, "priv_key_file", &mut errors),
        (Kind::Ssh, _) => required_string(&doc, "priv_key_file", &mut errors),
    };
    let hosts = node_dict
        .as_ref()
        .map(|nd| hosts_of(nd, &mut errors))
        .unwrap_or_default();
    if let Some(key) = &priv_key_file
        && effective_transport == Kind::Ssh
    {
        check_key_file(key, env, options.missing_key, &mut errors, &mut warnings);
    }
    errors.extend(transport_errors);
    let slurm = transport::slurm_block(&doc, &mut errors, &mut warnings);
    let persist = match doc.get("persist") {
        None => None,
        Some(v) => persist::persist_value(v).unwrap_or_else(|e| {
            errors.push(Issue::at("persist", e));
            None
        }),
    };

    let orchestrator = match doc.get("orchestrator") {
        None => "baremetal".to_owned(),
        Some(Value::String(s))
            if ["baremetal", "container"].contains(&s.to_lowercase().as_str()) =>
        {
            s.to_lowercase()
        }
        Some(other) => {
            errors.push(Issue::at(
                "orchestrator",
                format!(
                    "Unsupported orchestrator type: {} (expected 'baremetal' or 'container')",
                    pyrepr::value_repr(other)
                ),
            ));
            String::new()
        }
    };

    let password = match doc.get("password") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(Issue::at(
                "password",
                format!("expected a string, got {}", pyrepr::value_repr(other)),
            ));
            None
        }
    };
    let head_node_dict = match doc.get("head_node_dict") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            errors.push(Issue::at(
                "head_node_dict",
                format!("expected an object, got {}", pyrepr::value_repr(other)),
            ));
            Map::new()
        }
    };
    let env_vars = match doc.get("env_vars") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(m)) => m
            .iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k.clone(), s.clone())),
                other => {
                    errors.push(Issue::at(
                        format!("env_vars.{k}"),
                        format!("expected a string, got {}", pyrepr::value_repr(other)),
                    ));
                    None
                }
            })
            .collect(),
        Some(other) => {
            errors.push(Issue::at(
                "env_vars",
                format!("expected an object, got {}", pyrepr::value_repr(other)),
            ));
            Vec::new()
        }
    };

    let container_value = doc.get("container").cloned();
    let container = match container_value.as_ref() {
        Some(v @ Value::Object(block)) if !block.is_empty() => {
            let require_image = orchestrator == "container";
            match container_spec_from_block(v, env, default_setup_script, require_image) {
                Ok((spec, found)) => {
                    let mut filled = block.clone();
                    filled.insert("lifetime".into(), spec.lifetime.as_str().into());
                    filled.insert("setup_script".into(), spec.setup_script.clone().into());
                    doc.insert("container".into(), Value::Object(filled));
                    warnings.extend(found);
                    Some(spec)
                }
                Err(Error::Config(issues)) => {
                    errors.extend(issues);
                    None
                }
                Err(other) => return Err(other),
            }
        }
        Some(v) if is_truthy(v) => {
            errors.push(Issue::at(
                "container",
                format!("expected an object, got {}", pyrepr::value_repr(v)),
            ));
            None
        }
        _ => {
            if orchestrator == "container" {
                errors.push(Issue::verbatim(
                    "container",
                    "ContainerOrchestrator requires 'container' config in OrchestratorConfig",
                ));
            }
            None
        }
    };

    if !errors.is_empty() {
        return Err(Error::Config(errors));
    }
    let (Some(username), Some(priv_key_file)) = (username, priv_key_file) else {
        unreachable!("missing required keys are reported as errors above");
    };
    Ok(ClusterConfig {
        orchestrator,
        head_node: hosts[0].clone(),
        hosts,
        username,
        priv_key_file,
        password,
        head_node_dict,
        env_vars,
        container,
        transport,
        slurm,
        persist,
        effective_transport,
        warnings,
        resolved: doc,
    })
}

/// Resolve and validate one `container` block on its own (the dict CVS's orchestrator holds as
/// `container_config`): lifetime, setup_script, types, merged run arguments. Returns the spec
/// and the non-fatal warnings.
pub fn container_spec_from_block(
    block: &Value,
    env: &dyn Env,
    default_setup_script: &str,
    require_image: bool,
) -> Result<(ContainerSpec, Vec<Issue>)> {
    let block = strip_comment_keys(block);
    let Value::Object(map) = &block else {
        return Err(Error::config(Issue::at(
            "container",
            format!("expected an object, got {}", pyrepr::value_repr(&block)),
        )));
    };
    // Every problem of the block at once: checking goes on past a bad lifetime or script.
    let (lifetime, mut errors) = container::lifetime_issues(map);
    let setup_script = check_setup_script(map, default_setup_script, env).unwrap_or_else(|e| {
        errors.push(e);
        String::new()
    });
    let mut warnings = Vec::new();
    let spec = container::build_spec(
        map,
        lifetime,
        setup_script,
        env,
        require_image,
        &mut errors,
        &mut warnings,
    );
    match spec {
        Some(spec) if errors.is_empty() => Ok((spec, warnings)),
        _ => Err(Error::Config(errors)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    /// A control host described by tables.
    pub struct FakeEnv {
        pub vars: BTreeMap<String, String>,
        pub control_user: String,
        pub cwd: String,
        pub homes: BTreeMap<String, String>,
        pub files: BTreeMap<String, FileInfo>,
    }

    /// A regular file with these permission bits and this content.
    pub fn regular(mode: u32, content: &[u8]) -> FileInfo {
        FileInfo {
            kind: FileKind::Regular,
            mode,
            size: content.len() as u64,
            head: content[..content.len().min(FILE_HEAD_BYTES)].to_vec(),
            error: None,
        }
    }

    /// A private key OpenSSH accepts.
    pub fn key_file() -> FileInfo {
        regular(
            0o600,
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n-----END OPENSSH PRIVATE KEY-----\n",
        )
    }

    impl Default for FakeEnv {
        fn default() -> Self {
            FakeEnv {
                vars: [("USER".to_owned(), "alice".to_owned())].into(),
                control_user: "alice".into(),
                cwd: "/work/dir".into(),
                homes: [
                    (String::new(), "/home/alice".to_owned()),
                    ("bob".to_owned(), "/srv/bob/".to_owned()),
                ]
                .into(),
                files: [
                    "/pkg/default_container_setup.sh",
                    "/work/dir/setup.sh",
                    "/home/alice/s.sh",
                ]
                .iter()
                .map(|s| ((*s).to_owned(), regular(0o755, b"#!/bin/sh\ntrue\n")))
                .chain([("/home/alice/.ssh/id_rsa".to_owned(), key_file())])
                .collect(),
            }
        }
    }

    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.get(name).cloned()
        }
        fn control_user(&self) -> String {
            self.control_user.clone()
        }
        fn cwd(&self) -> String {
            self.cwd.clone()
        }
        fn home_of(&self, user: Option<&str>) -> Option<String> {
            self.homes.get(user.unwrap_or("")).cloned()
        }
        fn is_file(&self, path: &str) -> bool {
            self.file_info(path).kind == FileKind::Regular
        }
        fn file_info(&self, path: &str) -> FileInfo {
            self.files.get(path).cloned().unwrap_or_default()
        }
    }

    const DEFAULT: &str = "/pkg/default_container_setup.sh";

    fn load(cluster: Value, ts: Option<Value>) -> Result<ClusterConfig> {
        load_config(
            &cluster,
            ts.as_ref(),
            &FakeEnv::default(),
            DEFAULT,
            &LoadOptions::default(),
        )
    }

    fn paths_of(err: &Error) -> Vec<String> {
        err.issues().into_iter().map(|i| i.path).collect()
    }

    fn base() -> Value {
        json!({
            "_comment": "sample <changeme> text in a comment is fine",
            "node_dict": {"10.0.0.1": {"bmc_ip": "x"}, "10.0.0.2": {}},
            "username": "{user-id}",
            "priv_key_file": "/home/{user-id}/.ssh/id_rsa",
        })
    }

    #[test]
    fn baremetal_defaults() {
        let c = load(base(), None).unwrap();
        assert_eq!(c.orchestrator, "baremetal");
        assert_eq!(c.hosts, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(c.head_node, "10.0.0.1");
        assert_eq!(c.username, "alice");
        assert_eq!(c.priv_key_file, "/home/alice/.ssh/id_rsa");
        assert_eq!(c.container, None);
        assert!(!c.resolved.contains_key("_comment"));
    }

    #[test]
    fn list_node_dict_uses_mgmt_ip() {
        let mut c = base();
        c["node_dict"] = json!([{"mgmt_ip": "h2"}, {"mgmt_ip": "h1"}]);
        assert_eq!(load(c, None).unwrap().hosts, ["h2", "h1"]);
    }

    #[test]
    fn missing_required_keys_use_cvs_messages() {
        let err = load(json!({"username": null}), None).unwrap_err();
        let msgs: Vec<String> = err.issues().into_iter().map(|i| i.message).collect();
        assert_eq!(
            msgs,
            [
                "node_dict must be provided in configuration",
                "username must be provided in configuration",
                "priv_key_file must be provided in configuration",
            ]
        );
    }

    #[test]
    fn testsuite_merge_is_shallow_and_not_placeholder_resolved() {
        let mut cluster = base();
        cluster["container"] = json!({"image": "a", "name": "keep_me"});
        let ts = json!({"orchestrator": "Container", "container": {"image": "{user-id}/b"},
                        "_note": 1});
        let c = load(cluster, Some(ts)).unwrap();
        assert_eq!(c.orchestrator, "container");
        let spec = c.container.unwrap();
        assert_eq!(spec.image.as_deref(), Some("{user-id}/b"));
        // Shallow merge: the testsuite block replaced the whole cluster block, name included.
        assert_eq!(spec.name.as_deref(), Some("alice__user_id__b"));
        assert!(!c.resolved.contains_key("_note"));
    }

    #[test]
    fn testsuite_changeme_is_not_guarded() {
        let ts = json!({"extra": "<changeme>"});
        assert!(load(base(), Some(ts)).is_ok());
    }

    #[test]
    fn container_block_is_filled_in_resolved() {
        let mut c = base();
        c["orchestrator"] = json!("container");
        c["container"] = json!({"image": "rocm/cvs:latest", "_c": "x"});
        let cfg = load(c, None).unwrap();
        assert_eq!(
            Value::Object(cfg.resolved["container"].as_object().unwrap().clone()),
            json!({"image": "rocm/cvs:latest", "lifetime": "per_run", "setup_script": DEFAULT})
        );
        assert_eq!(cfg.container.unwrap().lifetime, Lifetime::PerRun);
    }

    #[test]
    fn container_orchestrator_needs_a_block_and_an_image() {
        let mut c = base();
        c["orchestrator"] = json!("container");
        let err = load(c.clone(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ContainerOrchestrator requires 'container' config in OrchestratorConfig"
        );
        c["container"] = json!({"lifetime": "persistent"});
        let err = load(c, None).unwrap_err();
        assert_eq!(err.issues()[0].path, "container.image");
    }

    #[test]
    fn legacy_keys_come_first_and_the_rest_is_still_checked() {
        let mut c = base();
        c["container"] = json!({"enabled": true, "launch": false, "name": "!!"});
        let err = load(c, None).unwrap_err();
        assert_eq!(
            paths_of(&err),
            ["container.enabled", "container.launch", "container.name"]
        );
        assert!(
            err.issues()[0]
                .message
                .starts_with("container.enabled is removed")
        );
    }

    #[test]
    fn a_bad_lifetime_does_not_hide_other_errors() {
        let mut c = base();
        c["container"] = json!({"lifetime": "forever", "image": "i", "name": "-x",
                                "setup_script": "",
                                "runtime": {"args": {"ulimit": [5]}}});
        let err = load(c, None).unwrap_err();
        assert_eq!(
            paths_of(&err),
            [
                "container.lifetime",
                "container.setup_script",
                "container.name",
                "container.runtime.args.ulimit[0]",
            ]
        );
    }

    #[test]
    fn duplicate_hosts_table() {
        let cases: Vec<(Value, &[&str])> = vec![
            (json!({"h1": {}, "H1": {}}), &["node_dict.H1"]),
            (
                json!({"node.example": {}, "NODE.example.": {}}),
                &["node_dict.NODE.example."],
            ),
            (
                json!({"::1": {}, "0:0::1": {}, "10.0.0.1": {}}),
                &["node_dict.0:0::1"],
            ),
            (
                json!({"n-{user-id}": {}, "n-alice": {}}),
                &["node_dict.n-alice"],
            ),
            (
                json!([{"mgmt_ip": "a"}, {"mgmt_ip": "b"}, {"mgmt_ip": "a"}, {"mgmt_ip": "A"}]),
                &["node_dict[2].mgmt_ip", "node_dict[3].mgmt_ip"],
            ),
            (
                json!([{"mgmt_ip": "{user-id}"}, {"mgmt_ip": "alice"}]),
                &["node_dict[1].mgmt_ip"],
            ),
            (json!({"a": {}, "b": {}}), &[]),
        ];
        for (node_dict, want) in cases {
            let mut c = base();
            c["node_dict"] = node_dict.clone();
            let got = load(c, None).map_or_else(|e| paths_of(&e), |_| Vec::new());
            assert_eq!(got, want, "{node_dict}");
        }
        let mut c = base();
        c["node_dict"] = json!([{"mgmt_ip": "a"}, {"mgmt_ip": "A"}]);
        assert_eq!(
            load(c, None).unwrap_err().to_string(),
            "node_dict[1].mgmt_ip: host 'A' is listed twice (first at node_dict[0].mgmt_ip); \
             list each host once"
        );
    }

    #[test]
    fn text_issues_are_reported_with_the_rest() {
        let doc = parse_json_document(
            r#"{"node_dict": {"h1": {}, "h1": {}}, "username": "u", "priv_key_file": 5}"#,
            "c.json",
        )
        .unwrap();
        let options = LoadOptions {
            text_issues: doc.issues,
            ..LoadOptions::default()
        };
        let err =
            load_config(&doc.value, None, &FakeEnv::default(), DEFAULT, &options).unwrap_err();
        assert_eq!(paths_of(&err), ["node_dict.h1", "priv_key_file"]);
    }

    #[test]
    fn key_file_is_checked_after_substitution_and_expansion() {
        let mut env = FakeEnv::default();
        env.files
            .insert("/home/alice/.ssh/open".into(), regular(0o640, b"x"));
        let with_key = |key: &str, missing: MissingKey| {
            let mut c = base();
            c["priv_key_file"] = json!(key);
            let options = LoadOptions {
                missing_key: missing,
                ..LoadOptions::default()
            };
            load_config(&c, None, &env, DEFAULT, &options)
        };
        assert!(with_key("/home/{user-id}/.ssh/id_rsa", MissingKey::Error).is_ok());
        assert!(with_key("~/.ssh/id_rsa", MissingKey::Error).is_ok());
        // Stored as written: ssh expands `~` itself.
        let cfg = with_key("~/.ssh/id_rsa", MissingKey::Error).unwrap();
        assert_eq!(cfg.priv_key_file, "~/.ssh/id_rsa");
        let err = with_key("~/.ssh/absent", MissingKey::Error).unwrap_err();
        assert_eq!(paths_of(&err), ["priv_key_file"]);
        assert!(
            err.to_string()
                .contains("'/home/alice/.ssh/absent') does not exist")
        );
        let cfg = with_key("~/.ssh/absent", MissingKey::Warn).unwrap();
        assert_eq!(cfg.warnings[0].path, "priv_key_file");
        // A file that exists is checked whatever a missing one would be.
        let err = with_key("~/{user-id}/../.ssh/open", MissingKey::Warn).unwrap_err();
        let messages: Vec<String> = err.issues().into_iter().map(|i| i.message).collect();
        assert!(
            messages[0].contains("chmod 600 '/home/alice/.ssh/open'"),
            "{messages:?}"
        );
        assert!(messages[1].contains("is not a private key"), "{messages:?}");
    }

    #[test]
    fn container_name_length_limit() {
        let mut c = base();
        c["container"] = json!({"image": "i", "name": "a".repeat(300)});
        let err = load(c.clone(), None).unwrap_err();
        assert_eq!(paths_of(&err), ["container.name"]);
        assert!(
            err.to_string()
                .contains("is 300 characters long; the limit is 128"),
            "{err}"
        );
        c["container"]["name"] = json!("a".repeat(MAX_CONTAINER_NAME_LEN));
        assert!(load(c.clone(), None).is_ok());
        // A derived name past the limit asks for an explicit one.
        c["container"] = json!({"image": format!("registry.example/{}", "x".repeat(120))});
        let err = load(c, None).unwrap_err();
        assert!(err.to_string().contains("set container.name"), "{err}");
    }

    #[test]
    fn env_values_must_be_strings() {
        for (value, want) in [
            (
                json!(8),
                "container.env.GPUS: expected a string, got 8; write it quoted: \"8\"",
            ),
            (
                json!(true),
                "container.env.GPUS: expected a string, got True",
            ),
            (
                json!(null),
                "container.env.GPUS: expected a string, got None",
            ),
            (
                json!({"a": 1}),
                "container.env.GPUS: expected a string, got {'a': 1}",
            ),
            (
                json!(1.5),
                "container.env.GPUS: expected a string, got 1.5; write it quoted: \"1.5\"",
            ),
        ] {
            let mut c = base();
            c["container"] = json!({"image": "i", "env": {"GPUS": value}});
            assert_eq!(load(c, None).unwrap_err().to_string(), want);
        }
        let mut c = base();
        c["env_vars"] = json!({"A": 1, "B": "ok", "C": false});
        assert_eq!(
            paths_of(&load(c, None).unwrap_err()),
            ["env_vars.A", "env_vars.C"]
        );
    }

    #[test]
    fn bad_hosts_and_types_are_all_reported() {
        let c = json!({
            "node_dict": [{"mgmt_ip": "h1"}, {"mgmt_ip": "h1"}, {"ip": "x"}, {"mgmt_ip": "-oProxyCommand=x"}],
            "username": 5, "priv_key_file": "~/.ssh/id_rsa", "orchestrator": "k8s",
            "env_vars": {"A": 1}, "head_node_dict": []
        });
        let err = load(c, None).unwrap_err();
        let paths: Vec<String> = err.issues().into_iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            [
                "username",
                "node_dict[1].mgmt_ip",
                "node_dict[2].mgmt_ip",
                "node_dict[3].mgmt_ip",
                "orchestrator",
                "head_node_dict",
                "env_vars.A",
            ]
        );
    }

    #[test]
    fn changeme_anywhere_in_cluster_part_is_refused() {
        let mut c = base();
        c["container"] = json!({"runtime": {"args": {"volumes": ["/x:/y", "<ChangeMe>"]}}});
        match load(c, None).unwrap_err() {
            Error::UnresolvedPlaceholder { path, .. } => {
                assert_eq!(path, "container.runtime.args.volumes[1]")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_object_documents_are_errors() {
        assert!(load(json!([1]), None).is_err());
        assert!(load(base(), Some(json!("x"))).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// load_config never panics, whatever JSON it is given (as cluster or testsuite part).
        #[test]
        fn load_config_never_panics(cluster in arb_json(), ts in arb_json()) {
            let _ = load(cluster.clone(), None);
            let _ = load(base(), Some(ts.clone()));
            let mut with_container = base();
            with_container["container"] = ts;
            with_container["orchestrator"] = json!("container");
            let _ = load(with_container, None);
        }
    }

    /// Arbitrary JSON biased toward the keys the loader looks at, so nested branches run.
    pub fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("node_dict".to_owned()),
            Just("username".to_owned()),
            Just("priv_key_file".to_owned()),
            Just("container".to_owned()),
            Just("orchestrator".to_owned()),
            Just("image".to_owned()),
            Just("name".to_owned()),
            Just("lifetime".to_owned()),
            Just("setup_script".to_owned()),
            Just("runtime".to_owned()),
            Just("args".to_owned()),
            Just("env".to_owned()),
            Just("mgmt_ip".to_owned()),
            Just("volumes".to_owned()),
            Just("defaults".to_owned()),
            Just("transport".to_owned()),
            Just("slurm".to_owned()),
            Just("job_id".to_owned()),
            Just("_c".to_owned()),
            "\\PC{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            prop_oneof![
                Just("persistent".to_owned()),
                Just("slurm".to_owned()),
                Just("{user-id}".to_owned()),
                Just("<changeme>".to_owned()),
                "\\PC{0,12}",
                ".{0,6}"
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }
}
