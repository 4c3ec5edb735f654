//! What one probe round trip tells about a host: privilege, docker, the container (state, ID,
//! start time, image, cvs-core labels), the local image, devices, in-container sshd, home.
//! The probe script is rendered by `render::lifecycle::probe_script`; this parses its output.

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
}

impl ContainerInfo {
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
    /// Something listens on the in-container sshd port (containers share the host network).
    pub sshd_up: bool,
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
    let mut sshd_up = None;
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
                if f.len() != 9 {
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
                }));
            }
            "image" => local_image = Some(value.trim().to_owned()),
            "sshd" => sshd_up = Some(value == "up"),
            _ => {}
        }
    }
    let privilege = privilege.ok_or("the probe printed nothing (is the login shell POSIX?)")?;
    match docker.as_deref() {
        Some("up") => {}
        Some(other) => return Err(format!("docker is not usable on the host: {other}")),
        None => return Err("the probe did not reach docker".into()),
    }
    Ok(Observation {
        privilege,
        home,
        devices,
        container: container.ok_or("the probe did not report the container")?,
        local_image: local_image.ok_or("the probe did not report the image")?,
        sshd_up: sshd_up.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = "priv=root\nhome=/root\ndev=/dev/kfd\ndocker=up\ncontainer=running|abc|2026-01-01T00:00:00Z|sha256:aa|h1|persistent|r1|alice|\nimage=sha256:aa\nsshd=up\n";

    #[test]
    fn parses_a_running_container() {
        let o = parse_probe(RUNNING).unwrap();
        assert_eq!(o.privilege, Privilege::Root);
        assert_eq!(o.home, "/root");
        assert_eq!(o.devices, ["/dev/kfd"]);
        let c = o.container.unwrap();
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
        assert!(o.sshd_up);
    }

    #[test]
    fn absent_container_missing_labels_and_missing_image() {
        let out = "priv=sudo\nhome=/home/u\ndocker=up\ncontainer=absent\nimage=\nsshd=down\n";
        let o = parse_probe(out).unwrap();
        assert_eq!(o.privilege.prefix(), "sudo -n");
        assert_eq!(o.container, None);
        assert_eq!(o.local_image, "");
        assert!(!o.sshd_up);
        let stopped = "priv=root\ndocker=up\ncontainer=exited|id|t|img|<no value>|<no value>|<no value>|<no value>|\nimage=img\nsshd=down\n";
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
