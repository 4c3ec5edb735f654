#!/usr/bin/env bash
# Install the Debian packages cvs-core's tests and demo need, when missing (root only; a no-op
# when everything is there). Used by `make test`, `make demo` and .ci/run.
#   openssh-server/-client: real sshd for the live SSH tests and the simulated nodes
#   docker.io: one dockerd per simulated node (no system daemon is started)
#   sudo, iproute2, util-linux: the multi-node harness (netns, nsenter, unshare)
#   procps: pgrep, for the checks that remote work was killed; jq for operators reading --json
#   slurmctld slurmd slurm-client munge: the harness's Slurm mode (slurmctld + munged in the
#     root namespace, slurmd + munged in every simulated node, srun/salloc/sinfo/scontrol as
#     clients) for the Slurm transport's tests; no system daemon is started (see below)
set -euo pipefail

need=()
for pair in make:make gcc:gcc /usr/sbin/sshd:openssh-server ssh:openssh-client \
            ssh-keygen:openssh-client pgrep:procps unshare:util-linux nsenter:util-linux \
            dockerd:docker.io docker:docker.io sudo:sudo ip:iproute2 jq:jq \
            srun:slurm-client /usr/sbin/slurmctld:slurmctld /usr/sbin/slurmd:slurmd \
            /usr/sbin/munged:munge; do
  tool=${pair%%:*} pkg=${pair#*:}
  command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || need+=("$pkg")
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need+=(python3-venv)
fi
[ ${#need[@]} -gt 0 ] || exit 0

if [ "$(id -u)" != 0 ]; then
  echo "install-prereqs: missing packages (${need[*]}); install them as root, or the live" \
       "tests will be skipped with a reason" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Installing docker.io, openssh-server, munge or slurmctld/slurmd must not start system
# daemons: the tests start their own. policy-rc.d tells Debian's maintainer scripts not to start
# services (munge's postinst otherwise starts a system munged: it has a key by then; the Slurm
# daemons would fail for want of /etc/slurm/slurm.conf).
made_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  made_policy=1
fi
trap '[ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT
# An existing policy-rc.d may allow starts: then stop what the install started (by the pid
# files of the packages' init scripts, only daemons that did not run before).
daemons="munged:/run/munge/munged.pid slurmctld:/run/slurmctld.pid slurmd:/run/slurmd.pid"
daemon_pid() {  # COMM PIDFILE: prints the PID when that daemon runs
  local p
  p=$(cat "$2" 2>/dev/null) || return 1
  [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$1" ] && echo "$p"
}
before=" "
for d in $daemons; do
  if daemon_pid "${d%%:*}" "${d#*:}" >/dev/null; then before+="${d%%:*} "; fi
done
echo "install-prereqs: installing ${need[*]}" >&2
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
for d in $daemons; do
  comm=${d%%:*}
  [[ $before == *" $comm "* ]] && continue
  if p=$(daemon_pid "$comm" "${d#*:}"); then
    echo "install-prereqs: stopping the system $comm the install started (pid $p)" >&2
    kill "$p" || true
  fi
done
