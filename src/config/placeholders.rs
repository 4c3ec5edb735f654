//! Comment stripping and cluster placeholder resolution (`{user-id}`, the `<changeme>` guard).
//!
//! Everything here returns new values: the caller's configuration is never mutated.

use serde_json::{Map, Value};

use super::Env;
use super::pyrepr::str_repr;
use crate::error::{Error, Issue, Result};

/// The `{user-id}` placeholder CVS substitutes in cluster files.
pub const USER_ID_PLACEHOLDER: &str = "{user-id}";
/// The marker CVS's sample cluster files carry where the user must fill in a value.
pub const CHANGEME_MARKER: &str = "<changeme>";

/// Drop every object key that starts with `_` (the `_comment` convention of CVS's sample
/// files), at every depth. Done before placeholder checks, so a comment that mentions
/// `<changeme>` never trips the guard.
pub fn strip_comment_keys(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('_'))
                .map(|(k, v)| (k.clone(), strip_comment_keys(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_comment_keys).collect()),
        other => other.clone(),
    }
}

/// The user `{user-id}` stands for: the first non-empty of `$USER`, `$LOGNAME`, `$USERNAME`,
/// else `root` (CVS's `resolve_cluster_config_placeholders`).
pub fn placeholder_user(env: &dyn Env) -> String {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .filter_map(|name| env.var(name))
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| "root".to_owned())
}

/// Substitute `{user-id}` in keys and values, recursively, and refuse any `<changeme>`
/// (case-insensitive) in a key or a string value, naming its path (`a.b[0]`).
pub fn resolve_cluster_placeholders(value: &Value, user: &str) -> Result<Value> {
    resolve_at(value, "", user, &mut Vec::new())
}

/// [`resolve_cluster_placeholders`], also reporting keys that substitution made equal (CVS's
/// dict comprehension keeps the last silently): `node_dict` keys `n-{user-id}` and `n-alice`
/// are one host listed twice.
pub fn resolve_cluster_placeholders_checked(
    value: &Value,
    user: &str,
) -> Result<(Value, Vec<Issue>)> {
    let mut collisions = Vec::new();
    let resolved = resolve_at(value, "", user, &mut collisions)?;
    Ok((resolved, collisions))
}

fn collision_issue(parent: &str, first: &str, second: &str, key: &str) -> Issue {
    let path = child_path(parent, key);
    let how = format!(
        "{} and {} both become {} once {USER_ID_PLACEHOLDER} is substituted",
        str_repr(first),
        str_repr(second),
        str_repr(key)
    );
    if parent == "node_dict" {
        Issue::at(
            path,
            format!("host {} is listed twice: {how}", str_repr(key)),
        )
    } else {
        Issue::at(path, format!("key {} is given twice: {how}", str_repr(key)))
    }
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn check_changeme(path: &str, text: &str) -> Result<()> {
    if text.to_lowercase().contains(CHANGEME_MARKER) {
        return Err(Error::UnresolvedPlaceholder {
            path: if path.is_empty() {
                "<root>".to_owned()
            } else {
                path.to_owned()
            },
            value: text.to_owned(),
        });
    }
    Ok(())
}

fn resolve_at(value: &Value, path: &str, user: &str, collisions: &mut Vec<Issue>) -> Result<Value> {
    match value {
        Value::String(s) => {
            check_changeme(path, s)?;
            Ok(Value::String(s.replace(USER_ID_PLACEHOLDER, user)))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| resolve_at(item, &format!("{path}[{i}]"), user, collisions))
            .collect::<Result<Vec<_>>>()
            .map(Value::Array),
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            // resolved key -> the key as written, to name both sides of a collision
            let mut written: std::collections::HashMap<String, &str> = Default::default();
            for (key, item) in map {
                let child = child_path(path, key);
                check_changeme(&child, key)?;
                let resolved = key.replace(USER_ID_PLACEHOLDER, user);
                let item = resolve_at(item, &child, user, collisions)?;
                if let Some(first) = written.get(&resolved) {
                    collisions.push(collision_issue(path, first, key, &resolved));
                } else {
                    written.insert(resolved.clone(), key);
                }
                out.insert(resolved, item);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::FakeEnv;
    use serde_json::json;

    #[test]
    fn strips_underscore_keys_at_every_depth() {
        let v = json!({"_comment": "x", "a": {"_c": 1, "b": [{"_d": 2, "e": 3}]}});
        assert_eq!(strip_comment_keys(&v), json!({"a": {"b": [{"e": 3}]}}));
    }

    #[test]
    fn placeholder_user_order() {
        let mut env = FakeEnv::default();
        env.vars.clear();
        assert_eq!(placeholder_user(&env), "root");
        env.vars.insert("USERNAME".into(), "u3".into());
        assert_eq!(placeholder_user(&env), "u3");
        env.vars.insert("LOGNAME".into(), "u2".into());
        assert_eq!(placeholder_user(&env), "u2");
        env.vars.insert("USER".into(), "".into());
        assert_eq!(placeholder_user(&env), "u2", "empty $USER is skipped");
        env.vars.insert("USER".into(), "u1".into());
        assert_eq!(placeholder_user(&env), "u1");
    }

    #[test]
    fn substitutes_keys_and_values_recursively() {
        let v = json!({"/home/{user-id}": ["{user-id}/a", 5, {"k": "{user-id}{user-id}"}]});
        let out = resolve_cluster_placeholders(&v, "bob").unwrap();
        assert_eq!(out, json!({"/home/bob": ["bob/a", 5, {"k": "bobbob"}]}));
    }

    #[test]
    fn changeme_in_value_names_path() {
        let v = json!({"container": {"runtime": {"args": {"volumes": ["<CHANGEME>:/x"]}}}});
        match resolve_cluster_placeholders(&v, "u").unwrap_err() {
            Error::UnresolvedPlaceholder { path, value } => {
                assert_eq!(path, "container.runtime.args.volumes[0]");
                assert_eq!(value, "<CHANGEME>:/x");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn keys_made_equal_by_substitution_are_reported() {
        let v = json!({"node_dict": {"n-{user-id}": {"a": 1}, "n-bob": {"b": 2}, "m": {}},
                       "x": {"bob": 1, "{user-id}": 2}});
        let (out, issues) = resolve_cluster_placeholders_checked(&v, "bob").unwrap();
        let got: Vec<(&str, &str)> = issues
            .iter()
            .map(|i| (i.path.as_str(), i.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "node_dict.n-bob",
                    "node_dict.n-bob: host 'n-bob' is listed twice: 'n-{user-id}' and 'n-bob' \
                     both become 'n-bob' once {user-id} is substituted"
                ),
                (
                    "x.bob",
                    "x.bob: key 'bob' is given twice: 'bob' and '{user-id}' both become 'bob' \
                     once {user-id} is substituted"
                ),
            ]
        );
        // The value is CVS's (the last one wins), and the unchecked form says nothing.
        assert_eq!(out["node_dict"]["n-bob"], json!({"b": 2}));
        assert_eq!(resolve_cluster_placeholders(&v, "bob").unwrap(), out);
    }

    #[test]
    fn changeme_in_key_is_refused_even_with_non_string_value() {
        let v = json!({"node_dict": {"<changeme>": {}}});
        let err = resolve_cluster_placeholders(&v, "u").unwrap_err();
        assert!(
            matches!(err, Error::UnresolvedPlaceholder { ref path, .. } if path == "node_dict.<changeme>")
        );
    }
}
