//! CVS's own `docker run` assembly (`DockerRuntime.setup_containers` + `_build_runtime_args`),
//! for the drop-in layer: explicit lists in, CVS's flag order out, every value quoted once.

use super::docker::{INFINIBAND_EXPANSION, validate_image};
use super::quote::quote;
use super::{join, privilege_words};
use crate::config::validate_container_name;
use crate::error::{Error, Result};

/// CVS's expansion, made safe on hosts without InfiniBand: CVS's version passes the unmatched
/// glob itself (`--device /dev/infiniband/*`) and docker refuses to start.
pub const INFINIBAND_EXPANSION_GUARDED: &str =
    r#"$(for dev in /dev/infiniband/*; do [ -e "$dev" ] && echo -n "--device $dev:$dev "; done)"#;

/// CVS's `runtime.args` dict, typed. Unknown keys are ignored by CVS and so are not here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CvsRuntimeArgs {
    pub volumes: Vec<String>,
    pub devices: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cap_add: Vec<String>,
    pub security_opt: Vec<String>,
    pub group_add: Vec<String>,
    pub network: Option<String>,
    pub ipc: Option<String>,
    pub ulimit: Vec<String>,
    pub privileged: bool,
}

fn flags(out: &mut Vec<String>, flag: &str, values: &[String]) {
    for v in values {
        out.push(flag.to_owned());
        out.push(v.clone());
    }
}

/// `_build_runtime_args` as argv words, in CVS's order: volumes, devices, env, cap-add,
/// security-opt, group-add, network, ipc, ulimit, privileged. (CVS's env loop iterated the
/// dict's keys as pairs and mangled them; here `env` is honoured.)
pub fn cvs_runtime_args_argv(a: &CvsRuntimeArgs) -> Vec<String> {
    let mut out = Vec::new();
    flags(&mut out, "-v", &a.volumes);
    flags(&mut out, "--device", &a.devices);
    let env: Vec<String> = a.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    flags(&mut out, "-e", &env);
    flags(&mut out, "--cap-add", &a.cap_add);
    flags(&mut out, "--security-opt", &a.security_opt);
    flags(&mut out, "--group-add", &a.group_add);
    if let Some(n) = a.network.as_ref().filter(|n| !n.is_empty()) {
        flags(&mut out, "--network", std::slice::from_ref(n));
    }
    if let Some(i) = a.ipc.as_ref().filter(|i| !i.is_empty()) {
        flags(&mut out, "--ipc", std::slice::from_ref(i));
    }
    flags(&mut out, "--ulimit", &a.ulimit);
    if a.privileged {
        out.push("--privileged".into());
    }
    out
}

/// `_build_runtime_args` as the shell text CVS appends to `docker run`.
pub fn cvs_runtime_args(a: &CvsRuntimeArgs) -> Result<String> {
    join(&cvs_runtime_args_argv(a))
}

/// CVS's `docker run -d --name <n> [--network host] -v.. -e.. <runtime args> [<expansion>]
/// <image> sleep infinity`. `--network host` leads only when `runtime.args.network` is unset,
/// as in CVS. `device_expansion` is rendered as given, and must be CVS's InfiniBand expansion
/// (byte for byte what CVS's `docker run` ends with) or its guarded form: it is shell code, so
/// no other text is accepted.
pub fn cvs_docker_run_command(
    prefix: &str,
    name: &str,
    image: &str,
    volumes: &[String],
    environment: &[(String, String)],
    args: &CvsRuntimeArgs,
    device_expansion: Option<&str>,
) -> Result<String> {
    validate_container_name(name)?;
    validate_image(image)?;
    let mut head = privilege_words(prefix)?;
    head.extend(["docker", "run", "-d", "--name", name].map(String::from));
    if args.network.as_deref().is_none_or(str::is_empty) {
        head.extend(["--network", "host"].map(String::from));
    }
    flags(&mut head, "-v", volumes);
    let env: Vec<String> = environment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    flags(&mut head, "-e", &env);
    head.extend(cvs_runtime_args_argv(args));
    let mut out = join(&head)?;
    match device_expansion {
        None | Some("") => {}
        Some(e) if e == INFINIBAND_EXPANSION || e == INFINIBAND_EXPANSION_GUARDED => {
            out.push(' ');
            out.push_str(e);
        }
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "device_expansion must be the InfiniBand expansion, not arbitrary shell code: {other:?}"
            )));
        }
    }
    out.push(' ');
    out.push_str(&quote(image)?);
    out.push_str(" sleep infinity");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn cvs_default_rendering_ends_with_the_expansion_given() {
        let args = CvsRuntimeArgs {
            devices: s(&["/dev/kfd", "/dev/dri", "/dev/infiniband"]),
            cap_add: s(&["SYS_PTRACE", "IPC_LOCK", "SYS_ADMIN"]),
            security_opt: s(&["seccomp=unconfined", "apparmor=unconfined"]),
            group_add: s(&["video"]),
            network: Some("host".into()),
            ipc: Some("host".into()),
            ulimit: s(&["memlock=-1"]),
            privileged: true,
            ..CvsRuntimeArgs::default()
        };
        let cmd = cvs_docker_run_command(
            "sudo",
            "X1",
            "rocm/cvs:latest",
            &s(&["/home/u:/workspace", "/home/u/.ssh:/host_ssh"]),
            &[
                ("GPUS".into(), "8".into()),
                ("MULTINODE".into(), "true".into()),
            ],
            &args,
            Some(INFINIBAND_EXPANSION),
        )
        .unwrap();
        // Contract §4.3's verified rendering, byte for byte.
        assert_eq!(
            cmd,
            "sudo docker run -d --name X1 -v /home/u:/workspace -v /home/u/.ssh:/host_ssh \
             -e GPUS=8 -e MULTINODE=true --device /dev/kfd --device /dev/dri --device \
             /dev/infiniband --cap-add SYS_PTRACE --cap-add IPC_LOCK --cap-add SYS_ADMIN \
             --security-opt seccomp=unconfined --security-opt apparmor=unconfined --group-add \
             video --network host --ipc host --ulimit memlock=-1 --privileged \
             $(for dev in /dev/infiniband/*; do echo -n \"--device $dev:$dev \"; done) \
             rocm/cvs:latest sleep infinity"
        );
        let guarded = cvs_docker_run_command(
            "sudo",
            "X1",
            "img",
            &[],
            &[],
            &CvsRuntimeArgs::default(),
            Some(INFINIBAND_EXPANSION_GUARDED),
        )
        .unwrap();
        assert_eq!(
            guarded,
            "sudo docker run -d --name X1 --network host \
             $(for dev in /dev/infiniband/*; do [ -e \"$dev\" ] && echo -n \"--device $dev:$dev \"; done) \
             img sleep infinity"
        );
    }

    #[test]
    fn network_leads_only_when_unset_and_values_are_quoted() {
        let cmd = cvs_docker_run_command(
            "",
            "c1",
            "img",
            &s(&["/data dir:/d"]),
            &[("P".into(), "$HOME".into())],
            &CvsRuntimeArgs::default(),
            None,
        )
        .unwrap();
        assert_eq!(
            cmd,
            "docker run -d --name c1 --network host -v '/data dir:/d' -e 'P=$HOME' img sleep infinity"
        );
        let words = shell_words::split(&cmd).unwrap();
        assert!(words.contains(&"P=$HOME".to_owned()));
    }

    #[test]
    fn refuses_arbitrary_shell_and_bad_names() {
        let a = CvsRuntimeArgs::default();
        assert!(
            cvs_docker_run_command("", "c1", "img", &[], &[], &a, Some("$(rm -rf /)")).is_err()
        );
        assert!(cvs_docker_run_command("", "-c", "img", &[], &[], &a, None).is_err());
        assert!(cvs_docker_run_command("", "c1", "-img", &[], &[], &a, None).is_err());
        let env = CvsRuntimeArgs {
            env: vec![("A".into(), "1".into())],
            ..CvsRuntimeArgs::default()
        };
        assert_eq!(cvs_runtime_args(&env).unwrap(), "-e A=1");
    }
}
