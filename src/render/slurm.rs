//! What the Slurm transport hands to `srun`: the step's argv and the task wrapper that frames
//! each task's output. Pure: the engine in `crate::slurm` runs them.

use crate::error::{Error, Result};

/// Where steps run: inside an existing allocation (`job_id`), or in one cvs-core makes with
/// `salloc` from the other fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Run as steps of this job (`--jobid J --overlap`).
    pub job_id: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub reservation: Option<String>,
    /// Slurm's `--time` for jobs cvs-core creates (minutes-granular: a safety net, never the
    /// call's timeout).
    pub time: Option<String>,
}

/// One step: which nodes, and the command every task runs.
#[derive(Debug, Clone)]
pub struct StepSpec<'a> {
    /// The allocation the step runs in.
    pub job: &'a str,
    /// Slurm node names, one task per node.
    pub nodes: &'a [String],
    /// The job token every process of the command carries (`CVS_CORE_JOB`).
    pub token: &'a str,
    pub command: &'a str,
    /// The kill script for this token, with its privilege prefix (see `TASK_WRAPPER`).
    pub kill_command: &'a str,
    /// The command's inactivity timeout, enforced by the wrapper (0: none).
    pub inactivity_ms: u64,
    /// The task's working directory on the node (srun otherwise uses the caller's, which the
    /// node may not have).
    pub chdir: &'a str,
}

/// The task wrapper, run by bash on every node as `bash -c WRAPPER cvs-core-task TOKEN CMD`.
///
/// It is the task's only writer to stdout. Every frame is `@<tag> ...~`: srun does not keep a
/// task's lines whole (see `slurm::frame`), so frames carry their own delimiters:
/// - `@h <node> <job>.<step>~`: the task started on that node (the step to signal);
/// - `@o <offset> <base64>~` / `@e ...~`: bytes of the command's stdout / stderr starting at
///   byte `<offset>`, 57 bytes a frame; together they are the exact bytes (binary, no trailing
///   newline, any size), and a lost frame shows as a gap;
/// - `@k~`: a heartbeat after a second without any other frame, so a silent command is told
///   apart from a lost node;
/// - `@x <code>~`: the command's exit status, after all its output;
/// - `@K <report>~`: what the kill script found, after SIGURG (the engine's way to stop the
///   command: `scancel --signal=URG <job>.<step>`; URG because its default action is to be
///   ignored, so only the wrapper acts on it and the command is killed by the script) or after
///   `@i~`, the command's inactivity timeout (`$4` milliseconds without output, counted by the
///   wrapper's own sleeps: never early).
///
/// Stopping runs the kill script inside the task (`$3`, with the job's privilege prefix, so it
/// reaches processes in containers too), not as a second step. Only the command carries the
/// job marker, so the kill script never hits the wrapper.
///
/// The command runs in the background with its output in node-local files that the wrapper
/// drains (new bytes only, `dd` with byte offsets) with a backoff from 5 ms to 200 ms: short
/// commands return fast and long ones cost a few forks a second. Its stdin is the task's
/// (srun's `--input=all` broadcasts the caller's stdin to every task). The directory goes when
/// the wrapper exits, also on the TERM of a step cancel; one left by a wrapper that was
/// SIGKILLed (its `pid` file names a dead process) is removed by the next task on the node.
pub const TASK_WRAPPER: &str = r#"t=$1 c=$2 kc=$3 il=${4:-0}
d=${TMPDIR:-/tmp}/cvs-core-task-$t
# A task SIGKILLed before its EXIT trap ran (Slurm follows a step's TERM with KILL after a
# short grace) leaves its directory: each task removes this user's whose wrapper is gone.
for o in "${TMPDIR:-/tmp}"/cvs-core-task-*/pid; do
  [ -f "$o" ] && [ -O "${o%/pid}" ] || continue
  read -r op <"$o" 2>/dev/null && [ -n "$op" ] && ! kill -0 "$op" 2>/dev/null && rm -rf "${o%/pid}"
done
mkdir -m 700 "$d" 2>/dev/null || { echo "@f cannot create the task directory in ${TMPDIR:-/tmp}~"; exit 0; }
trap 'rm -rf "$d"' EXIT
echo $$ >"$d/pid"
trap 'exit 143' TERM HUP INT
stop() { echo "@K $(bash -c "$kc" </dev/null 2>/dev/null | tail -n 1)~"; }
# The trap only sets a flag: the kill runs from the loop. Run inside the trap, it would be cut
# short when the interrupted `read -t` below times out (bash leaves read with a longjmp).
kill_asked=
trap 'kill_asked=1' URG
echo "@h ${SLURMD_NODENAME:-$(hostname -s)} $SLURM_JOB_ID.$SLURM_STEP_ID~"
exec 3<&0
CVS_CORE_JOB=$t bash -c "$c" <&3 >"$d/o" 2>"$d/e" 3<&- &
p=$!
exec 3<&- </dev/null
# Sleeps are reads with a timeout on a FIFO nobody writes: no fork per poll.
mkfifo "$d/z" && exec 9<>"$d/z"
po=0 pe=0
drain() {
  local -n off=$3
  local sz
  sz=$(stat -c %s "$1" 2>/dev/null) || return 1
  [ "$sz" -gt "$off" ] || return 1
  dd if="$1" iflag=skip_bytes,count_bytes skip="$off" count=$((sz - off)) bs=1M status=none |
    base64 -w 76 | awk -v t="$2" -v o="$off" '{ print "@" t " " o " " $0 "~"; o += 57 }'
  off=$sz
}
ms=5 quiet=0 idle=0
while :; do
  [ -z "$kill_asked" ] || { kill_asked=; stop; }
  kill -0 "$p" 2>/dev/null; up=$?
  w=0
  drain "$d/o" o po && w=1
  drain "$d/e" e pe && w=1
  [ "$up" = 0 ] || break
  if [ "$w" = 1 ]; then quiet=0 idle=0 ms=50; else
    quiet=$((quiet + ms)) idle=$((idle + ms))
    [ "$quiet" -lt 1000 ] || { echo "@k~"; quiet=0; }
    [ "$ms" -ge 200 ] || ms=$((ms * 2))
    if [ "$il" -gt 0 ] && [ "$idle" -ge "$il" ]; then echo "@i~"; stop; il=0; fi
  fi
  printf -v z '0.%03d' "$ms"
  read -r -t "$z" -u 9 _ || :
done
wait "$p"; rc=$?
[ -z "$kill_asked" ] || stop
drain "$d/o" o po; drain "$d/e" e pe
echo "@x $rc~"
"#;

/// `$0` of the wrapper: what `ps` shows for it on the nodes.
pub const TASK_NAME: &str = "cvs-core-task";

/// The argv of the allocation cvs-core makes when the process runs outside one: `salloc` with
/// `cat` as its local command, which holds the allocation until its stdin closes. The caller
/// keeps that stdin open and closes it to release; if the caller dies, the pipe closes with it,
/// so an allocation never outlives the process that made it.
/// - `--no-kill`: a node failing costs that host's results, not the others';
/// - `--immediate`: busy or unavailable nodes fail the call instead of queueing forever.
pub fn salloc_argv(
    salloc: &str,
    placement: &Placement,
    nodes: &[String],
    immediate_secs: u64,
    name: &str,
) -> Result<Vec<String>> {
    if nodes.is_empty() {
        return Err(Error::InvalidArgument(
            "an allocation needs at least one node".into(),
        ));
    }
    for n in nodes {
        check_slurm_word("node", n)?;
    }
    check_slurm_word("job name", name)?;
    let mut argv = vec![salloc.to_owned()];
    for (flag, what, value) in [
        ("--partition", "partition", &placement.partition),
        ("--account", "account", &placement.account),
        ("--reservation", "reservation", &placement.reservation),
        ("--time", "time", &placement.time),
    ] {
        if let Some(v) = value {
            check_slurm_word(what, v)?;
            argv.extend([flag.to_owned(), v.clone()]);
        }
    }
    let n = nodes.len().to_string();
    argv.extend([
        "--no-kill".into(),
        format!("--immediate={}", immediate_secs.max(1)),
        format!("--job-name={name}"),
        "--nodes".into(),
        n.clone(),
        "--ntasks".into(),
        n,
        "--ntasks-per-node=1".into(),
        "--nodelist".into(),
        nodes.join(","),
        "--".into(),
        "cat".into(),
    ]);
    Ok(argv)
}

/// The kill script for `token` under the privilege prefix, as one shell command.
pub fn kill_command(token: &str, grace_ms: u64, prefix: &str) -> Result<String> {
    let script = super::remote::kill_job_script(token, grace_ms)?;
    let mut argv = if prefix.trim().is_empty() {
        Vec::new()
    } else {
        super::privilege_words(prefix)?
    };
    argv.extend(["sh".to_owned(), "-c".to_owned(), script]);
    super::join(&argv)
}

fn check_token(token: &str) -> Result<()> {
    if token.is_empty() || !token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(Error::InvalidArgument(format!(
            "job token {token:?} must be non-empty [A-Za-z0-9-]"
        )));
    }
    Ok(())
}

/// Slurm's names for nodes, partitions, accounts, reservations and jobs never contain shell or
/// list syntax; refusing anything else keeps a value from changing what srun is asked.
pub fn check_slurm_word(what: &str, value: &str) -> Result<()> {
    if crate::config::is_slurm_word(value) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "slurm {what} {value:?} must be letters, digits and - _ . : + only"
        )))
    }
}

/// The argv of one step (program name first). Every value is its own argument: no shell.
pub fn srun_argv(srun: &str, spec: &StepSpec<'_>) -> Result<Vec<String>> {
    check_token(spec.token)?;
    if spec.nodes.is_empty() {
        return Err(Error::InvalidArgument(
            "a step needs at least one node".into(),
        ));
    }
    for n in spec.nodes {
        check_slurm_word("node", n)?;
    }
    if spec.command.contains('\0') {
        return Err(Error::InvalidArgument(
            "the command contains a NUL character".into(),
        ));
    }
    check_slurm_word("job_id", spec.job)?;
    let n = spec.nodes.len().to_string();
    // --overlap: concurrent calls (and a held lock beside them) share the allocation's CPUs
    // instead of queueing behind each other.
    let mut argv = vec![
        srun.to_owned(),
        "--jobid".into(),
        spec.job.to_owned(),
        "--overlap".into(),
        format!("--job-name={TASK_NAME}-{}", spec.token),
    ];
    argv.extend([
        "--nodes".into(),
        n.clone(),
        "--ntasks".into(),
        n,
        "--ntasks-per-node=1".into(),
        "--nodelist".into(),
        spec.nodes.join(","),
        format!("--chdir={}", spec.chdir),
        // Every task's lines are buffered and prefixed with its task ID: frames never mix.
        "--label".into(),
        "--input=all".into(),
        // One host's failing command must not end the others'.
        "--kill-on-bad-exit=0".into(),
        "bash".into(),
        "-c".into(),
        TASK_WRAPPER.into(),
        TASK_NAME.into(),
        spec.token.to_owned(),
        spec.command.to_owned(),
        spec.kill_command.to_owned(),
        spec.inactivity_ms.to_string(),
    ]);
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(job: &'a str, nodes: &'a [String]) -> StepSpec<'a> {
        StepSpec {
            job,
            nodes,
            token: "ab-12",
            command: "echo 'hi there'; exit 3",
            kill_command: "sh -c kill",
            inactivity_ms: 0,
            chdir: "/",
        }
    }

    #[test]
    fn a_step_overlaps_in_its_allocation_and_names_its_nodes() {
        let nodes = vec!["n1".to_owned(), "n2".to_owned()];
        let argv = srun_argv("srun", &spec("42", &nodes)).unwrap();
        let s = argv.join(" ");
        assert!(
            s.starts_with("srun --jobid 42 --overlap --job-name=cvs-core-task-ab-12 --nodes 2 "),
            "{s}"
        );
        assert!(
            s.contains("--nodelist n1,n2 --chdir=/ --label --input=all"),
            "{s}"
        );
        // The command is one argument, untouched: srun execs argv, no shell in between.
        assert_eq!(argv[argv.len() - 3], "echo 'hi there'; exit 3");
        assert_eq!(argv[argv.len() - 4], "ab-12");
        assert_eq!(argv[argv.len() - 5], TASK_NAME);
        assert_eq!(argv[argv.len() - 2], "sh -c kill");
        assert_eq!(argv.last().unwrap(), "0");
    }

    #[test]
    fn an_allocation_never_waits_forever_and_survives_a_dead_node() {
        let p = Placement {
            partition: Some("gpu".into()),
            account: Some("acct_1".into()),
            time: Some("10".into()),
            ..Default::default()
        };
        let nodes = vec!["n1".to_owned(), "n3".to_owned()];
        let s = salloc_argv("salloc", &p, &nodes, 7, "cvs-core-12")
            .unwrap()
            .join(" ");
        assert_eq!(
            s,
            "salloc --partition gpu --account acct_1 --time 10 --no-kill --immediate=7 \
             --job-name=cvs-core-12 --nodes 2 --ntasks 2 --ntasks-per-node=1 \
             --nodelist n1,n3 -- cat"
        );
    }

    #[test]
    fn values_that_are_not_slurm_words_are_refused() {
        let nodes = vec!["n1".to_owned()];
        for bad in ["a b", "x;rm", "", "a,b", "$(id)"] {
            let p = Placement {
                partition: Some(bad.into()),
                ..Default::default()
            };
            assert!(
                salloc_argv("salloc", &p, &nodes, 5, "n").is_err(),
                "{bad:?}"
            );
            assert!(srun_argv("srun", &spec(bad, &nodes)).is_err(), "{bad:?}");
        }
        let p = Placement::default();
        let evil = vec!["n1,n2".to_owned()];
        assert!(srun_argv("srun", &spec("1", &evil)).is_err());
        assert!(salloc_argv("salloc", &p, &evil, 5, "n").is_err());
        let none: Vec<String> = vec![];
        assert!(srun_argv("srun", &spec("1", &none)).is_err());
    }

    #[test]
    fn the_kill_command_runs_under_the_prefix() {
        let k = kill_command("ab-1", 1000, "sudo -n").unwrap();
        assert!(k.starts_with("sudo -n sh -c 'marks()"), "{k}");
        assert!(k.contains("CVS_CORE_JOB=ab-1"), "{k}");
        assert!(
            kill_command("ab-1", 1000, "")
                .unwrap()
                .starts_with("sh -c ")
        );
        assert!(kill_command("../x", 1000, "").is_err());
    }
}
