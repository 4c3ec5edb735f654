//! Decoding what srun prints for a step of the task wrapper (`render::slurm::TASK_WRAPPER`).
//! Pure.
//!
//! srun's `--label` prefixes what each task writes with `<task>: `, but does not keep lines
//! whole: under load slurmstepd forwards part of a line, and srun prints each part as its own
//! labelled line (measured here: a 78-byte frame arrived as `1: o Tpo2...`, `1: UN`, `1: ENz8R`).
//! So frames carry their own delimiters, `@` before and `~` after (neither occurs inside a frame),
//! and [`Reassembler`] joins each task's parts in order until a frame is complete. Data frames
//! also carry the byte offset they start at, so a part that went missing is detected, never
//! silently skipped.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// One frame the wrapper wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The task runs on `node`, as step `step` (`<job>.<step>`).
    Hello {
        node: String,
        step: String,
    },
    /// Bytes of the command's stdout starting at byte `offset` of it.
    Stdout {
        offset: u64,
        bytes: Vec<u8>,
    },
    Stderr {
        offset: u64,
        bytes: Vec<u8>,
    },
    Heartbeat,
    Exit(i32),
    /// The command's inactivity timeout expired on the node; a `KillReport` follows.
    Inactive,
    /// What the kill script reported (`cvs-kill found=<n> survivors=<m>`).
    KillReport(String),
    /// The wrapper could not run the command (`f <why>`).
    Failed(String),
    /// A delimited frame that does not parse (a damaged one).
    Damaged(String),
}

/// What a task's output turned into: frames, and any text outside frames (a task prolog or a
/// profile script writing to stdout), kept for the host's error details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    Stray(String),
}

/// Split a `--label` line into its task ID and the text after `": "` (srun pads the ID with
/// spaces to the width of the largest one).
pub fn split_label(line: &str) -> Option<(usize, &str)> {
    let (id, rest) = line
        .split_once(": ")
        .or_else(|| line.strip_suffix(':').map(|id| (id, "")))?;
    let id = id.trim_start().parse().ok()?;
    Some((id, rest))
}

/// Joins each task's labelled parts into frames.
#[derive(Debug, Default)]
pub struct Reassembler {
    pending: HashMap<usize, String>,
}

/// Text without a frame end kept per task before it is given up as stray output.
const MAX_PENDING: usize = 1 << 20;

impl Reassembler {
    /// Feed one labelled line of srun's stdout; returns the task and what completed.
    pub fn push(&mut self, line: &str) -> Option<(usize, Vec<Item>)> {
        let (task, text) = split_label(line)?;
        let buf = self.pending.entry(task).or_default();
        buf.push_str(text);
        let mut items = Vec::new();
        while let Some(end) = buf.find('~') {
            let chunk: String = buf.drain(..=end).collect();
            let body = &chunk[..chunk.len() - 1];
            match body.rfind('@') {
                Some(start) => {
                    if !body[..start].trim().is_empty() {
                        items.push(Item::Stray(body[..start].to_owned()));
                    }
                    items.push(Item::Frame(parse_frame(&body[start + 1..])));
                }
                None => items.push(Item::Stray(body.to_owned())),
            }
        }
        // Text before a frame start that is still open is not ours: report it now.
        if let Some(start) = buf.find('@')
            && start > 0
        {
            let stray: String = buf.drain(..start).collect();
            if !stray.trim().is_empty() {
                items.push(Item::Stray(stray));
            }
        } else if !buf.contains('@') && buf.len() > MAX_PENDING {
            items.push(Item::Stray(std::mem::take(buf)));
        }
        Some((task, items))
    }

    /// Whatever a task left unterminated (its output ended mid-frame).
    pub fn leftover(&mut self, task: usize) -> Option<String> {
        self.pending.remove(&task).filter(|s| !s.is_empty())
    }
}

/// Parse the text between `@` and `~`.
pub fn parse_frame(body: &str) -> Frame {
    let (tag, rest) = body.split_once(' ').unwrap_or((body, ""));
    let data = |rest: &str| -> Option<(u64, Vec<u8>)> {
        let (offset, b64) = rest.split_once(' ')?;
        Some((offset.parse().ok()?, STANDARD.decode(b64.trim_end()).ok()?))
    };
    let damaged = || Frame::Damaged(body.to_owned());
    match tag {
        "h" => {
            let (node, step) = rest.split_once(' ').unwrap_or((rest, ""));
            Frame::Hello {
                node: node.to_owned(),
                step: step.trim().to_owned(),
            }
        }
        "o" => data(rest).map_or_else(damaged, |(offset, bytes)| Frame::Stdout { offset, bytes }),
        "e" => data(rest).map_or_else(damaged, |(offset, bytes)| Frame::Stderr { offset, bytes }),
        "k" if rest.is_empty() => Frame::Heartbeat,
        "i" if rest.is_empty() => Frame::Inactive,
        "x" => rest.trim().parse().map_or_else(|_| damaged(), Frame::Exit),
        "K" => Frame::KillReport(rest.to_owned()),
        "f" => Frame::Failed(rest.to_owned()),
        _ => damaged(),
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

    fn frames(r: &mut Reassembler, lines: &[&str]) -> Vec<(usize, Item)> {
        lines
            .iter()
            .filter_map(|l| r.push(l))
            .flat_map(|(t, items)| items.into_iter().map(move |i| (t, i)))
            .collect()
    }

    #[test]
    fn labels_are_split_with_or_without_padding() {
        assert_eq!(split_label("0: @h n1 5.0~"), Some((0, "@h n1 5.0~")));
        assert_eq!(split_label(" 7: @k~"), Some((7, "@k~")));
        assert_eq!(split_label("srun: error: boom"), None);
        assert_eq!(split_label("4:"), Some((4, "")));
    }

    #[test]
    fn frames_decode_to_exact_bytes_with_their_offsets() {
        assert_eq!(
            parse_frame("h node1 42.3"),
            Frame::Hello {
                node: "node1".into(),
                step: "42.3".into()
            }
        );
        assert_eq!(
            parse_frame("o 57 bm9ubA=="),
            Frame::Stdout {
                offset: 57,
                bytes: b"nonl".to_vec()
            }
        );
        assert_eq!(
            parse_frame("e 0 AP8K"),
            Frame::Stderr {
                offset: 0,
                bytes: vec![0, 255, 10]
            }
        );
        assert_eq!(parse_frame("k"), Frame::Heartbeat);
        assert_eq!(parse_frame("x 255"), Frame::Exit(255));
        assert_eq!(parse_frame("i"), Frame::Inactive);
        assert_eq!(
            parse_frame("K cvs-kill found=2 survivors=0"),
            Frame::KillReport("cvs-kill found=2 survivors=0".into())
        );
        assert_eq!(parse_frame("f cannot"), Frame::Failed("cannot".into()));
        for bad in ["o 1 !!", "o AAAA", "o x AAAA", "x", "hello"] {
            assert_eq!(parse_frame(bad), Frame::Damaged(bad.into()), "{bad}");
        }
    }

    #[test]
    fn frames_split_by_srun_are_joined_per_task_and_never_mixed() {
        // What srun printed under load: one task's frame in three labelled parts, another
        // task's frame in between.
        let mut r = Reassembler::default();
        let got = frames(
            &mut r,
            &[
                "1: @o 0 aGVs",
                "0: @o 0 d29y~",
                "1: bG8g",
                "1: d29y~@x 0~",
                "0: @x 3~",
            ],
        );
        assert_eq!(
            got,
            vec![
                (
                    0,
                    Item::Frame(Frame::Stdout {
                        offset: 0,
                        bytes: b"wor".to_vec()
                    })
                ),
                (
                    1,
                    Item::Frame(Frame::Stdout {
                        offset: 0,
                        bytes: b"hello wor".to_vec()
                    })
                ),
                (1, Item::Frame(Frame::Exit(0))),
                (0, Item::Frame(Frame::Exit(3))),
            ]
        );
    }

    #[test]
    fn text_outside_frames_is_stray_and_does_not_damage_the_next_frame() {
        let mut r = Reassembler::default();
        let got = frames(&mut r, &["2: prolog says hi", "2: @k~", "2: tail~"]);
        assert_eq!(
            got,
            vec![
                (2, Item::Stray("prolog says hi".into())),
                (2, Item::Frame(Frame::Heartbeat)),
                (2, Item::Stray("tail".into())),
            ]
        );
        let mut r = Reassembler::default();
        assert!(frames(&mut r, &["3: @o 0 AA"]).is_empty());
        assert_eq!(r.leftover(3).as_deref(), Some("@o 0 AA"));
        assert_eq!(r.leftover(3), None);
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
