//! The one place where values become shell text.
//!
//! [`quote`] reproduces CPython's `shlex.quote` byte for byte: CVS logs and CVS's unit tests
//! compare exact command strings, and the `shlex` crate's quoting differs from Python's for `'`,
//! `,`, `^` and `!`. Everything else in `render` builds argv and calls [`join`].

use crate::config::pyrepr::str_repr;
use crate::error::{Error, Result};

/// Python's `[^\w@%+=:,./-]` under `re.ASCII`: `\w` is `[A-Za-z0-9_]`, so any non-ASCII
/// character is unsafe and forces quoting.
fn is_safe(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '_' | '@' | '%' | '+' | '=' | ':' | ',' | '.' | '/' | '-')
}

/// A NUL cannot travel in an argv word (the kernel would cut the word there), so a value holding
/// one is refused rather than silently truncated.
pub(super) fn reject_nul(s: &str) -> Result<()> {
    if s.contains('\0') {
        Err(Error::InvalidArgument(format!(
            "{} contains a NUL character, which cannot be passed as a command argument",
            str_repr(s)
        )))
    } else {
        Ok(())
    }
}

/// CPython's `shlex.quote`: `''` for the empty string, the string itself when every character
/// is safe, else the string in single quotes with each `'` written as `'"'"'`.
pub fn quote(s: &str) -> Result<String> {
    reject_nul(s)?;
    if s.is_empty() {
        return Ok("''".to_owned());
    }
    if s.chars().all(is_safe) {
        return Ok(s.to_owned());
    }
    Ok(format!("'{}'", s.replace('\'', r#"'"'"'"#)))
}

/// The words quoted with [`quote`] and joined with single spaces (Python's `shlex.join`).
pub fn join(argv: &[String]) -> Result<String> {
    let quoted = argv
        .iter()
        .map(|w| quote(w))
        .collect::<Result<Vec<String>>>()?;
    Ok(quoted.join(" "))
}

/// [`join`] for words the renderer itself wrote (no NUL possible), where a `Result` would only
/// be noise for the caller.
pub(super) fn join_static(argv: &[&str]) -> String {
    let words: Vec<String> = argv.iter().map(|w| (*w).to_owned()).collect();
    join(&words).unwrap_or_else(|_| unreachable!("renderer-written words hold no NUL"))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_cpython_shlex_quote() {
        let table: &[(&str, &str)] = &[
            ("", "''"),
            ("abc", "abc"),
            ("a b", "'a b'"),
            ("it's", r#"'it'"'"'s'"#),
            ("a,b", "a,b"),
            ("@%+=:,./-_", "@%+=:,./-_"),
            ("é", "'é'"),
            ("$(rm -rf /)", "'$(rm -rf /)'"),
            ("x\ny", "'x\ny'"),
            ("^", "'^'"),
            ("!", "'!'"),
            ("'", r#"''"'"''"#),
            ("''", r#"''"'"''"'"''"#),
            ("a\tb", "'a\tb'"),
            ("{{.Names}}", "'{{.Names}}'"),
            ("name=^c1$", "'name=^c1$'"),
            ("ABCxyz0189", "ABCxyz0189"),
            ("~", "'~'"),
            ("#", "'#'"),
            ("*", "'*'"),
            ("\u{7f}", "'\u{7f}'"),
        ];
        for (input, want) in table {
            assert_eq!(quote(input).unwrap(), *want, "quote({input:?})");
        }
    }

    #[test]
    fn nul_is_refused() {
        assert!(matches!(quote("a\0b"), Err(Error::InvalidArgument(_))));
        assert!(matches!(quote("\0"), Err(Error::InvalidArgument(_))));
        let argv = vec!["ok".to_owned(), "bad\0".to_owned()];
        assert!(matches!(join(&argv), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn join_quotes_each_word_and_uses_single_spaces() {
        let argv: Vec<String> = ["echo", "a b", "", "it's", "x"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(join(&argv).unwrap(), r#"echo 'a b' '' 'it'"'"'s' x"#);
        assert_eq!(join(&[]).unwrap(), "");
        assert_eq!(join_static(&["bash", "-c", "a && b"]), "bash -c 'a && b'");
    }

    /// Strings without NUL, biased towards shell metacharacters, plus arbitrary unicode.
    pub(crate) fn shell_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z'\"$()`;\\\\\n\t |&<>*?!^,#~{}=é中 -]{0,24}",
            "[^\u{0}]{0,24}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn quote_round_trips_through_a_posix_parser(s in shell_string()) {
            let q = quote(&s).unwrap();
            prop_assert_eq!(shell_words::split(&q).unwrap(), vec![s]);
        }

        #[test]
        fn join_round_trips_through_a_posix_parser(
            argv in proptest::collection::vec(shell_string(), 0..8)
        ) {
            let joined = join(&argv).unwrap();
            prop_assert_eq!(shell_words::split(&joined).unwrap(), argv);
        }

        #[test]
        fn safe_strings_are_unchanged(s in "[A-Za-z0-9_@%+=:,./-]{1,24}") {
            prop_assert_eq!(quote(&s).unwrap(), s);
        }
    }
}
