//! Configuration: the cluster file + testsuite file model, CVS's resolution rules
//! (comments, `{user-id}`, `<changeme>`, lifetime, setup_script) and validation with
//! path-qualified errors. Pure: the control host is reached only through [`Env`].

mod container;
pub mod paths;
mod placeholders;
pub mod pyrepr;

use serde_json::{Map, Value};

pub use container::{
    ContainerSpec, DEFAULT_CAPABILITIES, DEFAULT_DEVICES, DEFAULT_ENVIRONMENT, DEFAULT_GROUPS,
    DEFAULT_IPC, DEFAULT_NETWORK, DEFAULT_SECURITY_OPTS, DEFAULT_ULIMITS, Lifetime,
    MAX_INLINE_SETUP_SCRIPT_BYTES, RunArgs, VALID_CONTAINER_LIFETIMES, default_container_name,
    default_volumes, is_truthy, is_valid_container_name, resolve_lifetime, resolve_setup_script,
    sanitize_container_name, validate_container_name,
};
pub use placeholders::{
    CHANGEME_MARKER, USER_ID_PLACEHOLDER, placeholder_user, resolve_cluster_placeholders,
    strip_comment_keys,
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
    pub priv_key_file: String,
    pub password: Option<String>,
    pub head_node_dict: Map<String, Value>,
    /// `env_vars` of the cluster file, in file order.
    pub env_vars: Vec<(String, String)>,
    pub container: Option<ContainerSpec>,
    /// Non-fatal findings (unknown keys, fields CVS ignores).
    pub warnings: Vec<Issue>,
    /// The resolved document in the cluster file's own shape.
    pub resolved: Map<String, Value>,
}

/// Parse a JSON document (a cluster or testsuite file's text), naming the source on error.
pub fn parse_json_document(text: &str, source: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| {
        Error::config(Issue::verbatim(
            "",
            format!(
                "{source}: invalid JSON at line {}, column {}: {e}",
                e.line(),
                e.column()
            ),
        ))
    })
}

/// CVS's `resolve_cluster_config_placeholders` plus comment stripping: the cluster part with
/// `_` keys dropped, `{user-id}` substituted and no `<changeme>` left.
pub fn resolve_cluster_document(cluster: &Value, env: &dyn Env) -> Result<Value> {
    let stripped = strip_comment_keys(cluster);
    resolve_cluster_placeholders(&stripped, &placeholder_user(env))
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

fn hosts_of(node_dict: &Value, errors: &mut Vec<Issue>) -> Vec<String> {
    let errors_before = errors.len();
    let mut hosts: Vec<String> = Vec::new();
    let mut add = |path: String, host: &str, errors: &mut Vec<Issue>| {
        if !host_ok(host) {
            errors.push(Issue::at(
                path,
                format!(
                    "{} is not a usable host name or address",
                    pyrepr::str_repr(host)
                ),
            ));
        } else if hosts.iter().any(|h| h == host) {
            errors.push(Issue::at(
                path,
                format!("host {} is listed twice", pyrepr::str_repr(host)),
            ));
        } else {
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
/// report all issues at once. `default_setup_script` is the packaged script's absolute path.
pub fn load_config(
    cluster: &Value,
    testsuite: Option<&Value>,
    env: &dyn Env,
    default_setup_script: &str,
) -> Result<ClusterConfig> {
    let cluster = resolve_cluster_document(cluster, env)?;
    let mut doc = as_document(&cluster, "cluster")?.clone();
    if let Some(ts) = testsuite.filter(|v| !v.is_null()) {
        let ts = strip_comment_keys(ts);
        for (k, v) in as_document(&ts, "testsuite")? {
            doc.insert(k.clone(), v.clone());
        }
    }

    let mut errors: Vec<Issue> = Vec::new();
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
    let priv_key_file = required_string(&doc, "priv_key_file", &mut errors);
    let hosts = node_dict
        .as_ref()
        .map(|nd| hosts_of(nd, &mut errors))
        .unwrap_or_default();

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
    let lifetime = resolve_lifetime(map)?;
    let setup_script = resolve_setup_script(map, default_setup_script, env)?;
    let mut errors = Vec::new();
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
    use std::collections::{BTreeMap, BTreeSet};

    /// A control host described by tables.
    pub struct FakeEnv {
        pub vars: BTreeMap<String, String>,
        pub control_user: String,
        pub cwd: String,
        pub homes: BTreeMap<String, String>,
        pub files: BTreeSet<String>,
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
                .map(|s| (*s).to_owned())
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
            self.files.contains(path)
        }
    }

    const DEFAULT: &str = "/pkg/default_container_setup.sh";

    fn load(cluster: Value, ts: Option<Value>) -> Result<ClusterConfig> {
        load_config(&cluster, ts.as_ref(), &FakeEnv::default(), DEFAULT)
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
    fn legacy_keys_fail_before_other_checks() {
        let mut c = base();
        c["container"] = json!({"enabled": true, "name": "!!"});
        let err = load(c, None).unwrap_err();
        assert_eq!(err.issues().len(), 1);
        assert_eq!(err.issues()[0].path, "container.enabled");
    }

    #[test]
    fn bad_hosts_and_types_are_all_reported() {
        let c = json!({
            "node_dict": [{"mgmt_ip": "h1"}, {"mgmt_ip": "h1"}, {"ip": "x"}, {"mgmt_ip": "-oProxyCommand=x"}],
            "username": 5, "priv_key_file": "k", "orchestrator": "k8s",
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

    #[test]
    fn invalid_json_names_the_source() {
        let err = parse_json_document("{\"a\": ", "cluster.json").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cluster.json: invalid JSON at line 1"),
            "{err}"
        );
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
