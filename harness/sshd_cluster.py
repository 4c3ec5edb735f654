"""N real OpenSSH servers on loopback addresses, for tests, benchmarks and demos.

Each simulated host is its own ``sshd -D`` process. As root, host i listens on
``127.<net>.<hi>.<lo>:22`` (any 127.0.0.0/8 address is local on Linux, no ``ip addr`` needed);
otherwise on ``127.0.0.1:<base+i>`` and is reached through its ``Host`` alias in the generated
``ssh_config``. Everything lives under one work directory: keys, ``ssh_config``,
``known_hosts``, per-host configs and logs. ``stop()`` ends exactly the PIDs ``start()`` spawned.

Pitfalls this handles (learned on this kind of machine):
- root's ``.bashrc`` may run pyenv (~140 ms per command): every host gets its own empty HOME
  through ``SetEnv``, so sshd's ``bash -c`` sources an empty file;
- OpenSSH 9.x's default key exchange (sntrup761x25519) costs ~100 ms client CPU per connect:
  sshd here offers ``curve25519-sha256`` first;
- ``MaxSessions`` defaults to 10 multiplexed channels per connection: raised;
- ``MaxStartups`` (10:30:100) drops bursts of new connections: raised.

Besides the normal hosts it can provide the failure cases a transport must classify: an address
where nothing listens, a port that accepts TCP but never speaks SSH, a host whose key differs
from ``known_hosts``, and a host that refuses the client key. As root it can also provide a host
that accepts only a password (``password_host=True``): its sshd runs in a private mount
namespace where a copy of ``/etc/shadow`` giving the user ``password`` (random per cluster) is
bind-mounted over the real one, so the machine's accounts are never touched.

Command line: ``python harness/sshd_cluster.py up N DIR`` / ``down DIR``.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

try:  # imported as harness.sshd_cluster, or run as a script from harness/
    from harness.proc import banner as _banner
    from harness.proc import descendants as _descendants
    from harness.proc import keygen as _keygen
    from harness.proc import listening as _listening
    from harness.proc import raise_soft_limit as _raise_soft_limit
    from harness.proc import user_tasks as _user_tasks
except ImportError:  # pragma: no cover - script mode
    from proc import banner as _banner  # type: ignore[no-redef]
    from proc import descendants as _descendants  # type: ignore[no-redef]
    from proc import keygen as _keygen  # type: ignore[no-redef]
    from proc import listening as _listening  # type: ignore[no-redef]
    from proc import raise_soft_limit as _raise_soft_limit  # type: ignore[no-redef]
    from proc import user_tasks as _user_tasks  # type: ignore[no-redef]

SSHD = os.environ.get("SSHD", "/usr/sbin/sshd")
STD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KEX = "curve25519-sha256"


def password_host_missing() -> str | None:
    """Why a password-only host cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "a password-only sshd needs root (a private mount namespace over /etc/shadow)"
    for tool in ("unshare", "openssl", "mount"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return None


def prerequisites_missing() -> str | None:
    """Why live SSH tests cannot run here, or None when they can."""
    for tool in (SSHD, shutil.which("ssh"), shutil.which("ssh-keygen")):
        if not tool or not os.access(tool, os.X_OK):
            return "OpenSSH (openssh-server, openssh-client) is not installed"
    return None


def _can_bind(addr: str, port: int) -> bool:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((addr, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


@dataclass
class Host:
    name: str
    addr: str
    port: int
    dir: Path
    config: Path
    proc: subprocess.Popen | None = None

    @property
    def destination(self) -> str:
        """What to hand to ssh: the address in alias mode, else the ``Host`` alias."""
        return self.addr if self.port == 22 else self.name


@dataclass
class SshdCluster:
    """Start with ``start()``; use ``hosts`` (destinations), ``ssh_config``, ``key``,
    ``known_hosts``; stop with ``stop()``. Also a context manager."""

    n: int
    workdir: Path
    user: str = field(default_factory=lambda: _current_user())
    base_port: int = 22000
    host_list: list[Host] = field(default_factory=list)
    extra: dict[str, Host] = field(default_factory=dict)
    _listeners: list[socket.socket] = field(default_factory=list)
    _stop_listeners: threading.Event = field(default_factory=threading.Event)
    mode: str = ""
    net: int = 0
    #: The password of the password-only host (``start(password_host=True)``).
    password: str = ""

    # -- layout ----------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()

    @property
    def ssh_config(self) -> Path:
        return self.workdir / "ssh_config"

    @property
    def key(self) -> Path:
        return self.workdir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "known_hosts"

    @property
    def hosts(self) -> list[str]:
        return [h.destination for h in self.host_list]

    def _addr(self, i: int) -> tuple[str, int]:
        if self.mode == "alias":
            n = 10 + i
            return f"127.{self.net}.{n // 256}.{n % 256}", 22
        return "127.0.0.1", self.base_port + i

    def _choose_mode(self, total: int) -> None:
        if os.geteuid() == 0:
            for net in range(20, 60):
                self.net, self.mode = net, "alias"
                first, last = self._addr(1), self._addr(total)
                if _can_bind(*first) and _can_bind(*last):
                    return
        self.mode = "ports"
        if not (_can_bind(*self._addr(1)) and _can_bind(*self._addr(total))):
            raise RuntimeError(f"ports {self.base_port + 1}..{self.base_port + total} are busy")

    # -- lifecycle -------------------------------------------------------------------------
    def start(
        self,
        *,
        wrong_key_host: bool = False,
        no_auth_host: bool = False,
        password_host: bool = False,
        timeout: float = 30.0,
    ) -> SshdCluster:
        why = prerequisites_missing()
        if why:
            raise RuntimeError(why)
        self.workdir.mkdir(parents=True, exist_ok=True)
        flags = (
            ("wrongkey", wrong_key_host),
            ("noauth", no_auth_host),
            ("password", password_host),
        )
        specials = [s for s, on in flags if on]
        if password_host:
            why = password_host_missing()
            if why:
                raise RuntimeError(why)
        total = self.n + len(specials) + 2  # + a dead address + a silent listener
        self._choose_mode(total)
        # Every host is an sshd, and every connection to it adds sshd's privileged and
        # unprivileged children and the session's shell, all this user's processes (inherited
        # from us). At 1,024 hosts that is thousands, more than a usual soft RLIMIT_NPROC
        # (4096 per user on many distributions): raise the soft limit of this process (and so
        # of the sshd processes it starts) up to the hard limit; nothing system-wide changes.
        _raise_soft_limit(resource.RLIMIT_NPROC, _user_tasks() + 4 * total + 64)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

        host_key = self.workdir / "ssh_host_ed25519_key"
        other_key = self.workdir / "other_host_key"
        _keygen(host_key, "cvs-core-test-host")
        _keygen(other_key, "cvs-core-other-host")
        _keygen(self.key, "cvs-core-test-client")
        authorized = self.workdir / "authorized_keys"
        authorized.write_text((self.workdir / "id_ed25519.pub").read_text())
        (self.workdir / "empty_authorized_keys").write_text("")
        host_pub = " ".join(Path(f"{host_key}.pub").read_text().split()[:2])

        known: list[str] = []
        aliases: list[str] = []
        for i in range(1, self.n + 1):
            self.host_list.append(self._make_host(i, f"host{i}", host_key, authorized))
        for j, special in enumerate(specials, start=self.n + 1):
            key = other_key if special == "wrongkey" else host_key
            auth = self.workdir / "empty_authorized_keys" if special == "noauth" else authorized
            self.extra[special] = self._make_host(
                j, special, key, auth, password_only=special == "password"
            )
        for h in [*self.host_list, *self.extra.values()]:
            entry = h.addr if h.port == 22 else f"[{h.addr}]:{h.port}"
            known.append(f"{entry} {host_pub}")
            aliases.append(f"Host {h.name}\n  HostName {h.addr}\n  Port {h.port}\n")

        # An address nobody listens on, and a port that accepts TCP but never speaks SSH.
        dead_i, silent_i = self.n + len(specials) + 1, self.n + len(specials) + 2
        dead_addr, dead_port = self._addr(dead_i)
        self.dead = Host("dead", dead_addr, dead_port, self.workdir, self.workdir)
        silent_addr, silent_port = self._addr(silent_i)
        self.silent = Host("silent", silent_addr, silent_port, self.workdir, self.workdir)
        for h in (self.dead, self.silent):
            entry = h.addr if h.port == 22 else f"[{h.addr}]:{h.port}"
            known.append(f"{entry} {host_pub}")
            aliases.append(f"Host {h.name}\n  HostName {h.addr}\n  Port {h.port}\n")
        self._start_silent_listener(silent_addr, silent_port)

        self.known_hosts.write_text("\n".join(known) + "\n")
        self.ssh_config.write_text(
            "# generated by cvs-core harness/sshd_cluster.py\n" + "".join(aliases) + "Host *\n"
            f"  User {self.user}\n"
            f"  IdentityFile {self.key}\n"
            "  IdentitiesOnly yes\n"
            "  IdentityAgent none\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  CheckHostIP no\n"
            "  UpdateHostKeys no\n"
            "  PasswordAuthentication no\n"
            "  KbdInteractiveAuthentication no\n"
            "  BatchMode yes\n"
            "  LogLevel ERROR\n"
            f"  KexAlgorithms {KEX}\n"
        )
        # One at a time: each sshd costs about 8 ms of CPU to start (exec, libraries, config,
        # host key), so 1,024 take about 7 s on 2 cores whichever way they are launched
        # (a pool of 8 spawning threads measured no faster); the readiness wait is what had to
        # change (see _wait_ready).
        for h in [*self.host_list, *self.extra.values()]:
            log = h.dir / "sshd.log"
            argv = [SSHD, "-D", "-f", str(h.config), "-E", str(log)]
            if h.name == "password":
                argv = self._password_namespace(h, argv)
            h.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        self._write_state()
        self._wait_ready(timeout)
        return self

    def _password_namespace(self, h: Host, argv: list[str]) -> list[str]:
        """``argv`` run in a private mount namespace where ``/etc/shadow`` gives ``self.user``
        the password ``self.password`` (``unshare`` execs the shell, the shell execs sshd, so
        the PID we keep is sshd's)."""
        self.password = secrets.token_urlsafe(12)
        hashed = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"],
            input=self.password,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # Only the test user's entry: sshd reads nobody else's, and no real hash is copied.
        shadow = h.dir / "shadow"
        shadow.touch(mode=0o600)
        shadow.write_text(f"{self.user}:{hashed}:19000:0:99999:7:::\n")
        script = 'mount --bind "$0" /etc/shadow && exec "$@"'
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            str(shadow),
            *argv,
        ]

    def _make_host(
        self, i: int, name: str, host_key: Path, authorized: Path, password_only: bool = False
    ) -> Host:
        addr, port = self._addr(i)
        d = self.workdir / "hosts" / name
        (d / "home").mkdir(parents=True, exist_ok=True)
        (d / "home" / ".bashrc").write_text(f"# simulated {name}: intentionally empty\n")
        config = d / "sshd_config"
        config.write_text(
            f"# simulated host {name}\n"
            f"ListenAddress {addr}:{port}\n"
            f"HostKey {host_key}\n"
            f"PidFile {d / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {authorized}\n"
            + (
                "PermitRootLogin yes\nPubkeyAuthentication no\nPasswordAuthentication yes\n"
                if password_only
                else "PermitRootLogin prohibit-password\n"
                "PubkeyAuthentication yes\n"
                "PasswordAuthentication no\n"
            )
            + "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "UseDNS no\n"
            "MaxStartups 1000\n"
            "MaxSessions 1000\n"
            "MaxAuthTries 20\n"
            "LoginGraceTime 30\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "X11Forwarding no\n"
            "Subsystem sftp internal-sftp\n"
            f"KexAlgorithms {KEX}\n"
            f"SetEnv CVS_HOST_NAME={name} CVS_HOST_DIR={d} HOME={d / 'home'} PATH={STD_PATH}\n"
        )
        return Host(name, addr, port, d, config)

    def _start_silent_listener(self, addr: str, port: int) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, port))
        srv.listen(64)
        srv.settimeout(0.2)
        self._listeners.append(srv)

        def serve() -> None:
            held: list[socket.socket] = []
            while not self._stop_listeners.is_set():
                try:
                    conn, _ = srv.accept()
                    held.append(conn)  # accept, then say nothing until stopped
                except OSError:
                    continue
            for c in held:
                c.close()

        threading.Thread(target=serve, name="silent-tcp", daemon=True).start()

    def _wait_ready(self, timeout: float) -> None:
        """Until every sshd listens. Read from /proc/net/tcp, not with a banner check per host:
        a banner costs each sshd a forked and re-executed session process (about 15 ms) and the
        checks ran one host at a time: 1,024 hosts took 23 s to come up, 7 s this way. sshd
        listens only once its
        configuration and host key are loaded; a connection made later waits in the backlog
        until its accept loop runs."""
        deadline = time.monotonic() + timeout
        pending = [*self.host_list, *self.extra.values()]
        while pending:
            for h in pending:
                if h.proc is not None and h.proc.poll() is not None:
                    log = (h.dir / "sshd.log").read_text(errors="replace")
                    self.stop()
                    raise RuntimeError(f"sshd for {h.name} exited: {log[-2000:]}")
            try:
                up = _listening({(h.addr, h.port) for h in pending})
                pending = [h for h in pending if (h.addr, h.port) not in up]
            except OSError:  # no /proc/net/tcp: ask each server
                pending = [h for h in pending if not _banner(h.addr, h.port, 0.5)]
            if pending and time.monotonic() > deadline:
                names = ", ".join(h.name for h in pending[:5])
                self.stop()
                raise RuntimeError(f"sshd not answering on: {names} ({len(pending)} hosts)")
            if pending:
                time.sleep(0.05)

    def _write_state(self) -> None:
        state = {
            "pids": [h.proc.pid for h in [*self.host_list, *self.extra.values()] if h.proc],
            "hosts": self.hosts,
            "ssh_config": str(self.ssh_config),
            "key": str(self.key),
            "known_hosts": str(self.known_hosts),
            "user": self.user,
        }
        (self.workdir / "cluster.json").write_text(json.dumps(state, indent=2))

    def stop(self) -> None:
        """End exactly the sshd processes this object started (and its listener thread)."""
        self._stop_listeners.set()
        for srv in self._listeners:
            srv.close()
        self._listeners.clear()
        procs = [h.proc for h in [*self.host_list, *self.extra.values()] if h.proc]
        # Per-connection sshd processes outlive their listener; end them with it.
        children = [c for p in procs for c in _descendants(p.pid)]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for h in [*self.host_list, *self.extra.values()]:
            h.proc = None
        state = self.workdir / "cluster.json"
        if state.exists():
            state.unlink()

    def crash_host(self, index: int) -> None:
        """Simulate a node dying: its sshd (the PID we started) and every per-connection sshd it
        forked are killed, so open connections drop as they would with the machine."""
        h = self.host_list[index]
        if h.proc is None:
            return
        for pid in [*_descendants(h.proc.pid), h.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        h.proc.wait(5)
        h.proc = None

    def __enter__(self) -> SshdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _down(workdir: Path) -> int:
    state_file = workdir / "cluster.json"
    if not state_file.exists():
        print(f"no running cluster recorded in {workdir}")
        return 0
    state = json.loads(state_file.read_text())
    stopped = 0
    for pid in state["pids"]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(workdir).encode() in cmdline:  # only our own sshd, never a reused PID
            os.kill(pid, signal.SIGTERM)
            stopped += 1
    state_file.unlink()
    print(f"stopped {stopped} sshd processes")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "up":
        cluster = SshdCluster(int(argv[1]), Path(argv[2])).start()
        print(f"{cluster.n} hosts up ({cluster.mode} mode): {' '.join(cluster.hosts[:4])} ...")
        print(f"try: ssh -F {cluster.ssh_config} {cluster.hosts[0]} hostname")
        # Detach: the sshd processes keep running; `down DIR` stops them by recorded PID.
        for h in cluster.host_list:
            h.proc = None
        return 0
    if len(argv) == 2 and argv[0] == "down":
        return _down(Path(argv[1]).resolve())
    print("usage: sshd_cluster.py up N DIR | down DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
