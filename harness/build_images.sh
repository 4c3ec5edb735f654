#!/bin/bash
# build_images.sh OUTDIR: build the docker harness's test images and sshd bundle WITHOUT any
# registry or network: host binaries + their shared libraries (found with ldd) are copied into
# a rootfs that `docker import` turns into an image (harness/docker_cluster.py imports them and
# caches a `docker save` of the result, so this runs once per cache key).
#
# Writes into OUTDIR:
#   with-sshd.tar      rootfs tar: shell tools + OpenSSH server (sshd, ssh-keygen, sftp-server)
#   no-sshd.tar        rootfs tar: the same tools, no sshd (for "setup script installs sshd")
#   variant.tar        with-sshd plus /etc/cvs-variant: different content for the SAME tag
#                      (image-skew tests: import it on one node under cvs-test/with-sshd)
#   sshd-bundle.tar    sshd, ssh-keygen, sftp-server, their libs, /etc/ssh/moduli, a minimal
#                      sshd_config and a CA-signed host key, laid out relative to /
#   install_sshd_from_bundle.sh   installs the bundle inside a container (copied from harness/)
#   host_ca, host_ca.pub          host-certificate CA: the images' and bundle's host keys are
#                      signed by it, so one `@cert-authority` known_hosts line lets ssh check the
#                      host key of ANY in-container sshd strictly (no accept-new needed)
# Nothing here needs a running docker. Binaries come from this host, so the images and the
# bundle are only meant for this host's kernel/arch (and the bundle for images of the same
# Debian release, like the two built here).
set -euo pipefail
OUT=${1:?usage: build_images.sh OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# Binaries for both images: what cvs-core's rendered commands and setup scripts run inside a
# container (sh, bash, tar, chown, pgrep, ss, timeout, ...) plus diagnostics.
WANT_BINS=(
  /bin/bash /bin/dash
  /usr/bin/grep /usr/bin/sed /usr/bin/mawk /usr/bin/find /usr/bin/xargs
  /usr/bin/ps /usr/bin/pgrep /usr/bin/pkill /usr/bin/kill /usr/bin/free
  /usr/bin/hostname /usr/bin/tar /usr/bin/gzip /usr/bin/which /usr/bin/getent
  /usr/bin/flock /usr/bin/ss /usr/sbin/ip /usr/bin/mount /usr/bin/umount
)
COMMON_BINS=()
for b in "${WANT_BINS[@]}"; do
  if [ -x "$b" ]; then COMMON_BINS+=("$b"); else echo "build_images: skipping missing $b" >&2; fi
done
# all of coreutils (cat echo base64 sleep mkdir cp chmod chown ls env id timeout ...)
mapfile -t CORE < <(dpkg -L coreutils | grep -E '^/(usr/)?s?bin/' | while read -r f; do
  if [ -f "$f" ] && [ ! -L "$f" ]; then echo "$f"; fi
done)
SSHD_BINS=(/usr/sbin/sshd /usr/bin/ssh-keygen /usr/bin/ssh /usr/lib/openssh/sftp-server)
# OpenSSH >= 9.8 splits sshd into sshd + sshd-session (+ sshd-auth): take them when present
for b in /usr/lib/openssh/sshd-session /usr/lib/openssh/sshd-auth; do
  if [ -x "$b" ]; then SSHD_BINS+=("$b"); fi
done

copy_with_libs() {  # $1 = root dir, rest = binaries: copy each + every lib ldd names
  local R=$1 b d l
  shift
  local libs=()
  for b in "$@"; do
    d=$(realpath "$(dirname "$b")")
    mkdir -p "$R$d"
    cp -L "$b" "$R$d/$(basename "$b")"
    while read -r l; do libs+=("$l"); done < <(ldd "$b" 2>/dev/null | grep -oE '/[^ ]+\.so[^ ]*' || true)
  done
  for l in $(printf '%s\n' "${libs[@]}" | sort -u); do
    d=$(realpath "$(dirname "$l")")
    mkdir -p "$R$d"
    if [ ! -e "$R$d/$(basename "$l")" ]; then cp -L "$l" "$R$d/$(basename "$l")"; fi
  done
}

mkroot() {  # $1 = rootfs dir, rest = binaries
  local R=$1
  shift
  rm -rf "$R"
  mkdir -p "$R"/usr/{bin,sbin,lib/x86_64-linux-gnu,lib64} \
    "$R"/{etc,root,tmp,run,var/tmp,var/log,dev,proc,sys,home}
  # merged /usr like Debian 12, so /bin/sh, /lib64/ld-linux... resolve
  ln -s usr/bin "$R/bin"; ln -s usr/sbin "$R/sbin"; ln -s usr/lib "$R/lib"; ln -s usr/lib64 "$R/lib64"
  chmod 1777 "$R/tmp" "$R/var/tmp"; chmod 700 "$R/root"
  copy_with_libs "$R" "$@"
  ln -sf dash "$R/usr/bin/sh"
  if [ -e "$R/usr/bin/mawk" ]; then ln -sf mawk "$R/usr/bin/awk"; fi
  # base accounts; sshd's privilege-separation user is added to the with-sshd image below (the
  # no-sshd image gets it from install_sshd_from_bundle.sh, as a package install would add it)
  cat >"$R/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PW
  cat >"$R/etc/group" <<'GR'
root:x:0:
video:x:44:
render:x:105:
nogroup:x:65534:
GR
  printf 'root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n' >"$R/etc/shadow"
  chmod 640 "$R/etc/shadow"
  printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$R/etc/nsswitch.conf"
  printf '127.0.0.1 localhost\n' >"$R/etc/hosts"
  printf '#!/bin/sh\necho "This account is currently not available."\nexit 1\n' >"$R/usr/sbin/nologin"
  chmod 755 "$R/usr/sbin/nologin"
}

# sshd_config shared by the with-sshd image and the bundle. No PAM modules exist in the images,
# so UsePAM no. AuthorizedKeysFile also reads /run/cvs/ssh/authorized_keys: a container started
# with `-v /run/cvs:/run/cvs` accepts the harness client key without any setup.
write_sshd_config() {
  cat >"$1" <<'CFG'
# minimal sshd for cvs-core test containers (harness/build_images.sh)
HostKey /etc/ssh/ssh_host_ed25519_key
HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile .ssh/authorized_keys /run/cvs/ssh/authorized_keys
StrictModes no
PrintMotd no
UseDNS no
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp /usr/lib/openssh/sftp-server
CFG
}

# host CA (kept if it exists, so known_hosts lines written from it stay valid)
if [ ! -f "$OUT/host_ca" ]; then
  ssh-keygen -q -t ed25519 -N '' -C cvs-core-harness-host-ca -f "$OUT/host_ca"
fi

signed_host_key() {  # $1 = etc/ssh dir: ed25519 host key + certificate signed by the CA
  ssh-keygen -q -t ed25519 -N '' -C cvs-test-container -f "$1/ssh_host_ed25519_key"
  # no -n: "By default, generated certificates are valid for all users or hosts" (ssh-keygen(1)),
  # i.e. for every node address and port a container may listen on
  ssh-keygen -q -s "$OUT/host_ca" -h -I cvs-test-container "$1/ssh_host_ed25519_key.pub"
}

WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- with sshd ----
R=$WORK/rootfs-with-sshd
mkroot "$R" "${COMMON_BINS[@]}" "${CORE[@]}" "${SSHD_BINS[@]}"
echo 'sshd:x:100:65534::/run/sshd:/usr/sbin/nologin' >>"$R/etc/passwd"
printf 'sshd:*:19000:0:99999:7:::\n' >>"$R/etc/shadow"
mkdir -p "$R/etc/ssh" "$R/run/sshd" "$R/root/.ssh"
chmod 755 "$R/run/sshd"; chmod 700 "$R/root/.ssh"
cp /etc/ssh/moduli "$R/etc/ssh/moduli"
signed_host_key "$R/etc/ssh"
# rsa/ecdsa too, so `ssh-keygen -A` (cvs-core's start-sshd command runs it) has nothing to do
ssh-keygen -q -t ecdsa -N '' -f "$R/etc/ssh/ssh_host_ecdsa_key"
ssh-keygen -q -t rsa -b 2048 -N '' -f "$R/etc/ssh/ssh_host_rsa_key"
write_sshd_config "$R/etc/ssh/sshd_config"
tar -C "$R" --numeric-owner -cf "$WORK/with-sshd.tar" .
# variant: different content under the same tag (a file appended to the rootfs tar)
cp "$WORK/with-sshd.tar" "$WORK/variant.tar"
mkdir -p "$WORK/variant/etc"
echo "cvs-core harness image variant v2" >"$WORK/variant/etc/cvs-variant"
tar -C "$WORK/variant" --numeric-owner -rf "$WORK/variant.tar" ./etc/cvs-variant

# ---- without sshd ----
R=$WORK/rootfs-no-sshd
mkroot "$R" "${COMMON_BINS[@]}" "${CORE[@]}"
tar -C "$R" --numeric-owner -cf "$WORK/no-sshd.tar" .

# ---- sshd bundle (a tree relative to /, installed by install_sshd_from_bundle.sh) ----
B=$WORK/bundle
mkdir -p "$B/etc/ssh"
copy_with_libs "$B" "${SSHD_BINS[@]}"
cp /etc/ssh/moduli "$B/etc/ssh/moduli"
signed_host_key "$B/etc/ssh"
write_sshd_config "$B/etc/ssh/sshd_config"
# the installer refuses bundles without this marker (and prints it)
printf 'cvs-core sshd bundle\nbuilt-from: %s\n' "$(/usr/sbin/sshd -V 2>&1 | head -1 || true)" \
  >"$B/etc/ssh/cvs-sshd-bundle"
tar -C "$B" --numeric-owner -cf "$WORK/sshd-bundle.tar" .

cp "$HERE/install_sshd_from_bundle.sh" "$WORK/install_sshd_from_bundle.sh"
chmod 755 "$WORK/install_sshd_from_bundle.sh"
for f in with-sshd.tar no-sshd.tar variant.tar sshd-bundle.tar install_sshd_from_bundle.sh; do
  mv -f "$WORK/$f" "$OUT/$f"
done
du -sh "$OUT"/*.tar >&2
