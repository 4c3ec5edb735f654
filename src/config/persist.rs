//! Persistent connections (`persist`): how long a host's OpenSSH master stays up after the
//! process that started it, so the next process re-attaches instead of reconnecting. The
//! spellings of the argument, the cluster-file key and `CVS_CORE_PERSIST`, and their
//! resolution explicit > environment > file. Pure.

use std::time::Duration;

use serde_json::Value;

use super::pyrepr;

/// The environment variable that turns persistence on (`10m`, `true`) or off (`off`, `0`) for
/// every cluster of a process that does not say otherwise (CVS's own code, through compat).
pub const PERSIST_ENV: &str = "CVS_CORE_PERSIST";

/// The environment variable naming the per-user directory of persistent control sockets.
pub const CONTROL_DIR_ENV: &str = "CVS_CORE_CONTROL_DIR";

/// What `persist=True` means: long enough to cover the gap between the test suites of a
/// campaign, short enough that a forgotten login does not linger for the day.
pub const DEFAULT_PERSIST: Duration = Duration::from_secs(600);

/// The longest idle time accepted: a week. Beyond that a typo (`10d` for `10m`) is likelier
/// than intent, and a live master is a live login.
pub const MAX_PERSIST: Duration = Duration::from_secs(7 * 24 * 3600);

const HELP: &str = "a duration with a unit ('90s', '10m', '2h', '1d'), true (10 minutes) or \
                    false/off";

/// Parse a textual `persist`: `None` = off. Bare numbers need a unit, because `1` reads as
/// "yes" to some and "one second" to others.
pub fn parse_persist(text: &str) -> Result<Option<Duration>, String> {
    let t = text.trim().to_ascii_lowercase();
    match t.as_str() {
        "" | "0" | "off" | "false" | "no" | "none" => return Ok(None),
        "on" | "true" | "yes" => return Ok(Some(DEFAULT_PERSIST)),
        _ => {}
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => return Err(format!("{text:?} needs a unit: expected {HELP}")),
        _ => return Err(format!("{text:?} is not {HELP}")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not {HELP}"))?;
    seconds(n.saturating_mul(scale)).map_err(|e| format!("{text:?}: {e}"))
}

/// A number of seconds (the Python argument `persist=600`, or a number in the file).
pub fn seconds(n: u64) -> Result<Option<Duration>, String> {
    let d = Duration::from_secs(n);
    if n == 0 {
        Ok(None)
    } else if d > MAX_PERSIST {
        Err(format!(
            "{n} seconds is more than the longest persistence, {} days",
            MAX_PERSIST.as_secs() / 86_400
        ))
    } else {
        Ok(Some(d))
    }
}

/// The cluster file's `persist`: a string as [`parse_persist`], a boolean, or a number of
/// seconds. `Err` is the message for the path `persist`.
pub fn persist_value(v: &Value) -> Result<Option<Duration>, String> {
    match v {
        Value::Null | Value::Bool(false) => Ok(None),
        Value::Bool(true) => Ok(Some(DEFAULT_PERSIST)),
        Value::String(s) => parse_persist(s),
        Value::Number(n) => match n.as_u64() {
            Some(n) => seconds(n),
            None => Err(format!(
                "expected a non-negative whole number of seconds, got {n}"
            )),
        },
        other => Err(format!(
            "expected {HELP}, got {}",
            pyrepr::value_repr(other)
        )),
    }
}

/// How a process decides: an explicit argument wins, then `CVS_CORE_PERSIST`, then the cluster
/// file. `explicit`/`file` are already parsed; the environment's text is parsed here.
pub fn resolve_persist(
    explicit: Option<Option<Duration>>,
    env: Option<&str>,
    file: Option<Duration>,
) -> Result<Option<Duration>, String> {
    if let Some(given) = explicit {
        return Ok(given);
    }
    if let Some(text) = env {
        return parse_persist(text).map_err(|e| format!("{PERSIST_ENV}: {e}"));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        let m = |n| Some(Duration::from_secs(n));
        for (text, want) in [
            ("10m", m(600)),
            ("90s", m(90)),
            ("2h", m(7200)),
            ("1d", m(86_400)),
            (" 5M ", m(300)),
            ("true", Some(DEFAULT_PERSIST)),
            ("yes", Some(DEFAULT_PERSIST)),
            ("off", None),
            ("0", None),
            ("", None),
            ("0m", None),
        ] {
            assert_eq!(parse_persist(text), Ok(want), "{text:?}");
        }
        for bad in ["1", "600", "10 m", "10min", "m", "-5m", "8d"] {
            let err = parse_persist(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert!(parse_persist("600").unwrap_err().contains("needs a unit"));
    }

    #[test]
    fn file_values() {
        use serde_json::json;
        assert_eq!(persist_value(&json!(true)), Ok(Some(DEFAULT_PERSIST)));
        assert_eq!(persist_value(&json!(false)), Ok(None));
        assert_eq!(
            persist_value(&json!(120)),
            Ok(Some(Duration::from_secs(120)))
        );
        assert_eq!(
            persist_value(&json!("1h")),
            Ok(Some(Duration::from_secs(3600)))
        );
        assert!(persist_value(&json!(-1)).is_err());
        assert!(persist_value(&json!(1.5)).is_err());
        assert!(persist_value(&json!([1])).unwrap_err().contains("[1]"));
    }

    #[test]
    fn explicit_beats_env_beats_file() {
        let ten = Some(Duration::from_secs(600));
        let one = Some(Duration::from_secs(60));
        assert_eq!(resolve_persist(Some(None), Some("10m"), one), Ok(None));
        assert_eq!(resolve_persist(None, Some("10m"), one), Ok(ten));
        assert_eq!(resolve_persist(None, Some("off"), one), Ok(None));
        assert_eq!(resolve_persist(None, None, one), Ok(one));
        let err = resolve_persist(None, Some("7"), None).unwrap_err();
        assert!(err.starts_with("CVS_CORE_PERSIST: "), "{err}");
    }
}
