//! JSON text to a value, noticing what `serde_json::Value` cannot show: a key given twice in one
//! object. serde_json keeps the last value silently, so two `node_dict` entries for one host
//! would become one host with the second entry's facts; the user must hear about it.

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::pyrepr::str_repr;
use crate::error::{Error, Issue, Result};

/// Nesting of arrays and objects at which a configuration is refused (127 levels pass):
/// serde_json's recursion limit on JSON text, applied to Python values too so a dict and a
/// file obey one rule.
pub const MAX_NESTING_DEPTH: usize = 128;

/// A parsed document and the issues of its text (keys given twice), to be reported with the
/// other configuration errors.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedDocument {
    pub value: Value,
    pub issues: Vec<Issue>,
}

/// Parse a JSON document (a cluster or testsuite file's text), naming `source` in every
/// message. Invalid JSON is an error; a duplicated key is an issue in the result. Keys of `_`
/// comments may repeat: they are dropped before anything reads them.
pub fn parse_json_document(text: &str, source: &str) -> Result<ParsedDocument> {
    let dups = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Node {
        path: String::new(),
        in_comment: false,
        dups: &dups,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    let value = parsed.map_err(|e| {
        Error::config(Issue::verbatim(
            "",
            format!(
                "{source}: invalid JSON at line {}, column {}: {e}",
                e.line(),
                e.column()
            ),
        ))
    })?;
    let issues = dups
        .into_inner()
        .into_iter()
        .map(|(parent, key)| duplicate_issue(source, &parent, &key))
        .collect();
    Ok(ParsedDocument { value, issues })
}

fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn duplicate_issue(source: &str, parent: &str, key: &str) -> Issue {
    let path = child(parent, key);
    if parent == "node_dict" {
        Issue::at(
            path,
            format!(
                "host {} is listed twice in {source}; JSON would keep only the last entry, so \
                 merge the two into one",
                str_repr(key)
            ),
        )
    } else {
        Issue::at(
            path,
            format!(
                "key {} appears twice in {source}; JSON would keep only the last value, so \
                 keep one",
                str_repr(key)
            ),
        )
    }
}

/// Builds one value, recording (parent path, key) of each key seen twice in an object.
struct Node<'a> {
    path: String,
    in_comment: bool,
    dups: &'a RefCell<Vec<(String, String)>>,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity, and serde_json refuses out-of-range numbers.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Node {
            path: format!("{}[{}]", self.path, items.len()),
            in_comment: self.in_comment,
            dups: self.dups,
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let in_comment = self.in_comment || key.starts_with('_');
            let value = map.next_value_seed(Node {
                path: child(&self.path, &key),
                in_comment,
                dups: self.dups,
            })?;
            // With preserve_order, insert keeps the first position and takes the last value,
            // as serde_json's own Value does.
            if out.insert(key.clone(), value).is_some() && !in_comment {
                self.dups.borrow_mut().push((self.path.clone(), key));
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> ParsedDocument {
        parse_json_document(text, "c.json").unwrap()
    }

    #[test]
    fn same_value_as_serde_json_for_any_document() {
        for text in [
            r#"{"a": 1, "b": [true, null, -2, 3.5, 18446744073709551615, 1e400], "c": {"d": "é\u0000"}}"#,
            r#"[1, {"x": {}}, []]"#,
            r#""s""#,
            "-0",
            r#"{"k": 1, "k": 2, "j": 0}"#,
        ] {
            let ours = parse_json_document(text, "c.json").map(|d| d.value);
            let theirs = serde_json::from_str::<Value>(text);
            match (ours, theirs) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{text}: {a:?} vs {b:?}"),
            }
        }
        // serde_json's order: the first position, the last value.
        let v = parse(r#"{"k": 1, "j": 0, "k": 2}"#).value;
        assert_eq!(
            v.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["k", "j"]
        );
        assert_eq!(v["k"], json!(2));
    }

    #[test]
    fn duplicate_keys_are_issues_with_paths() {
        let doc = parse(
            r#"{"node_dict": {"10.0.0.1": {}, "10.0.0.2": {}, "10.0.0.1": {"x": 1}},
                "container": {"env": {"A": "1", "A": "2"}, "image": "i", "image": "j"},
                "list": [{"mgmt_ip": "a", "mgmt_ip": "b"}],
                "_c": 1, "_c": 2, "_block": {"k": 1, "k": 2}}"#,
        );
        let got: Vec<(&str, &str)> = doc
            .issues
            .iter()
            .map(|i| (i.path.as_str(), i.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "node_dict.10.0.0.1",
                    "node_dict.10.0.0.1: host '10.0.0.1' is listed twice in c.json; JSON would \
                     keep only the last entry, so merge the two into one"
                ),
                (
                    "container.env.A",
                    "container.env.A: key 'A' appears twice in c.json; JSON would keep only the \
                     last value, so keep one"
                ),
                (
                    "container.image",
                    "container.image: key 'image' appears twice in c.json; JSON would keep only \
                     the last value, so keep one"
                ),
                (
                    "list[0].mgmt_ip",
                    "list[0].mgmt_ip: key 'mgmt_ip' appears twice in c.json; JSON would keep \
                     only the last value, so keep one"
                ),
            ]
        );
    }

    #[test]
    fn invalid_json_names_the_source() {
        let err = parse_json_document("{\"a\": ", "cluster.json").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cluster.json: invalid JSON at line 1"),
            "{err}"
        );
        assert!(parse_json_document("{} x", "c").is_err(), "trailing text");
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse_json_document(&nested(MAX_NESTING_DEPTH - 1), "c").is_ok());
        let err = parse_json_document(&nested(MAX_NESTING_DEPTH), "c").unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }
}
