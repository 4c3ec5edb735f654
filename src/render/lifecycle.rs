//! Shell text of the native container driver: the one-round-trip probe, start, sshd and lock
//! commands. Every value is quoted by `quote`; fixed fragments are constants written here.

use super::quote::quote;
use super::remote::JOB_VAR;
use super::{join, privilege_words};
use crate::config::validate_container_name;
use crate::error::{Error, Result};

/// Labels cvs-core puts on the containers it launches.
pub const LABEL_CONFIG_HASH: &str = "cvs.config-hash";
pub const LABEL_LIFETIME: &str = "cvs.lifetime";
pub const LABEL_RUN_ID: &str = "cvs.run-id";
pub const LABEL_OWNER: &str = "cvs.owner";
/// Where the container's provisioning record lives; its presence on a container says that the
/// launching cvs-core records completion there (containers made by CVS, by hand or by an older
/// cvs-core carry no such promise and are not judged by a missing record).
pub const LABEL_STATE_FILE: &str = "cvs.state-file";

/// The provisioning record inside the container. It lives in the container's own file system on
/// purpose: it shares the overlay's fate (removing or recreating the container removes it), so
/// no record on the host can outlive, or be mistaken for, another container of the same name.
/// The host reads it through `/proc/<pid>/root` (running) or `docker cp` (stopped), so the
/// probe needs no `docker exec`.
pub const STATE_FILE: &str = "/var/lib/cvs-core/state";

/// First word of the record: the setup script completed on every host of the run.
pub const RECORD_PROVISIONED: &str = "provisioned";

/// CVS's default devices: passed only where they exist on the host.
pub const PROBED_DEVICES: [&str; 3] = ["/dev/kfd", "/dev/dri", "/dev/infiniband"];

/// How long one docker call of the probe may take: a hung dockerd then shows as "docker did not
/// answer" on that host instead of a probe that waits forever.
pub const DOCKER_PROBE_TIMEOUT_S: u32 = 20;

fn docker(prefix: &str, rest: &[&str]) -> Result<String> {
    let mut argv = privilege_words(prefix)?;
    argv.push("docker".into());
    argv.extend(rest.iter().map(|s| (*s).to_owned()));
    join(&argv)
}

/// `sshd_state PID`: who listens on `port` in the network namespace of process `PID` (a
/// container's init; `0` = the host's own namespace). Prints `down`, `ours` (the listener lives
/// in that container: same mount namespace), `other:<pid>:<comm>:<container id>` (something
/// else holds the port; the container ID is empty when the holder is not in a container), or
/// `unverified` (no `ss` on the host: the port is busy, its holder unknown). `p` is the
/// privilege prefix, already quoted.
fn sshd_state_fn(p: &str, port: u16) -> String {
    format!(
        r#"sshd_state() {{
  if ! command -v ss >/dev/null 2>&1; then
    if netstat -ltn 2>/dev/null | grep -Eq '[:.]{port}([^0-9]|$)'; then echo unverified; else echo down; fi; return
  fi
  if [ "${{1:-0}}" = 0 ]; then n=; else n="nsenter --net=/proc/$1/ns/net"; fi
  l=$({p} $n ss -ltnpH 'sport = :{port}' 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2)
  if [ -z "$l" ]; then echo down; return; fi
  if [ "${{1:-0}}" != 0 ] && [ "$({p} readlink /proc/$l/ns/mnt 2>/dev/null)" = "$({p} readlink /proc/$1/ns/mnt 2>/dev/null)" ]; then echo ours; return; fi
  echo "other:$l:$({p} cat /proc/$l/comm 2>/dev/null):$({p} cat /proc/$l/cgroup 2>/dev/null | grep -o '[0-9a-f]\{{64\}}' | head -n 1 | cut -c1-12)"
}}
"#
    )
}

/// One round trip that tells everything setup, plan and status need (parsed by
/// `lifecycle::observe::parse_probe`): privilege (root, passwordless sudo, or none), home,
/// default devices present, docker reachable (within [`DOCKER_PROBE_TIMEOUT_S`]), the container
/// (state, ID, start time, image, labels, init PID), its provisioning record, the tag's local
/// image ID, and who listens on the sshd port. `devices` are reported when they exist on the
/// host (`dev=<path>` lines).
pub fn probe_script(name: &str, image: &str, sshd_port: u16, devices: &[String]) -> Result<String> {
    validate_container_name(name)?;
    let n = quote(name)?;
    let i = quote(image)?;
    let fmt = quote(&format!(
        "container={{{{.State.Status}}}}|{{{{.Id}}}}|{{{{.State.StartedAt}}}}|{{{{.Image}}}}|\
         {{{{index .Config.Labels \"{LABEL_CONFIG_HASH}\"}}}}|\
         {{{{index .Config.Labels \"{LABEL_LIFETIME}\"}}}}|\
         {{{{index .Config.Labels \"{LABEL_RUN_ID}\"}}}}|\
         {{{{index .Config.Labels \"{LABEL_OWNER}\"}}}}|\
         {{{{index .Config.Labels \"{LABEL_STATE_FILE}\"}}}}|{{{{.State.Pid}}}}"
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
    let t = DOCKER_PROBE_TIMEOUT_S;
    let sshd_fn = sshd_state_fn("$P", sshd_port);
    Ok(format!(
        r#"if [ "$(id -u)" = 0 ]; then P=; echo priv=root
elif sudo -n true >/dev/null 2>&1; then P="sudo -n"; echo priv=sudo
else echo priv=none; exit 0; fi
echo "home=$HOME"
{device_loop}D="timeout -k 2 {t} $P docker"
v=$($D version --format '{{{{.Server.Version}}}}' 2>&1); rc=$?
if [ $rc = 124 ] || [ $rc = 137 ]; then echo "docker=did not answer within {t}s (is dockerd hung?)"; exit 0
elif [ $rc != 0 ]; then echo "docker=$(printf '%s' "$v" | tr '\n' ' ' | cut -c1-200)"; exit 0; fi
echo docker=up
{sshd_fn}pid=0
if out=$($D inspect --type container --format {fmt} {n} 2>&1); then
  echo "$out"
  set -f; IFS='|'; set -- $out; unset IFS; set +f
  pid=${{10:-0}}; sf=$9
  if [ -n "$sf" ] && [ "$sf" != '<no value>' ]; then
    if [ "$pid" != 0 ]; then
      if $P test -d "/proc/$pid/root/"; then
        if $P test -e "/proc/$pid/root$sf"; then echo "record=$($P head -c 512 "/proc/$pid/root$sf" | tr '\n' ' ')"
        else echo record=absent; fi
      else echo "record=error:cannot read /proc/$pid/root"; fi
    elif e=$($D cp {n}:"$sf" - 2>&1 >/dev/null); then
      echo "record=$($D cp {n}:"$sf" - 2>/dev/null | tar -xOf - 2>/dev/null | head -c 512 | tr '\n' ' ')"
    elif printf '%s' "$e" | grep -qi 'could not find'; then echo record=absent
    else echo "record=error:$(printf '%s' "$e" | tr '\n' ' ' | cut -c1-200)"; fi
  fi
elif printf '%s' "$out" | grep -qi 'no such'; then echo container=absent
else echo "container=error:$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-200)"; fi
echo "image=$($D image inspect --format '{{{{.Id}}}}' {i} 2>/dev/null)"
echo "sshd=$(sshd_state "$pid")"
"#
    ))
}

/// `<prefix> docker exec [-i] -e CVS_CORE_JOB=... <name> bash -c <cmd>`: CVS's exec form plus the
/// job marker of the fan-out engine, taken from the host shell's own environment, so the
/// processes inside the container carry it and a timeout or Ctrl-C can find and kill them (a
/// docker exec client does not forward signals). The `-e` word is a fixed fragment naming our
/// own variable, whose value the engine generates from `[A-Za-z0-9-]`.
pub fn job_exec_command(prefix: &str, name: &str, cmd: &str, interactive: bool) -> Result<String> {
    validate_container_name(name)?;
    let mut head = privilege_words(prefix)?;
    head.extend(["docker".to_owned(), "exec".to_owned()]);
    if interactive {
        head.push("-i".to_owned());
    }
    let tail = [
        name.to_owned(),
        "bash".to_owned(),
        "-c".to_owned(),
        cmd.to_owned(),
    ];
    Ok(format!(
        "{} -e \"{JOB_VAR}=${JOB_VAR}\" {}",
        join(&head)?,
        join(&tail)?
    ))
}

/// Write the provisioning record into the container (atomically: a reader sees the old state or
/// the whole record). `run_id` names the run whose provisioning completed on every host.
pub fn record_command(prefix: &str, name: &str, run_id: &str) -> Result<String> {
    validate_container_name(name)?;
    let dir = STATE_FILE.rsplit_once('/').map_or("/", |(d, _)| d);
    let inner = format!(
        "mkdir -p {dir} && printf '%s\\n' \"$1\" > {STATE_FILE}.tmp && mv -f {STATE_FILE}.tmp {STATE_FILE}"
    );
    let record = format!("{RECORD_PROVISIONED} {run_id}");
    docker(prefix, &["exec", name, "sh", "-c", &inner, "sh", &record])
}

/// Remove `name` only if it carries `run_id` (it was created by that run), then check: prints
/// `removed`, `absent` (nothing of that run under the name), `kept:<other run id>` (the name
/// belongs to a container this run did not create: never touched) or `failed:<why>`, and exits
/// non-zero unless the container of that run is gone.
pub fn remove_own_command(prefix: &str, name: &str, run_id: &str) -> Result<String> {
    validate_container_name(name)?;
    let label = format!("label={LABEL_RUN_ID}={run_id}");
    let filter = format!("name=^{name}$");
    let find = docker(
        prefix,
        &["ps", "-aq", "--filter", &filter, "--filter", &label],
    )?;
    let any = docker(
        prefix,
        &[
            "ps",
            "-a",
            "--filter",
            &filter,
            "--format",
            &format!("{{{{.Label \"{LABEL_RUN_ID}\"}}}}"),
        ],
    )?;
    let rm = docker(prefix, &["rm", "-f", name])?;
    Ok(format!(
        r#"if ! id=$({find} 2>&1); then echo "failed:$(printf '%s' "$id" | tr '\n' ' ' | cut -c1-200)"; exit 1; fi
if [ -z "$id" ]; then o=$({any} 2>/dev/null); if [ -n "$o" ]; then echo "kept:$o"; else echo absent; fi; exit 0; fi
e=$({rm} 2>&1)
if [ -z "$({find} 2>/dev/null)" ]; then echo removed; else echo "failed:$(printf '%s' "$e" | tr '\n' ' ' | cut -c1-200)"; exit 1; fi
"#
    ))
}

/// `docker rm -f <name>`, then check that no container of that name is left: prints `removed`,
/// `absent` or `failed:<why>` (exit non-zero) — a removal is reported only when it is proven.
pub fn remove_verified_command(prefix: &str, name: &str) -> Result<String> {
    validate_container_name(name)?;
    let filter = format!("name=^{name}$");
    let find = docker(prefix, &["ps", "-aq", "--filter", &filter])?;
    let rm = docker(prefix, &["rm", "-f", name])?;
    Ok(format!(
        r#"if ! id=$({find} 2>&1); then echo "failed:$(printf '%s' "$id" | tr '\n' ' ' | cut -c1-200)"; exit 1; fi
if [ -z "$id" ]; then echo absent; exit 0; fi
e=$({rm} 2>&1)
if [ -z "$({find} 2>/dev/null)" ]; then echo removed; else echo "failed:$(printf '%s' "$e" | tr '\n' ' ' | cut -c1-200)"; exit 1; fi
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

/// Start sshd on `port` in the container (host keys generated if the image has none) and prove
/// that the listener on the port is this container's: with `--network host` every container
/// of the node shares the port space, so "something answers on 2224" can be another user's
/// container. Refuses to start when the port is already held by something else. Prints
/// `sshd=<state>` (see `sshd_state_fn`) and exits 0 only when the listener is ours.
pub fn start_sshd_command(prefix: &str, name: &str, port: u16) -> Result<String> {
    validate_container_name(name)?;
    let inner = format!(
        "mkdir -p /run/sshd && chmod 755 /run/sshd && (ssh-keygen -A >/dev/null 2>&1 || true) && \
         /usr/sbin/sshd -p {port}"
    );
    let start = docker(prefix, &["exec", name, "sh", "-c", &inner])?;
    let pid = docker(prefix, &["inspect", "--format", "{{.State.Pid}}", name])?;
    let p = join(&privilege_words(prefix)?)?;
    Ok(format!(
        r#"{state_fn}pid=$({pid}) || exit 1
s=$(sshd_state "$pid")
case "$s" in other:*) echo "sshd=$s"; exit 3;; esac
if [ "$s" != ours ]; then {start} || {{ rc=$?; echo "sshd=$(sshd_state "$pid")"; exit $rc; }}; fi
i=0
while s=$(sshd_state "$pid"); [ "$s" != ours ] && [ $i -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
echo "sshd=$s"
[ "$s" = ours ]
"#,
        state_fn = sshd_state_fn(&p, port)
    ))
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
        "exec 9>>{path} && flock -x -w {wait_s} 9 && echo {LOCKED}"
    ))
}

/// The line [`lock_and_probe_command`] prints once the lock is held (before the probe runs),
/// so a caller can tell a wait for the lock from a probe that hangs.
pub const LOCKED: &str = "locked";

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
            "D=\"timeout -k 2 20 $P docker\"",
            "$D inspect --type container --format 'container={{.State.Status}}|{{.Id}}",
            "\"cvs.config-hash\"",
            "\"cvs.state-file\"}}|{{.State.Pid}}'",
            " c1 2>&1",
            "$D image inspect --format '{{.Id}}' img:1",
            "ss -ltnpH 'sport = :2224'",
            "[:.]2224([^0-9]|$)",
            "echo \"sshd=$(sshd_state \"$pid\")\"",
            "$D cp c1:\"$sf\" -",
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
        assert!(sshd.contains("/usr/sbin/sshd -p 2230'"), "{sshd}");
        assert!(sshd.contains("case \"$s\" in other:*) echo \"sshd=$s\"; exit 3;; esac"));
        assert!(sshd.ends_with("[ \"$s\" = ours ]\n"), "{sshd}");
        let sudo = start_sshd_command("sudo -n", "c1", 2230).unwrap();
        assert!(
            sudo.contains("sudo -n nsenter --net=/proc/$1/ns/net")
                || sudo.contains("l=$(sudo -n $n ss"),
            "{sudo}"
        );
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
        let exec = job_exec_command("sudo -n", "c1", "echo 'hi'; sleep 1", true).unwrap();
        assert_eq!(
            exec,
            "sudo -n docker exec -i -e \"CVS_CORE_JOB=$CVS_CORE_JOB\" c1 bash -c \
             'echo '\"'\"'hi'\"'\"'; sleep 1'"
        );
        assert!(job_exec_command("", "-c1", "x", false).is_err());
        let rec = record_command("", "c1", "run-1").unwrap();
        assert!(rec.starts_with("docker exec c1 sh -c "), "{rec}");
        assert!(rec.ends_with(" sh 'provisioned run-1'"), "{rec}");
        let own = remove_own_command("sudo -n", "c1", "run-1").unwrap();
        assert!(
            own.contains(
                "sudo -n docker ps -aq --filter 'name=^c1$' --filter label=cvs.run-id=run-1"
            ),
            "{own}"
        );
        assert!(own.contains("echo removed") && own.contains("echo \"kept:$o\""));
        let plain = remove_verified_command("", "c1").unwrap();
        assert!(plain.contains("docker rm -f c1") && plain.contains("echo absent"));
        let list = list_per_run_command("", "alice").unwrap();
        assert!(
            list.contains("--filter label=cvs.lifetime=per_run --filter label=cvs.owner=alice")
        );
    }
}
