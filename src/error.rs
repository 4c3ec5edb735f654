//! The crate's one error type. Per-host failures are data (see `lifecycle`), so this enum only
//! carries the caller's mistakes and the refusals the caller asked to raise.

use std::fmt;

/// One problem found in a configuration, located by its dotted path
/// (`container.runtime.args.ulimit[0]`). `message` is the complete human text: for rules CVS
/// already enforced it is CVS's exact wording, because CVS users grep logs for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

impl Issue {
    /// An issue whose message is prefixed with its path (`container.name: must match ...`).
    pub fn at(path: impl Into<String>, message: impl fmt::Display) -> Self {
        let path = path.into();
        let message = if path.is_empty() {
            message.to_string()
        } else {
            format!("{path}: {message}")
        };
        Issue { path, message }
    }

    /// An issue whose message is used verbatim (it already names the field, in CVS's words).
    pub fn verbatim(path: impl Into<String>, message: impl Into<String>) -> Self {
        Issue {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; every issue found is listed (never empty).
    #[error("{}", render_issues(.0))]
    Config(Vec<Issue>),

    /// A `<changeme>` marker survived in the cluster configuration.
    #[error(
        "Unresolved placeholder found in cluster config at {path}: {value:?}. Replace every \
         <changeme> in the cluster file with a real value before running."
    )]
    UnresolvedPlaceholder { path: String, value: String },

    /// A setup script is too large for inline (base64 in the command line) delivery.
    #[error(
        "{label} is too large for inline delivery ({size} bytes > {limit}). Slim the script, or \
         bake the packages into the image."
    )]
    ScriptTooLarge {
        label: String,
        size: usize,
        limit: usize,
    },

    /// A value handed to a pure function cannot be used (NUL byte, empty name, no hosts...).
    #[error("{0}")]
    InvalidArgument(String),
}

impl Error {
    pub fn config(issue: Issue) -> Self {
        Error::Config(vec![issue])
    }

    /// The issues of a `Config` error, the path of an `UnresolvedPlaceholder`; empty otherwise.
    pub fn issues(&self) -> Vec<Issue> {
        match self {
            Error::Config(issues) => issues.clone(),
            Error::UnresolvedPlaceholder { path, .. } => {
                vec![Issue::verbatim(path.clone(), self.to_string())]
            }
            _ => Vec::new(),
        }
    }
}

fn render_issues(issues: &[Issue]) -> String {
    match issues {
        [one] => one.message.clone(),
        many => {
            let mut out = format!("{} configuration errors:", many.len());
            for issue in many {
                out.push_str("\n  - ");
                out.push_str(&issue.message);
            }
            out
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_issue_displays_its_message_verbatim() {
        let e = Error::config(Issue::verbatim(
            "node_dict",
            "node_dict must be provided in configuration",
        ));
        assert_eq!(e.to_string(), "node_dict must be provided in configuration");
    }

    #[test]
    fn several_issues_are_listed_one_per_line() {
        let e = Error::Config(vec![
            Issue::at("container.name", "bad"),
            Issue::at("container.image", "worse"),
        ]);
        assert_eq!(
            e.to_string(),
            "2 configuration errors:\n  - container.name: bad\n  - container.image: worse"
        );
    }
}
