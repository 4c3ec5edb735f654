//! Shell text of the native container driver: the one-round-trip probe, start, sshd and lock
//! commands. Every value is quoted by `quote`; fixed fragments are constants written here.

use super::quote::quote;
use super::{join, privilege_words};
use crate::config::validate_container_name;
use crate::error::{Error, Result};

/// Labels cvs-core puts on the containers it launches.
pub const LABEL_CONFIG_HASH: &str = "cvs.config-hash";
pub const LABEL_LIFETIME: &str = "cvs.lifetime";
pub const LABEL_RUN_ID: &str = "cvs.run-id";
pub const LABEL_OWNER: &str = "cvs.owner";

/// CVS's default devices: passed only where they exist on the host.
pub const PROBED_DEVICES: [&str; 3] = ["/dev/kfd", "/dev/dri", "/dev/infiniband"];

fn docker(prefix: &str, rest: &[&str]) -> Result<String> {
    let mut argv = privilege_words(prefix)?;
    argv.push("docker".into());
    argv.extend(rest.iter().map(|s| (*s).to_owned()));
    join(&argv)
}

/// One round trip that tells everything setup, plan and status need (parsed by
/// `lifecycle::observe::parse_probe`): privilege (root, passwordless sudo, or none), home,
/// default devices present, docker reachable, the container (state, ID, start time, image,
/// labels), the tag's local image ID, and whether something listens on the sshd port.
/// `devices` are reported when they exist on the host (`dev=<path>` lines).
pub fn probe_script(name: &str, image: &str, sshd_port: u16, devices: &[String]) -> Result<String> {
    validate_container_name(name)?;
    let n = quote(name)?;
    let i = quote(image)?;
    let fmt = quote(&format!(
        "container={{{{.State.Status}}}}|{{{{.Id}}}}|{{{{.State.StartedAt}}}}|{{{{.Image}}}}|\
         {{{{index .Config.Labels \"{LABEL_CONFIG_HASH}\"}}}}|\
         {{{{index .Config.Labels \"{LABEL_LIFETIME}\"}}}}|\
         {{{{index .Config.Labels \"{LABEL_RUN_ID}\"}}}}|\
         {{{{index .Config.Labels \"{LABEL_OWNER}\"}}}}|"
    ))?;
    let mut quoted = Vec::with_capacity(devices.len());
    for d in devices {
        quoted.push(quote(d)?);
    }
    let device_loop = if quoted.is_empty() {
        String::new()
    } else {
        format!(
            "for d in {}; do [ -e \"$d\" ] && echo \"dev=$d\"; done\n",
            quoted.join(" ")
        )
    };
    Ok(format!(
        r#"if [ "$(id -u)" = 0 ]; then P=; echo priv=root
elif sudo -n true >/dev/null 2>&1; then P="sudo -n"; echo priv=sudo
else echo priv=none; exit 0; fi
echo "home=$HOME"
{device_loop}if ! v=$($P docker version --format '{{{{.Server.Version}}}}' 2>&1); then
  echo "docker=$(printf '%s' "$v" | tr '\n' ' ' | cut -c1-200)"; exit 0; fi
echo docker=up
if out=$($P docker inspect --type container --format {fmt} {n} 2>&1); then echo "$out"
elif printf '%s' "$out" | grep -qi 'no such'; then echo container=absent
else echo "container=error:$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-200)"; fi
echo "image=$($P docker image inspect --format '{{{{.Id}}}}' {i} 2>/dev/null)"
if (ss -ltnH 2>/dev/null || netstat -ltn 2>/dev/null) | grep -Eq '[:.]{sshd_port}([^0-9]|$)'; then echo sshd=up; else echo sshd=down; fi
"#
    ))
}

/// `docker start <name>` (persistent container found stopped: its overlay is kept).
pub fn start_command(prefix: &str, name: &str) -> Result<String> {
    validate_container_name(name)?;
    docker(prefix, &["start", name])
}

/// Copy the SSH user's own `~/.ssh` (wherever its home really is) into the container's
/// `/root/.ssh` through a tar stream, so no mount of `/home/<user>` has to be guessed, then fix
/// ownership and modes as sshd's StrictModes requires.
pub fn copy_ssh_keys_command(prefix: &str, name: &str) -> Result<String> {
    validate_container_name(name)?;
    let inner = "mkdir -p /root/.ssh && tar -C /root/.ssh -xf - && chown -R root:root /root/.ssh \
                 && chmod 700 /root/.ssh && chmod 600 /root/.ssh/*";
    Ok(format!(
        "tar -C \"$HOME/.ssh\" -cf - . | {}",
        docker(prefix, &["exec", "-i", name, "sh", "-c", inner])?
    ))
}

/// Start sshd on `port` in the container (host keys generated if the image has none).
pub fn start_sshd_command(prefix: &str, name: &str, port: u16) -> Result<String> {
    validate_container_name(name)?;
    let inner = format!(
        "mkdir -p /run/sshd && chmod 755 /run/sshd && (ssh-keygen -A >/dev/null 2>&1 || true) && \
         /usr/sbin/sshd -p {port}"
    );
    docker(prefix, &["exec", name, "sh", "-c", &inner])
}

/// Run on the head node: wait (up to `wait_s`) until every host's `port` answers with an SSH
/// banner — readiness proven by the protocol, not by a fixed sleep. Prints `ready=<host>` or
/// `notready=<host>` per host.
pub fn banner_check_script(hosts: &[String], port: u16, wait_s: u32) -> Result<String> {
    let mut list = Vec::with_capacity(hosts.len());
    for h in hosts {
        list.push(quote(h)?);
    }
    let steps = wait_s.max(1) * 5;
    Ok(format!(
        r#"check() {{ timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2" && head -c 8 <&3' _ "$1" {port} 2>/dev/null | grep -q '^SSH-'; }}
for h in {hosts}; do
  i=0; ok=0
  while [ $i -lt {steps} ]; do if check "$h"; then ok=1; break; fi; i=$((i + 1)); sleep 0.2; done
  if [ $ok = 1 ]; then echo "ready=$h"; else echo "notready=$h"; fi
done
"#,
        hosts = list.join(" ")
    ))
}

/// Take an exclusive per-name lock on fd 9 and print `locked`. It is held until the shell
/// exits, i.e. until the SSH channel closes (the holder finishes or its process dies), so two
/// concurrent setups of one persistent name run one after the other.
fn acquire_lock(name: &str, wait_s: u32) -> Result<String> {
    validate_container_name(name)?;
    let path = quote(&format!("/tmp/cvs-core-{name}.lock"))?;
    Ok(format!(
        "exec 9>>{path} && flock -x -w {wait_s} 9 && echo locked"
    ))
}

/// The line that ends the probe output of [`lock_and_probe_command`].
pub const PROBE_DONE: &str = "cvs-probe-done";

/// The lock and the probe in one round trip: once the lock is held, run `probe` (in a subshell,
/// so its early `exit`s end only the probe), print [`PROBE_DONE`], then hold the lock until
/// stdin closes. The caller reads everything before `PROBE_DONE` as the probe's output.
pub fn lock_and_probe_command(name: &str, wait_s: u32, probe: &str) -> Result<String> {
    Ok(format!(
        "{} && ( {probe} ); echo {PROBE_DONE} && cat >/dev/null",
        acquire_lock(name, wait_s)?
    ))
}

/// List this owner's per_run containers (crashed runs leave them behind): `name|run-id`.
pub fn list_per_run_command(prefix: &str, owner: &str) -> Result<String> {
    if owner.is_empty() {
        return Err(Error::InvalidArgument("owner must not be empty".into()));
    }
    docker(
        prefix,
        &[
            "ps",
            "-a",
            "--filter",
            &format!("label={LABEL_LIFETIME}=per_run"),
            "--filter",
            &format!("label={LABEL_OWNER}={owner}"),
            "--format",
            &format!("{{{{.Names}}}}|{{{{.Label \"{LABEL_RUN_ID}\"}}}}"),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_quotes_values_and_reports_every_key() {
        let devs: Vec<String> = PROBED_DEVICES.iter().map(|d| (*d).to_owned()).collect();
        let s = probe_script("c1", "img:1", 2224, &devs).unwrap();
        for want in [
            "echo priv=root",
            "docker inspect --type container --format 'container={{.State.Status}}|{{.Id}}",
            "\"cvs.config-hash\"",
            " c1 2>&1",
            "docker image inspect --format '{{.Id}}' img:1",
            "[:.]2224([^0-9]|$)",
            "for d in /dev/kfd /dev/dri /dev/infiniband",
        ] {
            assert!(s.contains(want), "{want} not in:\n{s}");
        }
        assert!(probe_script("-x", "i", 1, &[]).is_err());
        let odd = probe_script("c1", "we'ird$(x)", 2224, &[]).unwrap();
        assert!(odd.contains(r#"'we'"'"'ird$(x)'"#));
    }

    #[test]
    fn sshd_and_lock_commands() {
        assert_eq!(
            start_command("sudo -n", "c1").unwrap(),
            "sudo -n docker start c1"
        );
        let keys = copy_ssh_keys_command("", "c1").unwrap();
        assert!(keys.starts_with("tar -C \"$HOME/.ssh\" -cf - . | docker exec -i c1 sh -c "));
        let sshd = start_sshd_command("", "c1", 2230).unwrap();
        assert!(sshd.ends_with("/usr/sbin/sshd -p 2230'"), "{sshd}");
        let lock = lock_and_probe_command("c1", 60, "echo priv=root; exit 0").unwrap();
        assert_eq!(
            lock,
            "exec 9>>/tmp/cvs-core-c1.lock && flock -x -w 60 9 && echo locked && \
             ( echo priv=root; exit 0 ); echo cvs-probe-done && cat >/dev/null"
        );
        assert!(lock_and_probe_command("-c1", 60, "true").is_err());
        let check = banner_check_script(&["10.0.0.1".into(), "h 2".into()], 2224, 3).unwrap();
        assert!(check.contains("for h in 10.0.0.1 'h 2'; do"));
        assert!(check.contains("while [ $i -lt 15 ]"));
        let list = list_per_run_command("", "alice").unwrap();
        assert!(
            list.contains("--filter label=cvs.lifetime=per_run --filter label=cvs.owner=alice")
        );
    }
}
