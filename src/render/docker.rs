//! Docker command renderers: CVS's `runtimes/docker.py` commands and the container
//! orchestrator's sshd commands, each taking the privilege prefix CVS main gets from
//! `sudo_prefix()` (fa4ca32e hard-codes `sudo`).

use super::privilege_words;
use super::quote::{join, join_static, quote, reject_nul};
use crate::config::pyrepr::str_repr;
use crate::config::{ContainerSpec, validate_container_name};
use crate::error::{Error, Result};

/// CVS's device expansion: the remote host shell adds one `--device` per infiniband device that
/// exists there. It is a constant fragment (never a user value), so it is inserted unquoted.
pub const INFINIBAND_EXPANSION: &str =
    r#"$(for dev in /dev/infiniband/*; do echo -n "--device $dev:$dev "; done)"#;

/// How to render `docker run` beyond what the [`ContainerSpec`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Privilege prefix, split into words: `"sudo"` (CVS fa4ca32e), `"sudo -n "` (CVS main) or
    /// `""` for none.
    pub prefix: String,
    /// Add [`INFINIBAND_EXPANSION`] before the image, as CVS's orchestrator always does. Only the
    /// command string carries it: it is shell code, not an argv word.
    pub infiniband_expansion: bool,
    /// `--label k=v` pairs (e.g. to mark containers cvs-core owns), after the run arguments.
    pub labels: Vec<(String, String)>,
    /// `--pull <policy>` (`missing`, `never`, `always`); `None` leaves docker's default.
    pub pull: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            prefix: "sudo".to_owned(),
            infiniband_expansion: false,
            labels: Vec::new(),
            pull: None,
        }
    }
}

/// An image reference must be one argv word that docker cannot mistake for an option.
pub(super) fn validate_image(image: &str) -> Result<()> {
    if image.is_empty()
        || image.starts_with('-')
        || image.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::InvalidArgument(format!(
            "invalid image {}: must be non-empty, not start with '-', and contain no whitespace \
             or control characters",
            str_repr(image)
        )));
    }
    Ok(())
}

/// `K` of `-e K=V` / `--label K=V`: an empty key or one holding `=` would be parsed as another
/// key; whitespace is refused so keys stay what they look like in logs.
fn validate_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() || key.contains('=') || key.chars().any(char::is_whitespace) {
        return Err(Error::InvalidArgument(format!(
            "invalid {what} key {}: must be non-empty with no '=' or whitespace",
            str_repr(key)
        )));
    }
    Ok(())
}

/// The prefix words followed by `docker` and `rest`.
fn docker_words(prefix: &str, rest: &[&str]) -> Result<Vec<String>> {
    let mut argv = privilege_words(prefix)?;
    argv.push("docker".to_owned());
    argv.extend(rest.iter().map(|w| (*w).to_owned()));
    Ok(argv)
}

/// `docker run` as (everything before the image, `[image, "sleep", "infinity"]`), so the command
/// string can put the device expansion between the two.
fn run_parts(spec: &ContainerSpec, opts: &RunOptions) -> Result<(Vec<String>, Vec<String>)> {
    let image = spec.image.as_deref().ok_or_else(|| {
        Error::InvalidArgument("cannot render docker run: the container spec has no image".into())
    })?;
    let name = spec.name.as_deref().ok_or_else(|| {
        Error::InvalidArgument("cannot render docker run: the container spec has no name".into())
    })?;
    validate_container_name(name)?;
    validate_image(image)?;
    let a = &spec.run_args;
    for (k, _) in &a.environment {
        validate_key("environment", k)?;
    }
    for (k, _) in &opts.labels {
        validate_key("label", k)?;
    }

    let mut argv = docker_words(&opts.prefix, &["run", "-d"])?;
    if let Some(policy) = &opts.pull {
        if !matches!(policy.as_str(), "missing" | "never" | "always") {
            return Err(Error::InvalidArgument(format!(
                "pull policy must be 'missing', 'never' or 'always', got {}",
                str_repr(policy)
            )));
        }
        argv.extend(["--pull".to_owned(), policy.clone()]);
    }
    argv.extend(["--name".to_owned(), name.to_owned()]);
    let mut flags = |flag: &str, values: &[String]| {
        for v in values {
            argv.push(flag.to_owned());
            argv.push(v.clone());
        }
    };
    flags("-v", &a.volumes);
    let env: Vec<String> = a
        .environment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    flags("-e", &env);
    flags("--device", &a.devices);
    flags("--cap-add", &a.capabilities);
    flags("--security-opt", &a.security_opts);
    flags("--group-add", &a.groups);
    // CVS emits these only when truthy; an empty string means "not set" there too.
    let network: Vec<String> = a
        .network
        .iter()
        .filter(|n| !n.is_empty())
        .cloned()
        .collect();
    flags("--network", &network);
    let ipc: Vec<String> = a.ipc.iter().filter(|i| !i.is_empty()).cloned().collect();
    flags("--ipc", &ipc);
    flags("--ulimit", &a.ulimits);
    let labels: Vec<String> = opts
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if a.privileged {
        argv.push("--privileged".to_owned());
    }
    for label in labels {
        argv.push("--label".to_owned());
        argv.push(label);
    }
    for word in &argv {
        reject_nul(word)?;
    }
    let tail = vec![image.to_owned(), "sleep".to_owned(), "infinity".to_owned()];
    Ok((argv, tail))
}

/// The `docker run` argv (prefix words first; never `--gpus`). It has no infiniband expansion:
/// that is shell code, present only in [`docker_run_command`].
pub fn docker_run_argv(spec: &ContainerSpec, opts: &RunOptions) -> Result<Vec<String>> {
    let (mut argv, tail) = run_parts(spec, opts)?;
    argv.extend(tail);
    Ok(argv)
}

/// The `docker run` command line a host shell receives: CVS's exact string for simple values.
pub fn docker_run_command(spec: &ContainerSpec, opts: &RunOptions) -> Result<String> {
    let (head, tail) = run_parts(spec, opts)?;
    let mut out = join(&head)?;
    if opts.infiniband_expansion {
        out.push(' ');
        out.push_str(INFINIBAND_EXPANSION);
    }
    out.push(' ');
    out.push_str(&join(&tail)?);
    Ok(out)
}

/// `<prefix> docker exec [-i] <name> bash -c <cmd>`: the `bash -c` wrap (CVS #178) keeps shell
/// metacharacters of `cmd` inside the container.
pub fn docker_exec_command(
    prefix: &str,
    name: &str,
    cmd: &str,
    interactive: bool,
) -> Result<String> {
    validate_container_name(name)?;
    let mut argv = docker_words(prefix, &["exec"])?;
    if interactive {
        argv.push("-i".to_owned());
    }
    argv.extend([
        name.to_owned(),
        "bash".to_owned(),
        "-c".to_owned(),
        cmd.to_owned(),
    ]);
    join(&argv)
}

/// Lists the container's name when it is running (CVS compares the output to the name).
pub fn is_running_command(prefix: &str, name: &str) -> Result<String> {
    validate_container_name(name)?;
    let filter = format!("name=^{name}$");
    join(&docker_words(
        prefix,
        &[
            "ps",
            "--filter",
            &filter,
            "--filter",
            "status=running",
            "--format",
            "{{.Names}}",
        ],
    )?)
}

/// Prints `<container image id>|<local image id>`, either side empty when unreadable. The
/// quoted words sit inside `"$(...)"`; command substitution starts a new quoting context, so
/// single-quoted words there mean what they mean at top level.
pub fn image_sha_status_command(prefix: &str, name: &str, image: &str) -> Result<String> {
    validate_container_name(name)?;
    validate_image(image)?;
    let inspect = |format: &str, target: &str| -> Result<String> {
        join(&docker_words(
            prefix,
            &["inspect", "--format", format, target],
        )?)
    };
    Ok(format!(
        "echo \"$({} 2>/dev/null)|$({} 2>/dev/null)\"",
        inspect("{{.Image}}", name)?,
        inspect("{{.Id}}", image)?
    ))
}

/// `docker rm -f <name> || true`; `quiet` also drops stderr (CVS's teardown form).
pub fn remove_command(prefix: &str, name: &str, quiet: bool) -> Result<String> {
    validate_container_name(name)?;
    let rm = join(&docker_words(prefix, &["rm", "-f", name])?)?;
    Ok(if quiet {
        format!("{rm} 2>/dev/null || true")
    } else {
        format!("{rm} || true")
    })
}

/// Exit 0 when `image` (as `repository:tag`) is present locally. The pattern is CVS's regex
/// `^<image>$`, so an untagged reference never matches, as in CVS.
pub fn image_exists_command(prefix: &str, image: &str) -> Result<String> {
    validate_image(image)?;
    let images = join(&docker_words(
        prefix,
        &["images", "--format", "{{.Repository}}:{{.Tag}}"],
    )?)?;
    let pattern = format!("^{image}$");
    let grep = join(&["grep".to_owned(), "-q".to_owned(), pattern])?;
    Ok(format!("{images} | {grep}"))
}

/// `docker load < <tar>`: the tarball is read by the host shell, then streamed to docker.
pub fn load_image_command(prefix: &str, tar_path: &str) -> Result<String> {
    if tar_path.is_empty() {
        return Err(Error::InvalidArgument(
            "cannot render docker load: the image tar path is empty".into(),
        ));
    }
    let load = join(&docker_words(prefix, &["load"])?)?;
    Ok(format!("{load} < {}", quote(tar_path)?))
}

/// Exit 0 when an sshd for `port` runs in the container. `[s]` keeps pgrep from matching its
/// own `bash -c` parent, whose command line holds this pattern.
pub fn sshd_precheck_command(port: u16) -> String {
    let pattern = format!("[s]shd.*{port}");
    format!(
        "{} > /dev/null 2>&1",
        join_static(&["pgrep", "-f", &pattern])
    )
}

/// CVS's six sshd setup commands, in order: install the host's mounted keys as root's, then
/// start sshd on `port` (CVS hard-codes 2224).
pub fn sshd_setup_commands(port: u16) -> Vec<String> {
    let port_flag = format!("-p{port}");
    vec![
        join_static(&["mkdir", "-p", "/root/.ssh"]),
        join_static(&["bash", "-c", "cp -r /host_ssh/* /root/.ssh/"]),
        join_static(&["chown", "-R", "root:root", "/root/.ssh"]),
        join_static(&[
            "bash",
            "-c",
            "chmod 700 /root/.ssh && chmod 600 /root/.ssh/*",
        ]),
        join_static(&["mkdir", "-p", "/run/sshd"]),
        join_static(&["/usr/sbin/sshd", &port_flag]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        DEFAULT_CAPABILITIES, DEFAULT_DEVICES, DEFAULT_ENVIRONMENT, DEFAULT_GROUPS,
        DEFAULT_SECURITY_OPTS, DEFAULT_ULIMITS, Lifetime, RunArgs, default_volumes,
    };
    use crate::render::quote::tests::shell_string;
    use proptest::prelude::*;

    const PREFIXES: [&str; 3] = ["sudo", "sudo -n ", ""];

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    /// CVS's default spec for control user `user`, built by hand.
    fn default_spec(user: &str, image: &str, name: &str) -> ContainerSpec {
        ContainerSpec {
            lifetime: Lifetime::PerRun,
            image: Some(image.to_owned()),
            name: Some(name.to_owned()),
            setup_script: "/pkg/default_container_setup.sh".to_owned(),
            image_tar: None,
            runtime: "docker".to_owned(),
            use_defaults: true,
            run_args: RunArgs {
                volumes: default_volumes(user),
                devices: strings(&DEFAULT_DEVICES),
                capabilities: strings(&DEFAULT_CAPABILITIES),
                security_opts: strings(&DEFAULT_SECURITY_OPTS),
                groups: strings(&DEFAULT_GROUPS),
                ulimits: strings(&DEFAULT_ULIMITS),
                environment: DEFAULT_ENVIRONMENT
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                network: Some("host".to_owned()),
                ipc: Some("host".to_owned()),
                privileged: true,
            },
        }
    }

    fn bare_spec(image: &str, name: &str) -> ContainerSpec {
        let mut spec = default_spec("u", image, name);
        spec.run_args = RunArgs {
            volumes: vec![],
            devices: vec![],
            capabilities: vec![],
            security_opts: vec![],
            groups: vec![],
            ulimits: vec![],
            environment: vec![],
            network: None,
            ipc: None,
            privileged: false,
        };
        spec
    }

    fn opts(prefix: &str, expansion: bool) -> RunOptions {
        RunOptions {
            prefix: prefix.to_owned(),
            infiniband_expansion: expansion,
            labels: vec![],
            pull: None,
        }
    }

    fn is_invalid<T: std::fmt::Debug>(r: Result<T>) -> bool {
        matches!(r, Err(Error::InvalidArgument(_)))
    }

    #[test]
    fn run_options_default() {
        let d = RunOptions::default();
        assert_eq!(d.prefix, "sudo");
        assert!(!d.infiniband_expansion);
        assert!(d.labels.is_empty());
    }

    /// CVS's verified rendering for a default config (contract §4.3), verbatim, with `--name X`.
    const CVS_VERIFIED_RUN: &str = "sudo docker run -d --name X -v /home/u:/workspace -v /home/u/.ssh:/host_ssh -e GPUS=8 -e MULTINODE=true --device /dev/kfd --device /dev/dri --device /dev/infiniband --cap-add SYS_PTRACE --cap-add IPC_LOCK --cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined --group-add video --network host --ipc host --ulimit memlock=-1 --privileged $(for dev in /dev/infiniband/*; do echo -n \"--device $dev:$dev \"; done) rocm/cvs:latest sleep infinity";

    #[test]
    fn run_command_is_cvs_verified_rendering() {
        // A one-character name is below Docker's grammar (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`), and names
        // are validated before rendering, so "X" itself is refused...
        let spec = default_spec("u", "rocm/cvs:latest", "X");
        assert!(is_invalid(docker_run_command(&spec, &opts("sudo", true))));
        // ...and CVS's string is reproduced exactly for any valid name.
        for name in ["X1", "root_rocm_cvs_latest"] {
            let spec = default_spec("u", "rocm/cvs:latest", name);
            assert_eq!(
                docker_run_command(&spec, &opts("sudo", true)).unwrap(),
                CVS_VERIFIED_RUN.replace("--name X ", &format!("--name {name} "))
            );
        }
    }

    #[test]
    fn run_command_prefixes_and_no_expansion() {
        let spec = bare_spec("img:1", "c1");
        assert_eq!(
            docker_run_command(&spec, &opts("sudo", false)).unwrap(),
            "sudo docker run -d --name c1 img:1 sleep infinity"
        );
        assert_eq!(
            docker_run_command(&spec, &opts("sudo -n ", false)).unwrap(),
            "sudo -n docker run -d --name c1 img:1 sleep infinity"
        );
        assert_eq!(
            docker_run_command(&spec, &opts("", false)).unwrap(),
            "docker run -d --name c1 img:1 sleep infinity"
        );
        assert_eq!(
            docker_run_command(&spec, &opts("", true)).unwrap(),
            format!("docker run -d --name c1 {INFINIBAND_EXPANSION} img:1 sleep infinity")
        );
        assert_eq!(
            docker_run_argv(&spec, &opts("sudo -n ", true)).unwrap(),
            strings(&[
                "sudo", "-n", "docker", "run", "-d", "--name", "c1", "img:1", "sleep", "infinity"
            ])
        );
    }

    #[test]
    fn run_argv_order_quoting_and_labels() {
        let mut spec = bare_spec("reg.io/a/b@sha256:abc", "c1");
        let a = &mut spec.run_args;
        a.volumes = strings(&["/data dir:/data"]);
        a.environment = vec![("X".into(), "a b".into()), ("Y".into(), "it's".into())];
        a.devices = strings(&["/dev/kfd"]);
        a.capabilities = strings(&["NET_ADMIN"]);
        a.security_opts = strings(&["label=disable"]);
        a.groups = strings(&["render"]);
        a.network = Some("bridge".into());
        a.ipc = Some(String::new());
        a.ulimits = strings(&["stack=67108864"]);
        a.privileged = true;
        let o = RunOptions {
            prefix: "sudo".into(),
            infiniband_expansion: true,
            labels: vec![
                ("cvs.owner".into(), "cvs core".into()),
                ("cvs.run".into(), "1".into()),
            ],
            pull: None,
        };
        assert_eq!(
            docker_run_argv(&spec, &o).unwrap(),
            strings(&[
                "sudo",
                "docker",
                "run",
                "-d",
                "--name",
                "c1",
                "-v",
                "/data dir:/data",
                "-e",
                "X=a b",
                "-e",
                "Y=it's",
                "--device",
                "/dev/kfd",
                "--cap-add",
                "NET_ADMIN",
                "--security-opt",
                "label=disable",
                "--group-add",
                "render",
                "--network",
                "bridge",
                "--ulimit",
                "stack=67108864",
                "--privileged",
                "--label",
                "cvs.owner=cvs core",
                "--label",
                "cvs.run=1",
                "reg.io/a/b@sha256:abc",
                "sleep",
                "infinity",
            ])
        );
        assert_eq!(
            docker_run_command(&spec, &o).unwrap(),
            format!(
                "sudo docker run -d --name c1 -v '/data dir:/data' -e 'X=a b' -e 'Y=it'\"'\"'s' \
                 --device /dev/kfd --cap-add NET_ADMIN --security-opt label=disable --group-add \
                 render --network bridge --ulimit stack=67108864 --privileged --label \
                 'cvs.owner=cvs core' --label cvs.run=1 {INFINIBAND_EXPANSION} \
                 reg.io/a/b@sha256:abc sleep infinity"
            )
        );
    }

    #[test]
    fn run_never_emits_gpus() {
        let spec = default_spec("u", "rocm/cvs:latest", "cvs");
        let cmd = docker_run_command(&spec, &opts("sudo", true)).unwrap();
        assert!(!cmd.contains("--gpus"), "{cmd}");
        let argv = docker_run_argv(&spec, &opts("sudo", true)).unwrap();
        assert!(!argv.iter().any(|w| w.contains("--gpus")));
        assert!(!argv.iter().any(|w| w.contains("infiniband/*")));
    }

    #[test]
    fn run_requires_image_and_name() {
        let mut spec = bare_spec("img", "c1");
        spec.image = None;
        let err = docker_run_argv(&spec, &RunOptions::default()).unwrap_err();
        assert!(err.to_string().contains("no image"), "{err}");
        let mut spec = bare_spec("img", "c1");
        spec.name = None;
        let err = docker_run_command(&spec, &RunOptions::default()).unwrap_err();
        assert!(err.to_string().contains("no name"), "{err}");
    }

    #[test]
    fn run_rejects_bad_values() {
        let o = RunOptions::default();
        for name in ["-x", "a;b", "", "a", "a b", "$(x)"] {
            let spec = bare_spec("img", name);
            assert!(is_invalid(docker_run_argv(&spec, &o)), "{name:?}");
            assert!(is_invalid(docker_run_command(&spec, &o)), "{name:?}");
        }
        for image in ["", "a b", "a\tb", "a\nb", "-img", "a\u{7}b"] {
            let spec = bare_spec(image, "c1");
            assert!(is_invalid(docker_run_argv(&spec, &o)), "{image:?}");
            assert!(is_invalid(docker_run_command(&spec, &o)), "{image:?}");
        }
        let mut spec = bare_spec("img", "c1");
        spec.run_args.volumes = strings(&["/a\0:/b"]);
        assert!(is_invalid(docker_run_argv(&spec, &o)));
        assert!(is_invalid(docker_run_command(&spec, &o)));
        let mut spec = bare_spec("img", "c1");
        spec.run_args.environment = vec![("K".into(), "v\0".into())];
        assert!(is_invalid(docker_run_argv(&spec, &o)));
        for key in ["", "A=B", "A B"] {
            let mut spec = bare_spec("img", "c1");
            spec.run_args.environment = vec![(key.into(), "v".into())];
            assert!(is_invalid(docker_run_argv(&spec, &o)), "env key {key:?}");
        }
        let spec = bare_spec("img", "c1");
        for key in ["", "a=b", "a b", "a\nb"] {
            let o = RunOptions {
                labels: vec![(key.into(), "v".into())],
                ..RunOptions::default()
            };
            assert!(is_invalid(docker_run_argv(&spec, &o)), "label key {key:?}");
        }
        let o = RunOptions {
            labels: vec![("k".into(), "v\0".into())],
            ..RunOptions::default()
        };
        assert!(is_invalid(docker_run_command(&spec, &o)));
        let o = RunOptions {
            prefix: "sudo 'x".into(),
            ..RunOptions::default()
        };
        assert!(is_invalid(docker_run_command(&spec, &o)));
    }

    #[test]
    fn exec_command_exact() {
        let want = [
            "sudo docker exec c1 bash -c 'echo hi; ls'",
            "sudo -n docker exec c1 bash -c 'echo hi; ls'",
            "docker exec c1 bash -c 'echo hi; ls'",
        ];
        for (prefix, want) in PREFIXES.iter().zip(want) {
            assert_eq!(
                docker_exec_command(prefix, "c1", "echo hi; ls", false).unwrap(),
                want
            );
        }
        assert_eq!(
            docker_exec_command("sudo", "c1", "hostname", true).unwrap(),
            "sudo docker exec -i c1 bash -c hostname"
        );
        assert_eq!(
            docker_exec_command("", "c1", "it's", true).unwrap(),
            r#"docker exec -i c1 bash -c 'it'"'"'s'"#
        );
        assert_eq!(
            docker_exec_command("sudo", "cvs_c", "", false).unwrap(),
            "sudo docker exec cvs_c bash -c ''"
        );
    }

    #[test]
    fn exec_command_rejects_bad_input() {
        for name in ["-x", "a;b", "", "a"] {
            assert!(
                is_invalid(docker_exec_command("sudo", name, "ls", false)),
                "{name:?}"
            );
        }
        assert!(is_invalid(docker_exec_command("sudo", "c1", "ls\0", false)));
        assert!(is_invalid(docker_exec_command(
            "sudo \"", "c1", "ls", false
        )));
    }

    #[test]
    fn is_running_command_exact() {
        let want = [
            "sudo docker ps --filter 'name=^c1$' --filter status=running --format '{{.Names}}'",
            "sudo -n docker ps --filter 'name=^c1$' --filter status=running --format '{{.Names}}'",
            "docker ps --filter 'name=^c1$' --filter status=running --format '{{.Names}}'",
        ];
        for (prefix, want) in PREFIXES.iter().zip(want) {
            assert_eq!(is_running_command(prefix, "c1").unwrap(), want);
        }
        for name in ["-x", "a;b", ""] {
            assert!(is_invalid(is_running_command("sudo", name)), "{name:?}");
        }
    }

    /// Splits `echo "$(A 2>/dev/null)|$(B 2>/dev/null)"` into the words of A and of B.
    fn parse_sha_status(cmd: &str) -> (Vec<String>, Vec<String>) {
        let inner = cmd
            .strip_prefix("echo \"$(")
            .and_then(|s| s.strip_suffix(" 2>/dev/null)\""))
            .unwrap_or_else(|| panic!("unexpected shape: {cmd}"));
        let parts: Vec<&str> = inner.split(" 2>/dev/null)|$(").collect();
        assert_eq!(parts.len(), 2, "{cmd}");
        (
            shell_words::split(parts[0]).unwrap(),
            shell_words::split(parts[1]).unwrap(),
        )
    }

    #[test]
    fn image_sha_status_command_exact() {
        let want = [
            r#"echo "$(sudo docker inspect --format '{{.Image}}' c1 2>/dev/null)|$(sudo docker inspect --format '{{.Id}}' rocm/cvs:latest 2>/dev/null)""#,
            r#"echo "$(sudo -n docker inspect --format '{{.Image}}' c1 2>/dev/null)|$(sudo -n docker inspect --format '{{.Id}}' rocm/cvs:latest 2>/dev/null)""#,
            r#"echo "$(docker inspect --format '{{.Image}}' c1 2>/dev/null)|$(docker inspect --format '{{.Id}}' rocm/cvs:latest 2>/dev/null)""#,
        ];
        for (prefix, want) in PREFIXES.iter().zip(want) {
            let got = image_sha_status_command(prefix, "c1", "rocm/cvs:latest").unwrap();
            assert_eq!(got, want);
            let mut p = privilege_words(prefix).unwrap();
            p.push("docker".into());
            let (a, b) = parse_sha_status(&got);
            let mut want_a = p.clone();
            want_a.extend(strings(&["inspect", "--format", "{{.Image}}", "c1"]));
            let mut want_b = p;
            want_b.extend(strings(&[
                "inspect",
                "--format",
                "{{.Id}}",
                "rocm/cvs:latest",
            ]));
            assert_eq!((a, b), (want_a, want_b));
        }
    }

    #[test]
    fn image_sha_status_command_quotes_odd_images() {
        let image = r#"we'ird"$(x)`y`;z"#;
        let got = image_sha_status_command("sudo", "c1", image).unwrap();
        let (_, b) = parse_sha_status(&got);
        assert_eq!(
            b,
            strings(&["sudo", "docker", "inspect", "--format", "{{.Id}}", image])
        );
    }

    #[test]
    fn image_sha_status_command_rejects_bad_input() {
        for name in ["-x", "a;b", ""] {
            assert!(
                is_invalid(image_sha_status_command("sudo", name, "img")),
                "{name:?}"
            );
        }
        for image in ["", "a b", "-i"] {
            assert!(
                is_invalid(image_sha_status_command("sudo", "c1", image)),
                "{image:?}"
            );
        }
    }

    #[test]
    fn remove_command_exact() {
        let loud = [
            "sudo docker rm -f c1 || true",
            "sudo -n docker rm -f c1 || true",
            "docker rm -f c1 || true",
        ];
        let quiet = [
            "sudo docker rm -f c1 2>/dev/null || true",
            "sudo -n docker rm -f c1 2>/dev/null || true",
            "docker rm -f c1 2>/dev/null || true",
        ];
        for ((prefix, loud), quiet) in PREFIXES.iter().zip(loud).zip(quiet) {
            assert_eq!(remove_command(prefix, "c1", false).unwrap(), loud);
            assert_eq!(remove_command(prefix, "c1", true).unwrap(), quiet);
        }
        for name in ["-x", "a;b", ""] {
            assert!(is_invalid(remove_command("sudo", name, true)), "{name:?}");
        }
    }

    #[test]
    fn image_exists_command_exact() {
        let want = [
            "sudo docker images --format '{{.Repository}}:{{.Tag}}' | grep -q '^rocm/cvs:latest$'",
            "sudo -n docker images --format '{{.Repository}}:{{.Tag}}' | grep -q '^rocm/cvs:latest$'",
            "docker images --format '{{.Repository}}:{{.Tag}}' | grep -q '^rocm/cvs:latest$'",
        ];
        for (prefix, want) in PREFIXES.iter().zip(want) {
            assert_eq!(
                image_exists_command(prefix, "rocm/cvs:latest").unwrap(),
                want
            );
        }
        for image in ["", "a b", "-i"] {
            assert!(is_invalid(image_exists_command("sudo", image)), "{image:?}");
        }
    }

    #[test]
    fn load_image_command_exact() {
        let want = [
            "sudo docker load < /tmp/img.tar",
            "sudo -n docker load < /tmp/img.tar",
            "docker load < /tmp/img.tar",
        ];
        for (prefix, want) in PREFIXES.iter().zip(want) {
            assert_eq!(load_image_command(prefix, "/tmp/img.tar").unwrap(), want);
        }
        assert_eq!(
            load_image_command("sudo", "/tmp/my img;x.tar").unwrap(),
            "sudo docker load < '/tmp/my img;x.tar'"
        );
        assert!(is_invalid(load_image_command("sudo", "")));
        assert!(is_invalid(load_image_command("sudo", "/a\0")));
    }

    #[test]
    fn sshd_commands_exact() {
        assert_eq!(
            sshd_precheck_command(2224),
            "pgrep -f '[s]shd.*2224' > /dev/null 2>&1"
        );
        assert_eq!(
            sshd_precheck_command(22),
            "pgrep -f '[s]shd.*22' > /dev/null 2>&1"
        );
        assert_eq!(
            sshd_setup_commands(2224),
            strings(&[
                "mkdir -p /root/.ssh",
                "bash -c 'cp -r /host_ssh/* /root/.ssh/'",
                "chown -R root:root /root/.ssh",
                "bash -c 'chmod 700 /root/.ssh && chmod 600 /root/.ssh/*'",
                "mkdir -p /run/sshd",
                "/usr/sbin/sshd -p2224",
            ])
        );
        assert_eq!(sshd_setup_commands(2022)[5], "/usr/sbin/sshd -p2022");
    }

    fn prefix_strategy() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["sudo", "sudo -n ", "", "sudo -n -E"]).prop_map(str::to_owned)
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9][a-zA-Z0-9_.-]{1,16}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn exec_command_round_trips(
            prefix in prefix_strategy(),
            name in name_strategy(),
            cmd in shell_string(),
            interactive in any::<bool>(),
        ) {
            let out = docker_exec_command(&prefix, &name, &cmd, interactive).unwrap();
            let mut want = privilege_words(&prefix).unwrap();
            want.extend(strings(&["docker", "exec"]));
            if interactive {
                want.push("-i".into());
            }
            want.extend([name, "bash".into(), "-c".into(), cmd]);
            prop_assert_eq!(shell_words::split(&out).unwrap(), want);
        }

        #[test]
        fn run_command_round_trips_to_its_argv(
            prefix in prefix_strategy(),
            name in name_strategy(),
            volumes in proptest::collection::vec(shell_string(), 0..4),
            env in proptest::collection::vec(("[A-Z_][A-Z0-9_]{0,8}", shell_string()), 0..4),
            labels in proptest::collection::vec(("[a-z][a-z0-9._-]{0,10}", shell_string()), 0..4),
            devices in proptest::collection::vec(shell_string(), 0..3),
            network in proptest::option::of(shell_string()),
            privileged in any::<bool>(),
        ) {
            let mut spec = bare_spec("rocm/cvs:latest", &name);
            spec.run_args.volumes = volumes;
            spec.run_args.environment = env;
            spec.run_args.devices = devices;
            spec.run_args.network = network;
            spec.run_args.privileged = privileged;
            let o = RunOptions { prefix, infiniband_expansion: false, labels, pull: None };
            let argv = docker_run_argv(&spec, &o).unwrap();
            let cmd = docker_run_command(&spec, &o).unwrap();
            prop_assert_eq!(shell_words::split(&cmd).unwrap(), argv);
        }

        #[test]
        fn sha_status_round_trips(
            name in name_strategy(),
            image in "[a-zA-Z0-9/:@._'\"$()`;|&<>*?!^#~{}=\\\\-]{1,24}",
        ) {
            prop_assume!(!image.starts_with('-'));
            let cmd = image_sha_status_command("sudo -n ", &name, &image).unwrap();
            let (a, b) = parse_sha_status(&cmd);
            prop_assert_eq!(a, strings(&["sudo", "-n", "docker", "inspect", "--format", "{{.Image}}", &name]));
            prop_assert_eq!(b, strings(&["sudo", "-n", "docker", "inspect", "--format", "{{.Id}}", &image]));
        }
    }
}
