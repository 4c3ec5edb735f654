//! What one probe round trip tells about a host: privilege, docker, the container (state, ID,
//! start time, image, cvs-core labels), the local image, devices, in-container sshd, home.
//! The probe script is rendered by `render::lifecycle::probe_script`; this parses its output.

use crate::render::lifecycle::RECORD_PROVISIONED;

/// How docker commands must be run on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// The SSH user is root: no prefix.
    Root,
    /// Passwordless sudo works: `sudo -n`.
    Sudo,
}

impl Privilege {
    pub fn prefix(self) -> &'static str {
        match self {
            Privilege::Root => "",
            Privilege::Sudo => "sudo -n",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Running,
    /// Exists but is not running (exited, created, paused...): its overlay is still there.
    Stopped,
}

/// A container that exists under the configured name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    pub running: bool,
    pub status: String,
    pub id: String,
    pub started_at: String,
    pub image_id: String,
    /// Labels cvs-core puts on containers it launches; empty when absent (e.g. made by CVS).
    pub config_hash: String,
    pub lifetime: String,
    pub run_id: String,
    pub owner: String,
    /// `cvs.state-file`: set by a cvs-core that records provisioning completion there.
    pub state_file: String,
    /// The container's init PID on the host (0 when not running).
    pub pid: u32,
    /// Run ID of the provisioning record, when the container has one.
    pub provisioned_by: Option<String>,
}

impl ContainerInfo {
    /// Launched by a cvs-core that records provisioning, and the record is not there: the run
    /// that launched it was interrupted or failed before the setup script completed on every
    /// host. Such a container holds no overlay worth keeping.
    pub fn unfinished(&self) -> bool {
        !self.state_file.is_empty() && self.provisioned_by.is_none()
    }

    pub fn state(&self) -> ContainerState {
        if self.running {
            ContainerState::Running
        } else {
            ContainerState::Stopped
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub privilege: Privilege,
    /// The SSH user's home on that host (where its `~/.ssh` really is).
    pub home: String,
    /// Which of CVS's default GPU/RDMA devices exist on the host.
    pub devices: Vec<String>,
    /// `None` when no container has the configured name.
    pub container: Option<ContainerInfo>,
    /// Image ID of the configured tag on the host; empty when the host does not have it.
    pub local_image: String,
    /// Who listens on the sshd port in the container's network (the host's when no container
    /// runs).
    pub sshd: Sshd,
}

impl Observation {
    /// The container's own sshd listens (or, without `ss` on the host, something does).
    pub fn sshd_up(&self) -> bool {
        matches!(self.sshd, Sshd::Ours | Sshd::Unverified)
    }
}

/// The sshd port as the probe saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Sshd {
    #[default]
    Down,
    /// The listener lives in this container.
    Ours,
    /// Another process holds the port: another container's sshd on a shared (host) network,
    /// or a host daemon. `container` is its short container ID, empty when not in one.
    Other {
        pid: u32,
        comm: String,
        container: String,
    },
    /// Something listens but the host has no `ss` to say who (older behaviour: trusted).
    Unverified,
}

impl Sshd {
    pub fn parse(v: &str) -> Sshd {
        match v {
            "ours" | "up" => Sshd::Ours,
            "unverified" => Sshd::Unverified,
            other => match other.strip_prefix("other:") {
                Some(rest) => {
                    let mut f = rest.splitn(3, ':');
                    Sshd::Other {
                        pid: f.next().and_then(|p| p.parse().ok()).unwrap_or(0),
                        comm: f.next().unwrap_or("").to_owned(),
                        container: f.next().unwrap_or("").to_owned(),
                    }
                }
                None => Sshd::Down,
            },
        }
    }

    /// Who holds the port, for messages: `pid 42 (sshd) in container 1a2b3c4d5e6f`.
    pub fn holder(&self) -> Option<String> {
        match self {
            Sshd::Other {
                pid,
                comm,
                container,
            } => {
                let comm = if comm.is_empty() { "?" } else { comm };
                Some(if container.is_empty() {
                    format!("pid {pid} ({comm}) on the host")
                } else {
                    format!("pid {pid} ({comm}) in container {container}")
                })
            }
            _ => None,
        }
    }
}

fn label(v: &str) -> String {
    // docker's template prints `<no value>` for a missing label.
    if v == "<no value>" {
        String::new()
    } else {
        v.to_owned()
    }
}

/// Parse the probe's `key=value` lines. `Err` carries why the host cannot be acted on (no
/// privilege, docker down, unexpected output) — a failed probe, never "absent".
pub fn parse_probe(stdout: &str) -> Result<Observation, String> {
    let mut privilege = None;
    let mut home = String::new();
    let mut devices = Vec::new();
    let mut docker = None;
    let mut container: Option<Option<ContainerInfo>> = None;
    let mut local_image = None;
    let mut sshd = None;
    let mut record: Option<Option<String>> = None;
    for line in stdout.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "priv" => {
                privilege = Some(match value {
                    "root" => Privilege::Root,
                    "sudo" => Privilege::Sudo,
                    _ => {
                        return Err(
                            "the SSH user is not root and has no passwordless sudo (sudo -n true \
                             failed)"
                                .into(),
                        );
                    }
                })
            }
            "home" => home = value.to_owned(),
            "dev" => devices.push(value.to_owned()),
            "docker" => docker = Some(value.to_owned()),
            "container" if value == "absent" => container = Some(None),
            "container" if value.starts_with("error:") => {
                return Err(format!("docker inspect failed: {}", &value[6..]));
            }
            "container" => {
                let f: Vec<&str> = value.split('|').collect();
                if f.len() != 10 {
                    return Err(format!("unexpected container probe output: {value:?}"));
                }
                container = Some(Some(ContainerInfo {
                    running: f[0] == "running",
                    status: f[0].to_owned(),
                    id: f[1].to_owned(),
                    started_at: f[2].to_owned(),
                    image_id: f[3].to_owned(),
                    config_hash: label(f[4]),
                    lifetime: label(f[5]),
                    run_id: label(f[6]),
                    owner: label(f[7]),
                    state_file: label(f[8]),
                    pid: f[9].trim().parse().unwrap_or(0),
                    provisioned_by: None,
                }));
            }
            "record" if value == "absent" => record = Some(None),
            "record" if value.starts_with("error:") => {
                // Unreadable is not "never finished": deciding on it could replace a finished
                // container, so the host cannot be acted on.
                return Err(format!(
                    "cannot read the container's provisioning record: {}",
                    &value[6..]
                ));
            }
            "record" => {
                let mut words = value.split_whitespace();
                record = Some(match (words.next(), words.next()) {
                    (Some(RECORD_PROVISIONED), Some(run)) => Some(run.to_owned()),
                    (Some(RECORD_PROVISIONED), None) => Some(String::new()),
                    _ => None,
                });
            }
            "image" => local_image = Some(value.trim().to_owned()),
            "sshd" => sshd = Some(Sshd::parse(value)),
            _ => {}
        }
    }
    let privilege = privilege.ok_or("the probe printed nothing (is the login shell POSIX?)")?;
    match docker.as_deref() {
        Some("up") => {}
        Some(other) => return Err(format!("docker is not usable on the host: {other}")),
        None => return Err("the probe did not reach docker".into()),
    }
    let mut container = container.ok_or("the probe did not report the container")?;
    if let Some(c) = container.as_mut()
        && !c.state_file.is_empty()
    {
        c.provisioned_by = record.ok_or("the probe did not report the provisioning record")?;
    }
    Ok(Observation {
        privilege,
        home,
        devices,
        container,
        local_image: local_image.ok_or("the probe did not report the image")?,
        sshd: sshd.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = "priv=root\nhome=/root\ndev=/dev/kfd\ndocker=up\ncontainer=running|abc|2026-01-01T00:00:00Z|sha256:aa|h1|persistent|r1|alice|/var/lib/cvs-core/state|4242\nrecord=provisioned r1 \nimage=sha256:aa\nsshd=ours\n";

    #[test]
    fn parses_a_running_container() {
        let o = parse_probe(RUNNING).unwrap();
        assert_eq!(o.privilege, Privilege::Root);
        assert_eq!(o.home, "/root");
        assert_eq!(o.devices, ["/dev/kfd"]);
        let c = o.container.clone().unwrap();
        assert_eq!(c.state(), ContainerState::Running);
        assert_eq!(
            (c.id.as_str(), c.image_id.as_str(), c.config_hash.as_str()),
            ("abc", "sha256:aa", "h1")
        );
        assert_eq!(
            (c.lifetime.as_str(), c.run_id.as_str()),
            ("persistent", "r1")
        );
        assert_eq!(o.local_image, "sha256:aa");
        assert!(o.sshd_up());
        assert_eq!(c.pid, 4242);
        assert_eq!(c.provisioned_by.as_deref(), Some("r1"));
        assert!(!c.unfinished());
    }

    #[test]
    fn records_and_sshd_holders() {
        let base = "priv=root\ndocker=up\ncontainer=running|id|t|img|h|persistent|r2|bob|/var/lib/cvs-core/state|7\nimage=img\n";
        let absent = parse_probe(&format!("{base}record=absent\nsshd=down\n")).unwrap();
        assert!(absent.container.unwrap().unfinished());
        let err = parse_probe(&format!("{base}record=error:cannot read\n")).unwrap_err();
        assert!(err.contains("provisioning record"), "{err}");
        let missing = parse_probe(&format!("{base}sshd=down\n")).unwrap_err();
        assert!(
            missing.contains("did not report the provisioning record"),
            "{missing}"
        );
        let other = parse_probe(&format!(
            "{base}record=provisioned r2\nsshd=other:99:sshd:0123456789ab\n"
        ))
        .unwrap();
        assert!(!other.sshd_up());
        assert_eq!(
            other.sshd.holder().unwrap(),
            "pid 99 (sshd) in container 0123456789ab"
        );
        assert_eq!(
            Sshd::parse("other:5:nginx:").holder().unwrap(),
            "pid 5 (nginx) on the host"
        );
        assert_eq!(Sshd::parse("unverified"), Sshd::Unverified);
        // A container without the state-file label (CVS's, or by hand) is never "unfinished".
        let legacy = "priv=root\ndocker=up\ncontainer=running|id|t|img|<no value>|<no value>|<no value>|<no value>|<no value>|7\nimage=img\nsshd=down\n";
        let c = parse_probe(legacy).unwrap().container.unwrap();
        assert!(!c.unfinished() && c.state_file.is_empty());
    }

    #[test]
    fn absent_container_missing_labels_and_missing_image() {
        let out = "priv=sudo\nhome=/home/u\ndocker=up\ncontainer=absent\nimage=\nsshd=down\n";
        let o = parse_probe(out).unwrap();
        assert_eq!(o.privilege.prefix(), "sudo -n");
        assert_eq!(o.container, None);
        assert_eq!(o.local_image, "");
        assert!(!o.sshd_up());
        let stopped = "priv=root\ndocker=up\ncontainer=exited|id|t|img|<no value>|<no value>|<no value>|<no value>|<no value>|0\nimage=img\nsshd=down\n";
        let c = parse_probe(stopped).unwrap().container.unwrap();
        assert_eq!(c.state(), ContainerState::Stopped);
        assert_eq!(c.config_hash, "");
    }

    #[test]
    fn failures_are_reasons_not_absence() {
        let cases = [
            ("", "printed nothing"),
            ("priv=none\n", "passwordless sudo"),
            ("priv=root\ndocker=down\n", "docker is not usable"),
            (
                "priv=root\ndocker=up\ncontainer=error:permission denied\n",
                "docker inspect failed",
            ),
            (
                "priv=root\ndocker=up\nimage=x\n",
                "did not report the container",
            ),
            (
                "priv=root\ndocker=up\ncontainer=running|x\nimage=\n",
                "unexpected container",
            ),
        ];
        for (out, want) in cases {
            let err = parse_probe(out).unwrap_err();
            assert!(err.contains(want), "{out:?}: {err}");
        }
    }
}
