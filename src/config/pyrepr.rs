//! Python `repr()` of JSON values and host lists.
//!
//! CVS formats its error and log messages with `{v!r}` and `{list}`; users and CVS's own tests
//! match those strings, so messages built by the core must quote exactly as Python does.

use serde_json::Value;

/// `repr(s)` for a Python `str`.
pub fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let cp = c as u32;
                if cp < 0x100 {
                    out.push_str(&format!("\\x{cp:02x}"));
                } else if cp < 0x10000 {
                    out.push_str(&format!("\\u{cp:04x}"));
                } else {
                    out.push_str(&format!("\\U{cp:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Close to `str.isprintable()`: control, separator (other than ' ') and the common format
/// characters are escaped by `repr`.
fn is_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() {
        return false;
    }
    !matches!(
        c,
        '\u{00a0}'
            | '\u{00ad}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200f}'
            | '\u{2028}'..='\u{202f}'
            | '\u{205f}'..='\u{2064}'
            | '\u{3000}'
            | '\u{feff}'
    )
}

/// `repr(v)` for the Python object a JSON value converts to.
pub fn value_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => str_repr(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(value_repr).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", str_repr(k), value_repr(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

/// `repr(list_of_str)`, e.g. `['node1', 'node2']`.
pub fn list_repr<S: AsRef<str>>(items: &[S]) -> String {
    let inner: Vec<String> = items.iter().map(|s| str_repr(s.as_ref())).collect();
    format!("[{}]", inner.join(", "))
}

/// `repr(tuple_of_str)`, e.g. `('no_launch', 'per_run', 'persistent')`.
pub fn tuple_repr<S: AsRef<str>>(items: &[S]) -> String {
    let inner: Vec<String> = items.iter().map(|s| str_repr(s.as_ref())).collect();
    if inner.len() == 1 {
        format!("({},)", inner[0])
    } else {
        format!("({})", inner.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_quote_like_python() {
        let cases = [
            ("abc", "'abc'"),
            ("", "''"),
            ("it's", "\"it's\""),
            ("say \"hi\"", "'say \"hi\"'"),
            ("both ' and \"", "'both \\' and \"'"),
            ("a\tb\nc\\", "'a\\tb\\nc\\\\'"),
            ("\u{7}", "'\\x07'"),
            ("é", "'é'"),
            ("\u{a0}", "'\\xa0'"),
        ];
        for (input, want) in cases {
            assert_eq!(str_repr(input), want, "repr of {input:?}");
        }
    }

    #[test]
    fn values_and_lists() {
        assert_eq!(value_repr(&json!(null)), "None");
        assert_eq!(value_repr(&json!(true)), "True");
        assert_eq!(value_repr(&json!(5)), "5");
        assert_eq!(value_repr(&json!(["a", 1])), "['a', 1]");
        assert_eq!(value_repr(&json!({"k": false})), "{'k': False}");
        assert_eq!(list_repr(&["h1", "h2"]), "['h1', 'h2']");
        assert_eq!(
            list_repr(&["h2 (container not running, found: '')"]),
            "[\"h2 (container not running, found: '')\"]"
        );
        assert_eq!(
            tuple_repr(&["no_launch", "per_run", "persistent"]),
            "('no_launch', 'per_run', 'persistent')"
        );
    }
}
