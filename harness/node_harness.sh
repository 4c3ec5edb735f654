#!/bin/bash
# node_harness.sh init NAME HOST_WORKDIR: PID 1 of one simulated node of the docker harness.
#
# harness/docker_cluster.py starts it as
#   nsenter --net=/run/netns/NAME unshare --mount --uts --ipc --pid --fork --kill-child \
#       --mount-proc --propagation private node_harness.sh init NAME HOST_WORKDIR
# so it runs in the node's network namespace plus new mount/UTS/IPC/PID namespaces, and here:
#   * sets the hostname, gives the node a private /run (tmpfs), /tmp, /root, /etc/hosts,
#     /etc/hostname and /etc/docker, like a separate machine;
#   * makes HOST_WORKDIR visible at /run/cvs (the node's view of the harness directory: its
#     own files are under /run/cvs/nodes/NAME, the sshd bundle at /run/cvs/sshd-bundle.tar);
#   * starts the node's own dockerd (which starts its own containerd) listening on the node's
#     DEFAULT socket /run/docker.sock (so `sudo docker ...` over ssh just works) and on
#     /run/cvs/nodes/NAME/docker.sock (the harness reaches it from the root namespace), and
#     the node's OpenSSH sshd on port 22;
#   * stays PID 1: reaps orphans (sshd restarted by start_sshd() is re-parented here) until
#     dockerd and its sshd are gone. TERM stops both; when PID 1 exits the kernel kills
#     everything left in the node's PID namespace (containers included).
# `node_harness.sh slurm NAME`, run inside the node (Slurm mode), starts the node's munged and
# slurmd unless they run; both daemonize and are re-parented to (and reaped by) PID 1.
# Environment (set by docker_cluster.py): CVS_NODE_DRIVER (overlay2|vfs), CVS_NODE_RUNTIME
# (node-side path of runc-capfilter, empty to use plain runc), CVS_NODE_CGROUP (dockerd's
# --cgroup-parent: the node's containers' cgroups, removed by the harness's stop()); for
# `slurm`: CVS_MUNGE_SOCKET (the cluster's munge socket path, the same string as in the root
# namespace) and CVS_SLURM_NODE_DIR (the node-private directory of slurmd's files).
set -euo pipefail

NBASE=/run/cvs

# The node's dockerd, in the foreground. --bridge=none/--iptables=false: containers get only
# --network host (the node's netns) or none; the node has no default route, so a stray pull or
# lookup fails fast instead of leaving the machine. --cgroup-parent keeps each node's containers
# in their own cgroups (removed by the harness's stop()). `node_harness.sh dockerd NAME`, run
# inside the node's namespaces, starts it again after a test killed it (the containerd it left
# running is picked up again).
run_dockerd() {
  local name=$1
  local ND=$NBASE/nodes/$name
  local runtime_flags=()
  if [ -n "${CVS_NODE_RUNTIME:-}" ]; then
    runtime_flags=(--add-runtime "capfilter=$CVS_NODE_RUNTIME" --default-runtime capfilter)
  fi
  exec dockerd --config-file "$ND/daemon.json" \
    --data-root "$ND/docker" --exec-root /run/docker --pidfile /run/docker.pid \
    -H unix:///run/docker.sock -H "unix://$ND/docker.sock" \
    --storage-driver "${CVS_NODE_DRIVER:-overlay2}" \
    --iptables=false --ip6tables=false --ip-masq=false --bridge=none --userland-proxy=false \
    --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent "${CVS_NODE_CGROUP:-/cvs-$name}" \
    --shutdown-timeout 2 \
    "${runtime_flags[@]}" >>"$ND/dockerd.log" 2>&1
}

# Is the daemon named COMM running with the PID in PIDFILE (a PID of this node's namespace)?
running() {
  local comm=$1 pidfile=$2 pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}

# The node's munged and slurmd (Slurm mode), each started only when it does not run, so this is
# also how the harness restarts a stopped slurmd. The key and slurm.conf are copied from the
# harness directory into the node's private /run: munged insists on a key only root can read,
# and slurmd reads its own copy, like a real node's /etc/slurm.
run_slurm() {
  local name=$1
  local ND=$NBASE/nodes/$name
  local sock=${CVS_MUNGE_SOCKET:?} sdir=${CVS_SLURM_NODE_DIR:?}
  local mdir=${sock%/*}
  umask 022
  mkdir -p "$mdir" "$sdir/spool"
  chmod 755 "$mdir"   # munged refuses a socket directory others can write to
  if ! running munged "$mdir/munged.pid"; then
    install -m 400 "$NBASE/slurm/munge.key" "$mdir/munge.key"
    # returns once the daemon is ready (or failed): munged reports back through a pipe
    munged --socket="$sock" --key-file="$mdir/munge.key" --pid-file="$mdir/munged.pid" \
      --seed-file="$mdir/munged.seed" --log-file="$ND/munged.log"
  fi
  if ! running slurmd "$sdir/slurmd.pid"; then
    cp "$NBASE/slurm/slurm.conf" "$sdir/slurm.conf"
    slurmd -f "$sdir/slurm.conf"
  fi
}

node_init() {
  local name=$1 hostdir=$2
  local ND=$NBASE/nodes/$name     # the node's view of HOST_WORKDIR/nodes/NAME
  hostname "$name"
  # private /run: docker.sock, containerd state, sshd privsep dir, sudo timestamps
  mount -t tmpfs -o mode=755,size=256m tmpfs /run
  mkdir -p /run/sshd /run/lock /run/.cg "$NBASE"
  chmod 1777 /run/lock
  # netns-correct /sys (as `ip netns exec` gives), but keep the host's cgroup mounts, which
  # dockerd needs ("Devices cgroup isn't mounted" otherwise). This is why the node is entered
  # with `nsenter --net` + unshare and not `ip netns exec`: the latter remounts /sys and so
  # hides /sys/fs/cgroup from dockerd.
  mount --rbind /sys/fs/cgroup /run/.cg
  mount -t sysfs sysfs /sys
  mount --move /run/.cg /sys/fs/cgroup
  # harness files stay reachable at /run/cvs even when /tmp is replaced below (the host
  # workdir is often under /tmp)
  mount --bind "$hostdir" "$NBASE"
  mount --bind "$ND/etc-hosts" /etc/hosts
  mount --bind "$ND/etc-hostname" /etc/hostname
  mount --bind "$ND/etc-docker" /etc/docker   # per-node /etc/docker/key.json (daemon ID)
  # per-node /tmp and /root like real machines: root's .bashrc (pyenv on these machines) is
  # not run by ssh sessions, cvs-core's lock files in /tmp are per node
  mount --bind "$ND/tmp" /tmp                   # from here on only $ND paths are valid
  mount --bind "$ND/root" /root

  local DPID="" SPID=""
  trap 'kill -TERM $SPID $DPID 2>/dev/null || true' TERM INT
  run_dockerd "$name" &
  DPID=$!
  /usr/sbin/sshd -D -f "$ND/sshd_config" -E "$ND/sshd.log" &
  SPID=$!
  echo "dockerd=$DPID sshd=$SPID (pids inside the node's pid namespace)" >"$ND/init.log"
  # PID 1 duty: reap everything (bash's wait reaps adopted orphans too) until both are gone
  while kill -0 "$DPID" 2>/dev/null || kill -0 "$SPID" 2>/dev/null; do wait || true; done
}

case ${1:-} in
  init)
    shift
    [ $# = 2 ] || { echo "usage: node_harness.sh init NAME HOST_WORKDIR" >&2; exit 2; }
    node_init "$@"
    ;;
  dockerd)
    shift
    [ $# = 1 ] || { echo "usage: node_harness.sh dockerd NAME (inside the node)" >&2; exit 2; }
    run_dockerd "$1"
    ;;
  slurm)
    shift
    [ $# = 1 ] || { echo "usage: node_harness.sh slurm NAME (inside the node)" >&2; exit 2; }
    run_slurm "$1"
    ;;
  *)
    sed -n '2,26p' "$0" >&2
    exit 2
    ;;
esac
