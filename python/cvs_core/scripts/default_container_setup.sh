#!/usr/bin/env bash
# cvs-core default container setup script: run inside each freshly launched container.
# Makes sure an OpenSSH server is available so the in-container sshd (port 2224) can start;
# images that already ship sshd are left untouched.
set -euo pipefail

if command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; then
    echo "default_container_setup: sshd already present, nothing to install"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "default_container_setup: sshd is missing and apt-get is not available;" \
         "use an image with openssh-server or set container.setup_script" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends openssh-server
