//! How the fan-out engine reaches hosts: the options a `Cluster` is built with and the argv of
//! each host's OpenSSH master. Everything the user's own `ssh` honours (ssh_config, agent,
//! known_hosts, ProxyJump, certificates) applies, because the master *is* the user's `ssh`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// Host-key checking, as OpenSSH's `StrictHostKeyChecking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Known hosts are checked; an unknown or changed key refuses the host (default).
    Strict,
    /// Unknown hosts are added to known_hosts; a changed key still refuses.
    AcceptNew,
    /// No checking at all (CVS's behaviour); keys are not recorded.
    Off,
}

impl HostKeyPolicy {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "strict" => Ok(HostKeyPolicy::Strict),
            "accept-new" => Ok(HostKeyPolicy::AcceptNew),
            "off" => Ok(HostKeyPolicy::Off),
            other => Err(Error::InvalidArgument(format!(
                "host_key_policy must be 'strict', 'accept-new' or 'off', got {other:?}"
            ))),
        }
    }
}

/// A password for OpenSSH's password authentication. It reaches ssh only through its askpass
/// helper (see `master::launch`): never a command line, the environment or a log line, and
/// `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub user: Option<String>,
    pub key: Option<PathBuf>,
    pub port: Option<u16>,
    pub ssh_config: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub host_key_policy: HostKeyPolicy,
    pub jump_host: Option<String>,
    pub connect_timeout: Duration,
    /// `ServerAliveInterval`: a dead peer is noticed instead of hanging (CVS used 30 s keepalive).
    pub keepalive: Duration,
    /// How long an idle master stays up (`ControlPersist`). It bounds how long a master outlives
    /// a process that died without closing its cluster; an expired master is re-established
    /// transparently on the next call.
    pub idle_timeout: Duration,
    /// `KexAlgorithms` to pass, decided once per cluster (see `Cluster::connect`): `None` keeps
    /// whatever the user's configuration says.
    pub kex: Option<String>,
    /// The `ssh` program.
    pub ssh_program: PathBuf,
    /// Password authentication (keys are preferred): ssh may ask, through the askpass helper.
    pub password: Option<Secret>,
    /// Persistent masters: their control sockets live in this per-user directory and outlive
    /// the process for `idle_timeout` (ControlPersist), so a later process with the same
    /// settings re-attaches instead of reconnecting. `None`: masters end with the cluster.
    pub persist_dir: Option<PathBuf>,
    /// How many hosts may be connecting (`ssh -M`: key exchange, authentication) at once. A
    /// thousand simultaneous handshakes from one head node starve each other of CPU and trip
    /// the servers' `MaxStartups`; commands on connected hosts are not limited by it.
    pub max_connect: usize,
}

/// Default of [`ConnectOptions::max_connect`]: on 2 cores, 64 concurrent handshakes already
/// keep the CPU busy; sshd's default `MaxStartups` starts dropping at 10 unauthenticated
/// connections *per server*, so this never trips it.
pub const DEFAULT_MAX_CONNECT: usize = 64;

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            user: None,
            key: None,
            port: None,
            ssh_config: None,
            known_hosts: None,
            host_key_policy: HostKeyPolicy::Strict,
            jump_host: None,
            connect_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            kex: None,
            ssh_program: PathBuf::from("ssh"),
            password: None,
            persist_dir: None,
            max_connect: DEFAULT_MAX_CONNECT,
        }
    }
}

/// A host as ssh's destination argument: never an option (a leading `-`), never empty, no
/// whitespace or control characters.
pub fn validate_host(host: &str) -> Result<()> {
    if host.is_empty()
        || host.starts_with('-')
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::InvalidArgument(format!(
            "invalid host {host:?}: must be non-empty, not start with '-', and contain no \
             whitespace"
        )));
    }
    Ok(())
}

fn secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// The options shared by the master and by `ssh -G` probes (everything that changes which
/// configuration applies).
fn config_args(opts: &ConnectOptions) -> Vec<String> {
    let mut argv: Vec<String> = Vec::new();
    if let Some(cfg) = &opts.ssh_config {
        argv.extend(["-F".into(), cfg.display().to_string()]);
    }
    if let Some(port) = opts.port {
        argv.extend(["-p".into(), port.to_string()]);
    }
    if let Some(user) = &opts.user {
        argv.extend(["-l".into(), user.clone()]);
    }
    argv
}

/// argv (without the program) of the master for `host`: `-M -f -N` (fork after authentication,
/// so exit status 0 means "connected"), control socket `ctl`, log `log`, batch mode (never a
/// prompt), and the caller's choices.
pub fn master_argv(opts: &ConnectOptions, host: &str, ctl: &Path, log: &Path) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "-M".into(),
        "-f".into(),
        "-N".into(),
        "-S".into(),
        ctl.display().to_string(),
        "-E".into(),
        log.display().to_string(),
    ];
    let mut opt = |o: String| {
        argv.push("-o".into());
        argv.push(o);
    };
    opt(format!("ControlPersist={}", secs(opts.idle_timeout)));
    if opts.password.is_some() {
        // Batch mode forbids every prompt, askpass included. One prompt: a wrong password is
        // an authentication failure at once, not three rounds of the same answer. The secret
        // itself never appears here (see master::launch).
        opt("BatchMode=no".into());
        opt("PasswordAuthentication=yes".into());
        opt("NumberOfPasswordPrompts=1".into());
    } else {
        opt("BatchMode=yes".into());
    }
    opt(format!("ConnectTimeout={}", secs(opts.connect_timeout)));
    opt(format!("ServerAliveInterval={}", secs(opts.keepalive)));
    opt("ServerAliveCountMax=3".into());
    match opts.host_key_policy {
        HostKeyPolicy::Strict => opt("StrictHostKeyChecking=yes".into()),
        HostKeyPolicy::AcceptNew => opt("StrictHostKeyChecking=accept-new".into()),
        HostKeyPolicy::Off => {
            opt("StrictHostKeyChecking=no".into());
            opt("UserKnownHostsFile=/dev/null".into());
            opt("GlobalKnownHostsFile=/dev/null".into());
        }
    }
    if opts.host_key_policy != HostKeyPolicy::Off
        && let Some(kh) = &opts.known_hosts
    {
        opt(format!("UserKnownHostsFile={}", kh.display()));
    }
    if let Some(kex) = &opts.kex {
        opt(format!("KexAlgorithms={kex}"));
    }
    if let Some(key) = &opts.key {
        opt("IdentitiesOnly=yes".into());
        argv.extend(["-i".into(), key.display().to_string()]);
    }
    if let Some(jump) = &opts.jump_host {
        argv.extend(["-J".into(), jump.clone()]);
    }
    argv.extend(config_args(opts));
    argv.push("--".into());
    argv.push(host.to_owned());
    argv
}

/// argv of `ssh -G` for `host`: prints the configuration that would apply, without connecting.
pub fn effective_config_argv(
    opts: &ConnectOptions,
    host: &str,
    ignore_user_config: bool,
) -> Vec<String> {
    let mut argv = vec!["-G".to_owned()];
    if ignore_user_config {
        argv.extend(["-F".into(), "/dev/null".into()]);
        if let Some(port) = opts.port {
            argv.extend(["-p".into(), port.to_string()]);
        }
    } else {
        argv.extend(config_args(opts));
    }
    argv.push("--".into());
    argv.push(host.to_owned());
    argv
}

/// The `kexalgorithms` line of `ssh -G` output.
pub fn kex_of(effective_config: &str) -> Option<&str> {
    effective_config
        .lines()
        .find_map(|l| l.strip_prefix("kexalgorithms "))
        .map(str::trim)
}

/// OpenSSH 9's default key exchange (sntrup761x25519) costs ~100 ms of client CPU per
/// connection; curve25519-sha256 costs ~1 ms. When the user's configuration leaves the choice to
/// the default (`user_kex == default_kex`), propose curve25519 first and keep the rest of the
/// default list as fallbacks; otherwise respect the user's choice.
pub fn preferred_kex(user_kex: &str, default_kex: &str) -> Option<String> {
    const FAST: &str = "curve25519-sha256";
    if user_kex != default_kex {
        return None;
    }
    let algos: Vec<&str> = default_kex.split(',').collect();
    if !algos.contains(&FAST) || algos.first() == Some(&FAST) {
        return None;
    }
    let mut out = vec![FAST];
    out.extend(algos.into_iter().filter(|a| *a != FAST));
    Some(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_argv_carries_every_choice() {
        let opts = ConnectOptions {
            user: Some("u".into()),
            key: Some("/k".into()),
            port: Some(2222),
            ssh_config: Some("/cfg".into()),
            known_hosts: Some("/kh".into()),
            jump_host: Some("bastion".into()),
            kex: Some("curve25519-sha256".into()),
            ..ConnectOptions::default()
        };
        let argv = master_argv(&opts, "h1", Path::new("/c/s"), Path::new("/c/l"));
        let joined = argv.join(" ");
        for want in [
            "-M -f -N -S /c/s -E /c/l",
            "-o ControlPersist=600",
            "-o BatchMode=yes",
            "-o ConnectTimeout=10",
            "-o StrictHostKeyChecking=yes",
            "-o UserKnownHostsFile=/kh",
            "-o KexAlgorithms=curve25519-sha256",
            "-o IdentitiesOnly=yes -i /k",
            "-J bastion",
            "-F /cfg -p 2222 -l u",
        ] {
            assert!(joined.contains(want), "{want} not in {joined}");
        }
        assert_eq!(&argv[argv.len() - 2..], ["--", "h1"]);
    }

    #[test]
    fn password_allows_one_askpass_prompt_and_never_shows_the_secret() {
        let opts = ConnectOptions {
            password: Some(Secret::new("hunter2".into())),
            ..ConnectOptions::default()
        };
        let joined = master_argv(&opts, "h", Path::new("s"), Path::new("l")).join(" ");
        assert!(joined.contains("-o BatchMode=no"));
        assert!(joined.contains("-o PasswordAuthentication=yes"));
        assert!(joined.contains("-o NumberOfPasswordPrompts=1"));
        assert!(!joined.contains("BatchMode=yes"));
        assert!(!joined.contains("hunter2"));
        assert!(!format!("{opts:?}").contains("hunter2"));
        let keys = master_argv(
            &ConnectOptions::default(),
            "h",
            Path::new("s"),
            Path::new("l"),
        );
        assert!(keys.join(" ").contains("-o BatchMode=yes"));
    }

    #[test]
    fn policy_off_records_nothing() {
        let opts = ConnectOptions {
            host_key_policy: HostKeyPolicy::Off,
            known_hosts: Some("/kh".into()),
            ..ConnectOptions::default()
        };
        let joined = master_argv(&opts, "h", Path::new("s"), Path::new("l")).join(" ");
        assert!(joined.contains("StrictHostKeyChecking=no"));
        assert!(joined.contains("UserKnownHostsFile=/dev/null"));
        assert!(!joined.contains("/kh"));
        assert!(HostKeyPolicy::parse("nope").is_err());
        assert_eq!(
            HostKeyPolicy::parse("accept-new").unwrap(),
            HostKeyPolicy::AcceptNew
        );
    }

    #[test]
    fn kex_preference_respects_user_choice() {
        let default = "sntrup761x25519-sha512@openssh.com,curve25519-sha256,ecdh-sha2-nistp256";
        assert_eq!(
            preferred_kex(default, default).as_deref(),
            Some("curve25519-sha256,sntrup761x25519-sha512@openssh.com,ecdh-sha2-nistp256")
        );
        assert_eq!(preferred_kex("ecdh-sha2-nistp256", default), None);
        assert_eq!(
            preferred_kex("curve25519-sha256", "curve25519-sha256"),
            None
        );
        assert_eq!(
            kex_of("user root\nkexalgorithms a,b\nport 22\n"),
            Some("a,b")
        );
    }

    #[test]
    fn hosts_are_validated() {
        for bad in ["", "-oProxyCommand=x", "a b", "a\nb"] {
            assert!(validate_host(bad).is_err(), "{bad:?}");
        }
        validate_host("10.0.0.1").unwrap();
        validate_host("user@node-1").unwrap();
    }
}
