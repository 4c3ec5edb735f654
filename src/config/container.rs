//! The `container` block: lifetime and setup_script resolution (CVS's exact rules and messages),
//! type validation with path-qualified errors, and the merged run arguments.

use serde::Serialize;
use serde_json::{Map, Value};

use super::pyrepr::{str_repr, tuple_repr, value_repr};
use super::{Env, paths};
use crate::error::{Error, Issue, Result};

/// Accepted `container.lifetime` values, in CVS's order (its error message prints this tuple).
pub const VALID_CONTAINER_LIFETIMES: [&str; 3] = ["no_launch", "per_run", "persistent"];

/// Largest setup script CVS delivers inline (base64 on the command line); exactly this many
/// bytes is still allowed.
pub const MAX_INLINE_SETUP_SCRIPT_BYTES: usize = 16384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifetime {
    /// The containers exist already; only verify they run.
    NoLaunch,
    /// Launch fresh containers for this run and remove them after.
    PerRun,
    /// Reuse the running containers across runs; never destroy their overlay implicitly.
    Persistent,
}

impl Lifetime {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifetime::NoLaunch => "no_launch",
            Lifetime::PerRun => "per_run",
            Lifetime::Persistent => "persistent",
        }
    }

    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "no_launch" => Ok(Lifetime::NoLaunch),
            "per_run" => Ok(Lifetime::PerRun),
            "persistent" => Ok(Lifetime::Persistent),
            other => Err(Error::config(lifetime_issue(&Value::String(other.into())))),
        }
    }
}

fn lifetime_issue(value: &Value) -> Issue {
    Issue::verbatim(
        "container.lifetime",
        format!(
            "container.lifetime must be one of {}, got {}",
            tuple_repr(&VALID_CONTAINER_LIFETIMES),
            value_repr(value)
        ),
    )
}

/// Python truthiness of a JSON value (CVS tests `if not container` and `if setup_script`).
pub fn is_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// CVS's `_resolve_container_lifetime`: the legacy keys are hard errors (checked first, even
/// when `lifetime` is set), an invalid value is an error, a missing one becomes `per_run`.
/// Returns the lifetime the block resolves to; the caller stores it when the key was absent.
pub fn resolve_lifetime(container: &Map<String, Value>) -> Result<Lifetime> {
    let (lifetime, mut issues) = lifetime_issues(container);
    if issues.is_empty() {
        Ok(lifetime)
    } else {
        Err(Error::config(issues.swap_remove(0)))
    }
}

/// Every lifetime problem of a block, in CVS's order and words (CVS stops at the first), and
/// the lifetime to go on checking with (`per_run` when there is none).
pub(crate) fn lifetime_issues(container: &Map<String, Value>) -> (Lifetime, Vec<Issue>) {
    let mut issues = Vec::new();
    if container.contains_key("enabled") {
        issues.push(Issue::verbatim(
            "container.enabled",
            "container.enabled is removed; delete the field and set container.lifetime to one \
             of 'no_launch', 'per_run', 'persistent'",
        ));
    }
    if container.contains_key("launch") {
        issues.push(Issue::verbatim(
            "container.launch",
            "container.launch is removed; delete the field and set container.lifetime \
             ('launch: true' -> 'per_run', 'launch: false' -> 'no_launch')",
        ));
    }
    let lifetime = match container.get("lifetime") {
        None => Lifetime::PerRun,
        Some(Value::String(s)) if VALID_CONTAINER_LIFETIMES.contains(&s.as_str()) => {
            Lifetime::parse(s).unwrap_or(Lifetime::PerRun)
        }
        Some(other) => {
            issues.push(lifetime_issue(other));
            Lifetime::PerRun
        }
    };
    (lifetime, issues)
}

/// CVS's `_resolve_container_setup_script`: a truthy path is made absolute
/// (`abspath(expanduser(p))`) and must be a file; a falsy one (absent, null, "") becomes the
/// packaged default, which must exist too. Returns the path to store.
pub fn resolve_setup_script(
    container: &Map<String, Value>,
    default_script: &str,
    env: &dyn Env,
) -> Result<String> {
    match container.get("setup_script") {
        Some(v) if is_truthy(v) => {
            let Value::String(given) = v else {
                return Err(Error::config(Issue::at(
                    "container.setup_script",
                    format!("expected a path string, got {}", value_repr(v)),
                )));
            };
            let resolved = paths::abspath(&paths::expanduser(given, env), env);
            if !env.is_file(&resolved) {
                return Err(Error::config(Issue::verbatim(
                    "container.setup_script",
                    format!(
                        "container.setup_script not found: {} (resolved to {})",
                        str_repr(given),
                        str_repr(&resolved)
                    ),
                )));
            }
            Ok(resolved)
        }
        _ => {
            if !env.is_file(default_script) {
                return Err(Error::config(Issue::verbatim(
                    "container.setup_script",
                    format!(
                        "packaged default container setup script is missing: {} (broken \
                         cvs-core install?)",
                        str_repr(default_script)
                    ),
                )));
            }
            Ok(default_script.to_owned())
        }
    }
}

/// Longest container name accepted. Docker sets no limit, but cvs-core derives file names
/// from the name (the per-host lock `/tmp/cvs-core-<name>.lock`), and a file name is at most
/// 255 bytes (NAME_MAX); 128 leaves room for every prefix and suffix, and for a user's own
/// `<name>.log`-style files, with any name a person would type.
pub const MAX_CONTAINER_NAME_LEN: usize = 128;

/// Docker's container-name grammar, `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, at most
/// [`MAX_CONTAINER_NAME_LEN`] characters.
pub fn is_valid_container_name(name: &str) -> bool {
    if name.len() > MAX_CONTAINER_NAME_LEN {
        return false;
    }
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let rest = chars.as_str();
    first.is_ascii_alphanumeric()
        && !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `repr` of a name, cut short: a name past the limit could be megabytes.
fn shown_name(name: &str) -> String {
    if name.chars().count() > 40 {
        format!(
            "{}...",
            str_repr(&name.chars().take(40).collect::<String>())
        )
    } else {
        str_repr(name)
    }
}

fn name_too_long(name: &str) -> Option<String> {
    (name.len() > MAX_CONTAINER_NAME_LEN).then(|| {
        format!(
            "is {} characters long; the limit is {MAX_CONTAINER_NAME_LEN} (cvs-core names files \
             after it, such as /tmp/cvs-core-<name>.lock)",
            name.chars().count()
        )
    })
}

/// Why `name` is not a usable container name (`None` when it is), starting with the name.
fn container_name_problem(name: &str) -> Option<String> {
    if let Some(why) = name_too_long(name) {
        return Some(format!("{} {why}", shown_name(name)));
    }
    (!is_valid_container_name(name)).then(|| {
        format!(
            "{} is not a valid Docker container name (must match [a-zA-Z0-9][a-zA-Z0-9_.-]+)",
            str_repr(name)
        )
    })
}

/// Validate a container name against Docker's grammar and the length limit, before anything
/// is rendered with it.
pub fn validate_container_name(name: &str) -> Result<()> {
    let why = match name_too_long(name) {
        Some(why) => why,
        None if is_valid_container_name(name) => return Ok(()),
        None => "must match [a-zA-Z0-9][a-zA-Z0-9_.-]+".to_owned(),
    };
    Err(Error::InvalidArgument(format!(
        "invalid container name {}: {why}",
        shown_name(name)
    )))
}

/// CVS's `sanitize_container_name`: every character outside `[a-zA-Z0-9_]` becomes `_`.
pub fn sanitize_container_name(image: &str) -> String {
    image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// CVS's `get_container_name`: the configured name, else `<control user>_<sanitized image>`.
pub fn default_container_name(control_user: &str, image: &str) -> String {
    format!("{control_user}_{}", sanitize_container_name(image))
}

/// The merged `docker run` arguments: CVS's defaults (unless `runtime.defaults` is false) with
/// the configured additions appended (lists) or overriding them (scalars).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunArgs {
    pub volumes: Vec<String>,
    pub devices: Vec<String>,
    pub capabilities: Vec<String>,
    pub security_opts: Vec<String>,
    pub groups: Vec<String>,
    pub ulimits: Vec<String>,
    /// Ordered like a Python dict updated in place: defaults first, overrides keep their slot.
    pub environment: Vec<(String, String)>,
    pub network: Option<String>,
    pub ipc: Option<String>,
    pub privileged: bool,
}

/// A validated, resolved `container` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerSpec {
    pub lifetime: Lifetime,
    pub image: Option<String>,
    /// The configured name, else the derived default; `None` only when there is no image.
    pub name: Option<String>,
    /// Absolute path of the script run inside each freshly launched container.
    pub setup_script: String,
    pub image_tar: Option<String>,
    pub runtime: String,
    /// `container.runtime.defaults`: false drops every CVS default run argument.
    pub use_defaults: bool,
    pub run_args: RunArgs,
}

/// CVS's `DEFAULT_CONTAINER_ARGS` list fields, as (runtime.args key, defaults).
pub const DEFAULT_DEVICES: [&str; 3] = ["/dev/kfd", "/dev/dri", "/dev/infiniband"];
pub const DEFAULT_CAPABILITIES: [&str; 3] = ["SYS_PTRACE", "IPC_LOCK", "SYS_ADMIN"];
pub const DEFAULT_SECURITY_OPTS: [&str; 2] = ["seccomp=unconfined", "apparmor=unconfined"];
pub const DEFAULT_GROUPS: [&str; 1] = ["video"];
pub const DEFAULT_ULIMITS: [&str; 1] = ["memlock=-1"];
pub const DEFAULT_ENVIRONMENT: [(&str, &str); 2] = [("GPUS", "8"), ("MULTINODE", "true")];
pub const DEFAULT_NETWORK: &str = "host";
pub const DEFAULT_IPC: &str = "host";

/// CVS's default volumes, built from the control-host user (`getpass.getuser()`), as CVS does.
pub fn default_volumes(control_user: &str) -> Vec<String> {
    vec![
        format!("/home/{control_user}:/workspace"),
        format!("/home/{control_user}/.ssh:/host_ssh"),
    ]
}

const CONTAINER_KEYS: [&str; 8] = [
    "lifetime",
    "image",
    "name",
    "setup_script",
    "image_tar",
    "env",
    "volumes",
    "runtime",
];
const RUNTIME_KEYS: [&str; 3] = ["name", "args", "defaults"];
/// `runtime.args` list fields: (key, defaults).
const LIST_ARGS: [(&str, &[&str]); 6] = [
    ("volumes", &[]),
    ("devices", &DEFAULT_DEVICES),
    ("cap_add", &DEFAULT_CAPABILITIES),
    ("security_opt", &DEFAULT_SECURITY_OPTS),
    ("group_add", &DEFAULT_GROUPS),
    ("ulimit", &DEFAULT_ULIMITS),
];
const OTHER_ARGS: [&str; 4] = ["network", "ipc", "privileged", "registry"];

/// Collects every issue of a block instead of stopping at the first, so one `validate` run
/// shows the user all that is wrong.
struct Checker<'a> {
    errors: &'a mut Vec<Issue>,
    warnings: &'a mut Vec<Issue>,
}

impl Checker<'_> {
    fn error(&mut self, path: &str, message: impl std::fmt::Display) {
        self.errors.push(Issue::at(path, message));
    }

    /// A string with no NUL (it could not be passed to a process) and, unless `allow_empty`,
    /// not empty.
    fn string(&mut self, path: &str, v: &Value) -> Option<String> {
        match v {
            Value::String(s) if s.contains('\0') => {
                self.error(path, "must not contain a NUL character");
                None
            }
            Value::String(s) if s.is_empty() => {
                self.error(path, "must not be empty");
                None
            }
            Value::String(s) => Some(s.clone()),
            other => {
                self.error(
                    path,
                    format!("expected a string, got {}", value_repr(other)),
                );
                None
            }
        }
    }

    fn string_list(&mut self, path: &str, v: &Value) -> Vec<String> {
        match v {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.string(&format!("{path}[{i}]"), item))
                .collect(),
            Value::Null => Vec::new(),
            other => {
                self.error(
                    path,
                    format!("expected a list of strings, got {}", value_repr(other)),
                );
                Vec::new()
            }
        }
    }

    fn object<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            Value::Null => None,
            other => {
                self.error(
                    path,
                    format!("expected an object, got {}", value_repr(other)),
                );
                None
            }
        }
    }

    fn unknown_keys(&mut self, path: &str, map: &Map<String, Value>, known: &[&str]) {
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            self.warnings.push(Issue::at(
                format!("{path}.{key}"),
                "unknown key, ignored (check the spelling)",
            ));
        }
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn push_unique(list: &mut Vec<String>, item: String) {
    // Docker refuses a mount point given twice; dropping exact repeats keeps each once.
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Validate a truthy `container` block and build its spec. `lifetime` and `setup_script` were
/// resolved already by the caller (they are CVS's fail-fast checks); everything else is checked
/// here with all issues collected. `require_image` is set for the container orchestrator.
pub(crate) fn build_spec(
    block: &Map<String, Value>,
    lifetime: Lifetime,
    setup_script: String,
    env: &dyn Env,
    require_image: bool,
    errors: &mut Vec<Issue>,
    warnings: &mut Vec<Issue>,
) -> Option<ContainerSpec> {
    let first_error = errors.len();
    let mut c = Checker { errors, warnings };
    c.unknown_keys("container", block, &CONTAINER_KEYS);

    let image = match block.get("image") {
        None | Some(Value::Null) => {
            if require_image {
                c.error(
                    "container.image",
                    "Container image not specified in config (required by the container \
                     orchestrator)",
                );
            }
            None
        }
        Some(v) => c.string("container.image", v).filter(|s| {
            let ok = !s.chars().any(|ch| ch.is_whitespace() || ch.is_control());
            if !ok {
                c.error("container.image", "must not contain whitespace");
            }
            ok
        }),
    };

    let control_user = env.control_user();
    let name = match block.get("name") {
        Some(v) if !v.is_null() => c.string("container.name", v).filter(|n| {
            let problem = container_name_problem(n);
            if let Some(p) = &problem {
                c.error("container.name", p);
            }
            problem.is_none()
        }),
        _ => image.as_deref().and_then(|img| {
            let derived = default_container_name(&control_user, img);
            match container_name_problem(&derived) {
                None => Some(derived),
                Some(p) => {
                    c.error(
                        "container.name",
                        format!("the default name (control user + image) is unusable: {p}; set container.name"),
                    );
                    None
                }
            }
        }),
    };

    let image_tar = block
        .get("image_tar")
        .filter(|v| !v.is_null())
        .and_then(|v| c.string("container.image_tar", v));

    // `container.volumes` is read by CVS's runtime only when the orchestrator passes none, and
    // the orchestrator always passes its own: it never reaches `docker run`. Say so.
    if let Some(v) = block.get("volumes") {
        c.string_list("container.volumes", v);
        c.warnings.push(Issue::at(
            "container.volumes",
            "ignored (as in CVS); list mounts under container.runtime.args.volumes",
        ));
    }

    let runtime = block
        .get("runtime")
        .and_then(|v| c.object("container.runtime", v));
    let empty = Map::new();
    let runtime = runtime.unwrap_or(&empty);
    c.unknown_keys("container.runtime", runtime, &RUNTIME_KEYS);
    let runtime_name = match runtime.get("name") {
        Some(v) if !v.is_null() => c
            .string("container.runtime.name", v)
            .map(|s| s.to_lowercase()),
        _ => Some("docker".to_owned()),
    };
    if let Some(n) = runtime_name.as_deref().filter(|n| *n != "docker") {
        c.error(
            "container.runtime.name",
            format!(
                "unsupported container runtime {} (cvs-core drives 'docker')",
                str_repr(n)
            ),
        );
    }
    let use_defaults = match runtime.get("defaults") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            c.error(
                "container.runtime.defaults",
                format!("expected true or false, got {}", value_repr(other)),
            );
            true
        }
    };
    let args = runtime
        .get("args")
        .and_then(|v| c.object("container.runtime.args", v))
        .unwrap_or(&empty);
    let mut known_args: Vec<&str> = LIST_ARGS.iter().map(|(k, _)| *k).collect();
    known_args.extend(OTHER_ARGS);
    known_args.push("env");
    c.unknown_keys("container.runtime.args", args, &known_args);
    if args.contains_key("env") {
        c.warnings.push(Issue::at(
            "container.runtime.args.env",
            "ignored (as in CVS); set container environment under container.env",
        ));
    }

    let mut lists: Vec<Vec<String>> = Vec::with_capacity(LIST_ARGS.len());
    for (key, defaults) in LIST_ARGS {
        let mut merged: Vec<String> = Vec::new();
        if use_defaults {
            let base: Vec<String> = if key == "volumes" {
                default_volumes(&control_user)
            } else {
                defaults.iter().map(|s| (*s).to_owned()).collect()
            };
            for item in base {
                push_unique(&mut merged, item);
            }
        }
        if let Some(v) = args.get(key) {
            for item in c.string_list(&format!("container.runtime.args.{key}"), v) {
                push_unique(&mut merged, item);
            }
        }
        lists.push(merged);
    }

    let mut scalar = |key: &str, default: &str| -> Option<String> {
        match args.get(key) {
            Some(v) if is_truthy(v) => c.string(&format!("container.runtime.args.{key}"), v),
            Some(v) if !v.is_null() && !v.is_string() => {
                c.error(
                    &format!("container.runtime.args.{key}"),
                    format!("expected a string, got {}", value_repr(v)),
                );
                None
            }
            _ => use_defaults.then(|| default.to_owned()),
        }
    };
    let network = scalar("network", DEFAULT_NETWORK);
    let ipc = scalar("ipc", DEFAULT_IPC);
    let privileged = match args.get("privileged") {
        None | Some(Value::Null) => use_defaults,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            c.error(
                "container.runtime.args.privileged",
                format!("expected true or false, got {}", value_repr(other)),
            );
            use_defaults
        }
    };

    let mut environment: Vec<(String, String)> = if use_defaults {
        DEFAULT_ENVIRONMENT
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    } else {
        Vec::new()
    };
    if let Some(envs) = block.get("env").and_then(|v| c.object("container.env", v)) {
        for (key, v) in envs {
            let path = format!("container.env.{key}");
            if !is_env_name(key) {
                c.error(
                    &path,
                    "not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                );
                continue;
            }
            // CVS stringifies with `str()` (so `true` arrives as `True`, `null` as `None`);
            // a typed JSON value is a mistake to point at, not to guess the text of.
            let text = match v {
                Value::String(s) if !s.contains('\0') => s.clone(),
                Value::String(_) => {
                    c.error(&path, "must not contain a NUL character");
                    continue;
                }
                Value::Number(n) => {
                    c.error(
                        &path,
                        format!("expected a string, got {n}; write it quoted: \"{n}\""),
                    );
                    continue;
                }
                other => {
                    c.error(
                        &path,
                        format!("expected a string, got {}", value_repr(other)),
                    );
                    continue;
                }
            };
            match environment.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = text,
                None => environment.push((key.clone(), text)),
            }
        }
    }

    if errors.len() > first_error {
        return None;
    }
    let mut lists = lists.into_iter();
    let mut next = || lists.next().unwrap_or_default();
    Some(ContainerSpec {
        lifetime,
        image,
        name,
        setup_script,
        image_tar,
        runtime: runtime_name.unwrap_or_else(|| "docker".to_owned()),
        use_defaults,
        run_args: RunArgs {
            volumes: next(),
            devices: next(),
            capabilities: next(),
            security_opts: next(),
            groups: next(),
            ulimits: next(),
            environment,
            network,
            ipc,
            privileged,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::FakeEnv;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn lifetime_resolution_table() {
        let cases: Vec<(Value, std::result::Result<Lifetime, &str>)> = vec![
            (json!({}), Ok(Lifetime::PerRun)),
            (json!({"image": "x"}), Ok(Lifetime::PerRun)),
            (json!({"lifetime": "no_launch"}), Ok(Lifetime::NoLaunch)),
            (json!({"lifetime": "per_run"}), Ok(Lifetime::PerRun)),
            (json!({"lifetime": "persistent"}), Ok(Lifetime::Persistent)),
            (
                json!({"lifetime": "forever"}),
                Err(
                    "container.lifetime must be one of ('no_launch', 'per_run', 'persistent'), got 'forever'",
                ),
            ),
            (
                json!({"lifetime": null}),
                Err(
                    "container.lifetime must be one of ('no_launch', 'per_run', 'persistent'), got None",
                ),
            ),
            (
                json!({"lifetime": "Persistent"}),
                Err(
                    "container.lifetime must be one of ('no_launch', 'per_run', 'persistent'), got 'Persistent'",
                ),
            ),
            (
                json!({"enabled": true, "lifetime": "per_run"}),
                Err(
                    "container.enabled is removed; delete the field and set container.lifetime to one of 'no_launch', 'per_run', 'persistent'",
                ),
            ),
            (
                json!({"launch": false, "lifetime": "persistent"}),
                Err(
                    "container.launch is removed; delete the field and set container.lifetime ('launch: true' -> 'per_run', 'launch: false' -> 'no_launch')",
                ),
            ),
            (
                json!({"enabled": true, "launch": true}),
                Err(
                    "container.enabled is removed; delete the field and set container.lifetime to one of 'no_launch', 'per_run', 'persistent'",
                ),
            ),
        ];
        for (block, want) in cases {
            let got = resolve_lifetime(&obj(block.clone())).map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(str::to_owned), "block {block}");
        }
    }

    #[test]
    fn setup_script_resolution_table() {
        let env = FakeEnv::default();
        let default = "/pkg/default_container_setup.sh";
        let ok = |v: Value| resolve_setup_script(&obj(v), default, &env);
        assert_eq!(ok(json!({})).unwrap(), default);
        assert_eq!(ok(json!({"setup_script": null})).unwrap(), default);
        assert_eq!(ok(json!({"setup_script": ""})).unwrap(), default);
        assert_eq!(
            ok(json!({"setup_script": "setup.sh"})).unwrap(),
            "/work/dir/setup.sh"
        );
        assert_eq!(
            ok(json!({"setup_script": "~/s.sh"})).unwrap(),
            "/home/alice/s.sh"
        );
        assert_eq!(
            ok(json!({"setup_script": "missing.sh"}))
                .unwrap_err()
                .to_string(),
            "container.setup_script not found: 'missing.sh' (resolved to '/work/dir/missing.sh')"
        );
        assert!(
            ok(json!({"setup_script": 5}))
                .unwrap_err()
                .to_string()
                .starts_with("container.setup_script: expected a path string")
        );
        let broken = resolve_setup_script(&obj(json!({})), "/nope.sh", &env).unwrap_err();
        assert_eq!(
            broken.to_string(),
            "packaged default container setup script is missing: '/nope.sh' (broken cvs-core install?)"
        );
    }

    #[test]
    fn container_name_grammar() {
        for good in ["ab", "a1", "root_rocm_cvs_latest", "A.b-c_d", "0x"] {
            assert!(is_valid_container_name(good), "{good}");
        }
        for bad in [
            "", "a", "_ab", ".ab", "-ab", "a b", "a/b", "a;b", "é1", "a$(x)",
        ] {
            assert!(!is_valid_container_name(bad), "{bad}");
        }
        assert!(is_valid_container_name(&"a".repeat(MAX_CONTAINER_NAME_LEN)));
        let long = "a".repeat(MAX_CONTAINER_NAME_LEN + 1);
        assert!(!is_valid_container_name(&long));
        assert_eq!(
            validate_container_name(&long).unwrap_err().to_string(),
            format!(
                "invalid container name '{}'...: is 129 characters long; the limit is 128 \
                 (cvs-core names files after it, such as /tmp/cvs-core-<name>.lock)",
                "a".repeat(40)
            )
        );
        assert_eq!(
            validate_container_name("a b").unwrap_err().to_string(),
            "invalid container name 'a b': must match [a-zA-Z0-9][a-zA-Z0-9_.-]+"
        );
        assert_eq!(
            sanitize_container_name("rocm/cvs:latest"),
            "rocm_cvs_latest"
        );
        assert_eq!(
            default_container_name("root", "rocm/cvs:latest"),
            "root_rocm_cvs_latest"
        );
    }

    fn spec(block: Value, require_image: bool) -> (Option<ContainerSpec>, Vec<Issue>, Vec<Issue>) {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let s = build_spec(
            &obj(block),
            Lifetime::PerRun,
            "/s.sh".into(),
            &FakeEnv::default(),
            require_image,
            &mut errors,
            &mut warnings,
        );
        (s, errors, warnings)
    }

    #[test]
    fn defaults_then_additions() {
        let (s, errors, _) = spec(
            json!({"image": "rocm/cvs:latest", "env": {"GPUS": "4", "EXTRA": "x"},
                   "runtime": {"args": {"volumes": ["/data:/data", "/home/alice:/workspace"],
                                        "cap_add": ["NET_ADMIN"], "network": "bridge",
                                        "privileged": false}}}),
            true,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let s = s.unwrap();
        assert_eq!(s.name.as_deref(), Some("alice_rocm_cvs_latest"));
        let a = &s.run_args;
        assert_eq!(
            a.volumes,
            [
                "/home/alice:/workspace",
                "/home/alice/.ssh:/host_ssh",
                "/data:/data"
            ]
        );
        assert_eq!(
            a.capabilities,
            ["SYS_PTRACE", "IPC_LOCK", "SYS_ADMIN", "NET_ADMIN"]
        );
        assert_eq!(a.devices, DEFAULT_DEVICES);
        assert_eq!(
            a.environment,
            vec![
                ("GPUS".into(), "4".into()),
                ("MULTINODE".into(), "true".into()),
                ("EXTRA".into(), "x".into())
            ]
        );
        assert_eq!(a.network.as_deref(), Some("bridge"));
        assert_eq!(a.ipc.as_deref(), Some("host"));
        assert!(!a.privileged);
    }

    #[test]
    fn defaults_false_keeps_only_configured() {
        let (s, errors, _) = spec(
            json!({"image": "img", "name": "c1", "runtime": {"defaults": false,
                   "args": {"network": "host", "volumes": ["/a:/b"]}}}),
            true,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let a = s.unwrap().run_args;
        assert_eq!(a.volumes, ["/a:/b"]);
        assert!(a.devices.is_empty() && a.capabilities.is_empty() && a.ulimits.is_empty());
        assert!(a.groups.is_empty() && a.security_opts.is_empty() && a.environment.is_empty());
        assert_eq!(a.network.as_deref(), Some("host"));
        assert_eq!(a.ipc, None);
        assert!(!a.privileged);
    }

    #[test]
    fn type_errors_name_their_paths() {
        let (s, errors, warnings) = spec(
            json!({"image": "img", "name": "-bad", "env": {"1X": "a", "Y": [1]},
                   "colour": 1,
                   "runtime": {"name": "podman", "defaults": "no",
                               "args": {"ulimit": [5], "devices": "/dev/kfd", "privileged": "yes",
                                        "shm": "1g"}}}),
            true,
        );
        assert!(s.is_none());
        let paths: Vec<&str> = errors.iter().map(|i| i.path.as_str()).collect();
        for want in [
            "container.name",
            "container.env.1X",
            "container.env.Y",
            "container.runtime.name",
            "container.runtime.defaults",
            "container.runtime.args.ulimit[0]",
            "container.runtime.args.devices",
            "container.runtime.args.privileged",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
        let ulimit = errors
            .iter()
            .find(|i| i.path == "container.runtime.args.ulimit[0]")
            .unwrap();
        assert_eq!(
            ulimit.message,
            "container.runtime.args.ulimit[0]: expected a string, got 5"
        );
        let wpaths: Vec<&str> = warnings.iter().map(|i| i.path.as_str()).collect();
        assert!(wpaths.contains(&"container.colour"), "{wpaths:?}");
        assert!(wpaths.contains(&"container.runtime.args.shm"), "{wpaths:?}");
    }

    #[test]
    fn missing_image_is_an_error_only_when_required() {
        let (_, errors, _) = spec(json!({"lifetime": "per_run"}), true);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "container.image");
        let (s, errors, _) = spec(json!({"lifetime": "per_run"}), false);
        assert!(errors.is_empty());
        let s = s.unwrap();
        assert_eq!((s.image, s.name), (None, None));
    }

    #[test]
    fn derived_name_must_be_valid() {
        let env = FakeEnv {
            control_user: "j@corp".into(),
            ..FakeEnv::default()
        };
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        build_spec(
            &obj(json!({"image": "img"})),
            Lifetime::PerRun,
            "/s".into(),
            &env,
            true,
            &mut errors,
            &mut warnings,
        );
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("set container.name"));
    }
}
