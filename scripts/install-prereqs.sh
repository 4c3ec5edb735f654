#!/usr/bin/env bash
# Install the Debian packages cvs-core's tests and demo need, when missing (root only; a no-op
# when everything is there). Used by `make test`, `make demo` and .ci/run.
#   openssh-server/-client: real sshd for the live SSH tests and the simulated nodes
#   docker.io: one dockerd per simulated node (no system daemon is started)
#   sudo, iproute2, util-linux: the multi-node harness (netns, nsenter, unshare)
#   procps: pgrep, for the checks that remote work was killed; jq for operators reading --json
set -euo pipefail

need=()
for pair in make:make gcc:gcc /usr/sbin/sshd:openssh-server ssh:openssh-client \
            ssh-keygen:openssh-client pgrep:procps unshare:util-linux nsenter:util-linux \
            dockerd:docker.io docker:docker.io sudo:sudo ip:iproute2 jq:jq; do
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
# Installing docker.io or openssh-server must not start system daemons: the tests start their
# own. policy-rc.d tells Debian's maintainer scripts not to start services.
made_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  made_policy=1
fi
trap '[ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT
echo "install-prereqs: installing ${need[*]}" >&2
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
