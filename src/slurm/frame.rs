//! Decoding what srun prints for a step of the task wrapper (`render::slurm::TASK_WRAPPER`):
//! `--label` lines `<task>: <frame>`. Pure.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// One line the wrapper wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The task runs on `node`, as step `step` (`<job>.<step>`).
    Hello {
        node: String,
        step: String,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Heartbeat,
    Exit(i32),
    /// The command's inactivity timeout expired on the node; a `KillReport` follows.
    Inactive,
    /// What the kill script reported (`cvs-kill found=<n> survivors=<m>`).
    KillReport(String),
    /// The wrapper could not run the command (`f <why>`).
    Failed(String),
    /// Anything else on the task's stdout (the wrapper never writes it: a profile script or
    /// Slurm's own task prolog did).
    Other(String),
}

/// Split a `--label` line into its task ID and the text after `": "` (srun pads the ID with
/// spaces to the width of the largest one).
pub fn split_label(line: &str) -> Option<(usize, &str)> {
    let (id, rest) = line.split_once(": ").or_else(|| {
        // An empty payload: "3: " is printed as "3:" by some versions.
        line.strip_suffix(':').map(|id| (id, ""))
    })?;
    let id = id.trim_start().parse().ok()?;
    Some((id, rest))
}

pub fn parse_frame(payload: &str) -> Frame {
    let (tag, rest) = payload.split_once(' ').unwrap_or((payload, ""));
    let decode = |s: &str| STANDARD.decode(s.trim_end()).ok();
    match tag {
        "h" => {
            let (node, step) = rest.split_once(' ').unwrap_or((rest, ""));
            Frame::Hello {
                node: node.to_owned(),
                step: step.trim().to_owned(),
            }
        }
        "o" => decode(rest).map_or_else(|| Frame::Other(payload.to_owned()), Frame::Stdout),
        "e" => decode(rest).map_or_else(|| Frame::Other(payload.to_owned()), Frame::Stderr),
        "k" if rest.is_empty() => Frame::Heartbeat,
        "x" => rest
            .trim()
            .parse()
            .map_or_else(|_| Frame::Other(payload.to_owned()), Frame::Exit),
        "f" => Frame::Failed(rest.to_owned()),
        "i" if rest.is_empty() => Frame::Inactive,
        "K" => Frame::KillReport(rest.to_owned()),
        _ => Frame::Other(payload.to_owned()),
    }
}

/// srun's own stderr lines about a task that ended with a non-zero code or a signal: the
/// wrapper's `x` frame already says so, exactly.
pub fn is_exit_notice(line: &str) -> bool {
    line.starts_with("srun: error: ")
        && (line.contains(": Exited with exit code ") || line.contains(": Killed"))
        && line.contains(": task")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_split_with_or_without_padding() {
        assert_eq!(split_label("0: h n1 5.0"), Some((0, "h n1 5.0")));
        assert_eq!(split_label(" 7: k"), Some((7, "k")));
        assert_eq!(split_label("12: o YQ=="), Some((12, "o YQ==")));
        assert_eq!(split_label("srun: error: boom"), None);
        assert_eq!(split_label("4:"), Some((4, "")));
    }

    #[test]
    fn frames_decode_to_exact_bytes() {
        assert_eq!(
            parse_frame("h node1 42.3"),
            Frame::Hello {
                node: "node1".into(),
                step: "42.3".into()
            }
        );
        assert_eq!(parse_frame("o bm9ubA=="), Frame::Stdout(b"nonl".to_vec()));
        assert_eq!(parse_frame("e AP8K"), Frame::Stderr(vec![0, 255, 10]));
        assert_eq!(parse_frame("k"), Frame::Heartbeat);
        assert_eq!(parse_frame("x 3"), Frame::Exit(3));
        assert_eq!(parse_frame("x 255"), Frame::Exit(255));
        assert_eq!(parse_frame("f cannot"), Frame::Failed("cannot".into()));
        assert_eq!(parse_frame("i"), Frame::Inactive);
        assert_eq!(
            parse_frame("K cvs-kill found=2 survivors=0"),
            Frame::KillReport("cvs-kill found=2 survivors=0".into())
        );
        assert_eq!(parse_frame("o !!"), Frame::Other("o !!".into()));
        assert_eq!(parse_frame("hello"), Frame::Other("hello".into()));
        assert_eq!(parse_frame("x"), Frame::Other("x".into()));
    }

    #[test]
    fn only_srun_exit_notices_are_recognised() {
        assert!(is_exit_notice(
            "srun: error: sl3: task 2: Exited with exit code 2"
        ));
        assert!(is_exit_notice("srun: error: n1: task 0: Killed"));
        assert!(!is_exit_notice(
            "srun: error: Task launch for StepId=5.0 failed on node sl2: Communication connection failure"
        ));
    }
}
