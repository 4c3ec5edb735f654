//! One command on one host over its master: stdin streaming, output capture, total and
//! inactivity timeouts, cancellation, and killing the remote process tree when the command is
//! abandoned.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssh::{Session, Stdio};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::result::{HostResult, Status};
use crate::render::remote::{job_command, kill_job_script, parse_kill_report};

/// What the remote command reads on stdin.
#[derive(Debug, Clone)]
pub enum Input {
    None,
    /// Shared by every host of a fan-out: one copy in memory, however many hosts.
    Bytes(Arc<Vec<u8>>),
    /// Streamed from a local file (uploads of any size).
    File(PathBuf),
}

/// Where the remote stdout goes.
#[derive(Debug, Clone)]
pub enum OutputTo {
    Memory,
    /// Streamed into a local file (downloads of any size).
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct JobSpec {
    pub cmd: String,
    pub input: Input,
    pub stdout_to: OutputTo,
    pub timeout: Option<Duration>,
    pub inactivity_timeout: Option<Duration>,
    /// Privilege prefix (`sudo -n`, or empty) the kill script runs under when the job is
    /// abandoned: processes of a job that runs in a container belong to root, and only a
    /// privileged kill can see and signal them.
    pub kill_prefix: String,
}

/// sshd runs a command as one `-c` argument of the login shell, and Linux refuses any single
/// argument over 128 KiB (MAX_ARG_STRLEN); the mux protocol also caps a request near 256 KiB.
/// Commands above this size travel on stdin instead (see [`JobSpec::new`]).
pub const MAX_INLINE_COMMAND: usize = 96 * 1024;

impl JobSpec {
    /// A job for `cmd` with `input` on stdin. A command too large for the command line is sent
    /// as a script on stdin (saved to a temp file, then run with bash), so command size has no
    /// practical cap; that needs stdin, so a huge command with its own stdin is refused.
    pub fn new(cmd: impl Into<String>, input: Input) -> crate::error::Result<Self> {
        let cmd = cmd.into();
        if cmd.contains('\0') {
            return Err(crate::error::Error::InvalidArgument(
                "the command contains a NUL character".into(),
            ));
        }
        let (cmd, input) = if cmd.len() <= MAX_INLINE_COMMAND {
            (cmd, input)
        } else if matches!(input, Input::None) {
            (
                crate::render::STDIN_RUNNER.to_owned(),
                Input::Bytes(Arc::new(cmd.into_bytes())),
            )
        } else {
            return Err(crate::error::Error::InvalidArgument(format!(
                "a {} byte command cannot travel on the command line (limit {MAX_INLINE_COMMAND}) \
                 and stdin is already used for data: upload the script and run it instead",
                cmd.len()
            )));
        };
        Ok(JobSpec {
            cmd,
            input,
            stdout_to: OutputTo::Memory,
            timeout: None,
            inactivity_timeout: None,
            kill_prefix: String::new(),
        })
    }
}

pub enum Outcome {
    /// The command started (it may have failed, timed out...): never run it again.
    Ran(HostResult),
    /// The command never reached the host (the master's socket did not answer): safe to
    /// reconnect and run it once more.
    NotStarted(String),
}

/// Grace between TERM and KILL when a command is abandoned.
pub const KILL_GRACE: Duration = Duration::from_millis(1000);

/// A token unique to this process and call, marking every remote process of one command.
pub fn new_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let epoch = EPOCH.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    format!(
        "{:x}-{:x}-{:x}",
        std::process::id(),
        epoch & 0xffff_ffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Milliseconds since `start`, shared between readers and the inactivity watchdog.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

async fn pump<R: AsyncRead + Unpin>(
    mut src: R,
    sink: Arc<Mutex<Vec<u8>>>,
    mut file: Option<tokio::fs::File>,
    activity: Arc<Activity>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        activity.touch();
        match file.as_mut() {
            Some(f) => f.write_all(&buf[..n]).await?,
            None => sink
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&buf[..n]),
        }
    }
    if let Some(f) = file.as_mut() {
        f.flush().await?;
    }
    Ok(())
}

async fn feed(mut stdin: openssh::ChildStdin, input: Input) -> std::io::Result<()> {
    match input {
        Input::None => {}
        Input::Bytes(bytes) => stdin.write_all(&bytes).await?,
        Input::File(path) => {
            let mut f = tokio::fs::File::open(&path).await?;
            tokio::io::copy(&mut f, &mut stdin).await?;
        }
    }
    stdin.shutdown().await
}

fn take(buf: &Arc<Mutex<Vec<u8>>>) -> Vec<u8> {
    std::mem::take(&mut *buf.lock().unwrap_or_else(|p| p.into_inner()))
}

/// What a kill of a job's remote processes established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Killed {
    /// Processes were found and none survived.
    Confirmed,
    /// No process of the job was running.
    NothingFound,
    /// The kill could not run, or processes survived it: never reported as killed.
    NotConfirmed(String),
}

impl Killed {
    pub fn describe(&self) -> String {
        match self {
            Killed::Confirmed => "remote processes killed".into(),
            Killed::NothingFound => "no remote process was left running".into(),
            Killed::NotConfirmed(why) => format!("kill not confirmed: {why}"),
        }
    }
}

/// End every remote process of the job `token` (TERM, then KILL after the grace) and say what
/// is known of it afterwards: a kill is claimed only when the script reported no survivor.
pub async fn kill_remote(session: Arc<Session>, token: String, prefix: &str) -> Killed {
    let script = match kill_job_script(&token, KILL_GRACE.as_millis() as u64) {
        Ok(s) => s,
        Err(e) => return Killed::NotConfirmed(e.to_string()),
    };
    let script = if prefix.trim().is_empty() {
        Ok(script)
    } else {
        crate::render::privilege_words(prefix).and_then(|mut argv| {
            argv.extend(["sh".to_owned(), "-c".to_owned(), script]);
            crate::render::join(&argv)
        })
    };
    let script = match script {
        Ok(s) => s,
        Err(e) => return Killed::NotConfirmed(e.to_string()),
    };
    let mut cmd = Session::to_raw_command(session, script);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let run = async {
        let child = cmd.spawn().await.map_err(|e| e.to_string())?;
        let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    match tokio::time::timeout(KILL_GRACE + Duration::from_secs(5), run).await {
        Err(_) => Killed::NotConfirmed("the host did not answer the kill in time".into()),
        Ok(Err(e)) => Killed::NotConfirmed(e),
        Ok(Ok(out)) => match parse_kill_report(&out) {
            None => Killed::NotConfirmed("the kill script did not finish".into()),
            Some((0, _)) => Killed::NothingFound,
            Some((_, 0)) => Killed::Confirmed,
            Some((n, left)) => {
                Killed::NotConfirmed(format!("{left} of {n} remote processes survived"))
            }
        },
    }
}

enum Stop {
    Timeout,
    Inactive,
    Cancelled,
}

/// Run `spec` on `host` through `session`. `cancel` flips to true when the caller gives up.
pub async fn run(
    session: Arc<Session>,
    host: &str,
    spec: &JobSpec,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let started = Instant::now();
    let token = new_token();
    let cmd = match job_command(&token, &spec.cmd) {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Ran(HostResult::failed(
                host,
                Status::Error,
                e.to_string(),
                started.elapsed(),
            ));
        }
    };
    let stdout_file = match &spec.stdout_to {
        OutputTo::Memory => None,
        OutputTo::File(path) => match tokio::fs::File::create(path).await {
            Ok(f) => Some(f),
            Err(e) => {
                return Outcome::Ran(HostResult::failed(
                    host,
                    Status::Error,
                    format!("cannot create {}: {e}", path.display()),
                    started.elapsed(),
                ));
            }
        },
    };
    let mut command = Session::to_raw_command(session.clone(), cmd);
    command
        .stdin(match spec.input {
            Input::None => Stdio::null(),
            _ => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn().await {
        Ok(child) => child,
        Err(e) => return Outcome::NotStarted(e.to_string()),
    };

    let activity = Arc::new(Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let stdin = child.stdin().take();
    let stdout = child.stdout().take();
    let stderr = child.stderr().take();
    let input = spec.input.clone();
    let io = {
        let (out, err, activity) = (out.clone(), err.clone(), activity.clone());
        async move {
            let write = async {
                match stdin {
                    Some(s) => feed(s, input).await,
                    None => Ok(()),
                }
            };
            let read_out = async {
                match stdout {
                    Some(s) => pump(s, out, stdout_file, activity.clone()).await,
                    None => Ok(()),
                }
            };
            let read_err = async {
                match stderr {
                    Some(s) => pump(s, err, None, activity.clone()).await,
                    None => Ok(()),
                }
            };
            let (w, o, e) = tokio::join!(write, read_out, read_err);
            // A command that does not read its stdin closes the pipe early: not an error.
            let w = w.or_else(|e| {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    Ok(())
                } else {
                    Err(e)
                }
            });
            (w, o, e, child.wait().await)
        }
    };

    let watchdog = async {
        let deadline = spec.timeout.map(|t| activity.start + t);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A dropped sender means nobody can cancel any more, not "cancel".
        let mut cancel_open = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = cancel.changed(), if cancel_open => cancel_open = changed.is_ok(),
            }
            if *cancel.borrow() {
                return Stop::Cancelled;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Stop::Timeout;
            }
            if spec
                .inactivity_timeout
                .is_some_and(|limit| activity.idle() >= limit)
            {
                return Stop::Inactive;
            }
        }
    };

    tokio::pin!(io);
    let finished = tokio::select! {
        done = &mut io => Ok(done),
        stop = watchdog => Err(stop),
    };
    let elapsed = started.elapsed();
    let (w, o, e, wait) = match finished {
        Ok(done) => done,
        Err(stop) => {
            let (status, what) = match stop {
                Stop::Timeout => (
                    Status::Timeout,
                    format!(
                        "timed out after {:.1}s",
                        spec.timeout.unwrap_or_default().as_secs_f64()
                    ),
                ),
                Stop::Inactive => (
                    Status::InactivityTimeout,
                    format!(
                        "no output for {:.1}s",
                        spec.inactivity_timeout.unwrap_or_default().as_secs_f64()
                    ),
                ),
                Stop::Cancelled => (Status::Cancelled, "cancelled".to_owned()),
            };
            // Awaited even on Ctrl-C: the caller returns once the remote work is stopped (or
            // is known not to be), never while it still runs unobserved.
            let mut killed = kill_remote(session.clone(), token.clone(), &spec.kill_prefix).await;
            // The command's channel closing is the second proof: sshd closes it once the
            // session's processes are gone. While it stays open, kill again: a kill that ran
            // before the command had started its processes found nothing (the command would
            // then start unobserved), and one that raced a fork missed the child.
            let mut closed = false;
            for _ in 0..10 {
                if let Killed::NotConfirmed(_) = killed {
                    break; // the host does not answer: more attempts only delay the caller
                }
                if tokio::time::timeout(Duration::from_millis(300), &mut io)
                    .await
                    .is_ok()
                {
                    closed = true;
                    break;
                }
                killed = kill_remote(session.clone(), token.clone(), &spec.kill_prefix).await;
            }
            if !closed && killed == Killed::Confirmed {
                killed = Killed::NotConfirmed(
                    "the command's channel stayed open after its processes were killed".into(),
                );
            }
            let mut r = HostResult::failed(
                host,
                status,
                format!("{what}; {}", killed.describe()),
                elapsed,
            );
            r.stdout = take(&out);
            r.stderr = take(&err);
            return Outcome::Ran(r);
        }
    };

    let mut result = HostResult {
        host: host.to_owned(),
        status: Status::Ok,
        exit_code: -1,
        signal: None,
        stdout: take(&out),
        stderr: take(&err),
        duration: elapsed,
        error: None,
    };
    match wait {
        Ok(status) => match status.code() {
            Some(0) => result.exit_code = 0,
            Some(code) => {
                result.exit_code = code;
                result.status = Status::ExitNonzero;
            }
            None => {
                result.status = Status::Signal;
            }
        },
        // openssh reports exit 127 as an error; for us it is the command's exit code.
        Err(openssh::Error::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            result.exit_code = 127;
            result.status = Status::ExitNonzero;
        }
        Err(openssh::Error::RemoteProcessTerminated) => {
            // The mux protocol carries no signal details and cannot tell a signal from a lost
            // connection: ask the master.
            if super::master::is_alive(session.control_socket()).await {
                result.status = Status::Signal;
                result.error = Some("the remote command was terminated by a signal".into());
            } else {
                result.status = Status::Error;
                result.error = Some("the connection was lost while the command ran".into());
            }
        }
        Err(e) => {
            result.status = Status::Error;
            result.error = Some(format!("{e}"));
        }
    }
    for (what, r) in [("stdin", w), ("stdout", o), ("stderr", e)] {
        if let Err(io) = r
            && result.error.is_none()
        {
            result.status = Status::Error;
            result.error = Some(format!("{what}: {io}"));
        }
    }
    Outcome::Ran(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_shell_safe() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit() || c == '-'), "{a}");
    }
}
