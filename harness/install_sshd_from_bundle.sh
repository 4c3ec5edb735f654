#!/bin/sh
# install_sshd_from_bundle.sh [BUNDLE]: install OpenSSH's sshd inside a container from the docker
# harness's local bundle, without apt or any network (the nodes have no route out).
#
#   BUNDLE defaults to $CVS_SSHD_BUNDLE, else /run/cvs/sshd-bundle.tar: every harness node has
#   its work directory at /run/cvs, so a container started with `-v /run/cvs:/run/cvs:ro` can
#   run `sh /run/cvs/install_sshd_from_bundle.sh` from its setup script.
#
# It only ADDS files: anything the image already has (its libc, an sshd_config, host keys) is
# kept, so the bundle, built from the harness host's binaries, is meant for images of the same
# Debian release (the harness's cvs-test images are). Then it creates sshd's privilege-separation
# user and /run/sshd, generates missing host keys (the bundle ships an ed25519 key signed by the
# harness host CA, so known_hosts' @cert-authority line vouches for it), and checks the config
# with `sshd -t`. Start it afterwards with e.g. `/usr/sbin/sshd -p 2224`.
#
# POSIX sh, not bash: it must run in images whose only shell is dash/busybox sh.
set -eu
# dash (Debian's sh) has no pipefail; take it where the shell has it. No pipelines below anyway.
# shellcheck disable=SC3040  # guarded: only where the shell supports it
if (set -o pipefail) 2>/dev/null; then set -o pipefail; fi

me=install_sshd_from_bundle
fail() { echo "$me: $*" >&2; exit 1; }

BUNDLE=${1:-${CVS_SSHD_BUNDLE:-/run/cvs/sshd-bundle.tar}}
[ "$(id -u)" = 0 ] || fail "must run as root"
[ -r "$BUNDLE" ] || fail "bundle $BUNDLE is not readable (start the container with -v /run/cvs:/run/cvs:ro)"
command -v tar >/dev/null 2>&1 || fail "tar is needed to unpack $BUNDLE"

stage=$(mktemp -d /tmp/cvs-sshd-bundle.XXXXXX)
trap 'rm -rf "$stage"' EXIT
tar -xf "$BUNDLE" -C "$stage"
[ -f "$stage/etc/ssh/cvs-sshd-bundle" ] || fail "$BUNDLE is not a cvs-core sshd bundle"

added=0
kept=0
# Paths in the bundle contain no whitespace (binaries, libs, /etc/ssh files).
for f in $(cd "$stage" && find . \( -type f -o -type l \) -print); do
  f=${f#./}
  if [ -e "/$f" ] || [ -L "/$f" ]; then
    kept=$((kept + 1))
    continue
  fi
  mkdir -p "/$(dirname "$f")"
  cp -a "$stage/$f" "/$f"
  added=$((added + 1))
done

# privilege-separation user (sshd refuses to start without it)
if ! grep -q '^sshd:' /etc/passwd; then
  uid=100
  while grep -q "^[^:]*:[^:]*:$uid:" /etc/passwd; do uid=$((uid + 1)); done
  echo "sshd:x:$uid:65534::/run/sshd:/usr/sbin/nologin" >>/etc/passwd
fi
mkdir -p /run/sshd /root/.ssh
chmod 755 /run/sshd
chmod 700 /root/.ssh

# host keys the image does not have yet (as an openssh-server package install would do)
/usr/bin/ssh-keygen -A >/dev/null
/usr/sbin/sshd -t || fail "sshd -t rejected the installed configuration"
echo "$me: sshd installed ($added files added, $kept already present); start it with /usr/sbin/sshd -p PORT"
