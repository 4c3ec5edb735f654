"""The ``cvs-core`` command line.

Commands: ``validate`` (resolve and check the configuration), ``plan`` (what ``up`` would do on
each host and why; changes nothing), ``up`` (set up the containers and their sshd), ``down``
(remove per_run containers; persistent and no_launch are kept), ``status`` (per-host state), and
``exec CMD`` (run a command in the containers, or on the hosts with ``--on-host``), and
``disconnect`` (end the persistent SSH connections ``--persist`` left running).

Exit codes: 0 success; 1 the operation failed or was refused on some host; 2 invalid
configuration or usage (errors are printed with the path of each offending field); 130
interrupted by Ctrl-C, 143 by SIGTERM (the remote work of the step is stopped on every host and
what the interrupted ``up`` created is removed before the command exits; the report says what
was done).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable

import cvs_core

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the same cancellation path as Ctrl-C (the remote work is stopped
    and what the step created is removed before the command exits)."""


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise Terminated("terminated")


def _issues(exc: cvs_core.ConfigError) -> list[dict[str, str]]:
    pairs = getattr(exc, "issues", None) or [(getattr(exc, "path", None) or "", str(exc))]
    return [{"path": path, "message": message} for path, message in pairs]


def _summary(cfg: cvs_core.ClusterConfig) -> list[str]:
    hosts = cfg.hosts
    shown = ", ".join(hosts[:8]) + (f", ... (+{len(hosts) - 8})" if len(hosts) > 8 else "")
    lines = [
        f"orchestrator: {cfg.orchestrator}",
        f"hosts ({len(hosts)}): {shown}",
        f"head node: {cfg.head_node}",
    ]
    if cfg.effective_transport == "slurm":
        placement = " ".join(f"{k}={v}" for k, v in cfg.slurm.items())
        lines.append(f"transport: slurm{'  ' + placement if placement else ''}")
    else:
        lines += ["transport: ssh", f"ssh user: {cfg.username}  key: {cfg.priv_key_file}"]
    spec = cfg.container
    if spec is not None:
        lines += [
            f"container: lifetime={spec.lifetime} name={spec.name} image={spec.image}",
            f"  setup_script: {spec.setup_script}",
            f"  CVS default run arguments: {'on' if spec.use_defaults else 'off'}",
        ]
    return lines


class Progress:
    """Live per-host progress. On a terminal: one line per host, redrawn in place, for up to
    ``MAX_LINES`` hosts, and one summary line of phase counts beyond that (1000 lines would
    scroll away). Off a terminal: one plain line per event."""

    MAX_LINES = 24

    def __init__(self, stream: Any = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.phase: dict[str, str] = {}
        self.last_draw = 0.0
        self.drawn = 0  # lines of the block currently on screen

    def __call__(self, host: str, phase: str) -> None:
        if not self.enabled:
            return
        self.phase[host] = phase
        if not self.tty:
            print(f"  {host}: {phase}", file=self.stream, flush=True)
            return
        now = time.monotonic()
        if now - self.last_draw < 0.1:
            return
        self.last_draw = now
        self._draw()

    def _lines(self) -> list[str]:
        if len(self.phase) <= self.MAX_LINES:
            width = max(len(h) for h in self.phase)
            return [f"  {h:<{width}}  {p}" for h, p in self.phase.items()]
        counts: dict[str, int] = {}
        for p in self.phase.values():
            counts[p] = counts.get(p, 0) + 1
        parts = " ".join(f"[{p} {n}]" for p, n in counts.items())
        return [f"{len(self.phase)} hosts: {parts}"]

    def _draw(self) -> None:
        # Move to the top of the block drawn last time, then rewrite it line by line.
        out = "\x1b[1A" * max(self.drawn - 1, 0) + "\r"
        lines = self._lines()
        out += "\n".join(f"\x1b[2K{line}" for line in lines)
        for _ in range(self.drawn - len(lines)):
            out += "\n\x1b[2K"
        self.stream.write(out)
        self.stream.flush()
        self.drawn = max(len(lines), self.drawn)

    def done(self) -> None:
        if self.tty and self.phase:
            self._draw()  # the final state, then leave it on screen
            self.stream.write("\n")
            self.stream.flush()


def _load(args: argparse.Namespace) -> cvs_core.ClusterConfig:
    cluster_file = getattr(args, "cluster_file", None) or args.cluster_file_opt
    if not cluster_file:
        raise cvs_core.ConfigError("a cluster file is required (--cluster-file FILE)")
    # The effective transport is resolved here (--transport > CVS_CORE_TRANSPORT > the file's
    # transport) and Cluster.from_config, also inside ContainerLifecycle, follows it.
    return cvs_core.load_config(
        cluster_file,
        args.config_file,
        require_key_file=getattr(args, "require_key_file", True),
        transport=args.transport,
    )


def _print_config_error(args: argparse.Namespace, exc: cvs_core.ConfigError) -> int:
    issues = _issues(exc)
    if args.json:
        print(json.dumps({"ok": False, "errors": issues}, indent=2))
    else:
        count = len(issues)
        print(
            f"cvs-core: invalid configuration ({count} error{'s' if count != 1 else ''}):",
            file=sys.stderr,
        )
        for issue in issues:
            print(f"  - {issue['message']}", file=sys.stderr)
    return EXIT_INVALID


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        cfg = _load(args)
    except cvs_core.ConfigError as exc:
        return _print_config_error(args, exc)
    resolved: dict[str, Any] = cfg.to_dict()
    if args.json:
        out = {
            "ok": True,
            "summary": {
                "orchestrator": cfg.orchestrator,
                "hosts": cfg.hosts,
                "head_node": cfg.head_node,
                "transport": cfg.effective_transport,
                "slurm": cfg.slurm,
                "container": cfg.container.to_dict() if cfg.container else None,
            },
            "warnings": cfg.warnings,
            "config": resolved,
        }
        print(json.dumps(out, indent=2))
        return EXIT_OK
    print("\n".join(_summary(cfg)))
    if cfg.warnings:
        print("warnings:")
        for w in cfg.warnings:
            print(f"  - {w}")
    print("resolved configuration:")
    print(json.dumps(resolved, indent=2))
    return EXIT_OK


def _lifecycle(
    args: argparse.Namespace, cfg: cvs_core.ClusterConfig
) -> cvs_core.ContainerLifecycle:
    return cvs_core.ContainerLifecycle(
        cfg,
        ssh_config=args.ssh_config,
        known_hosts=args.known_hosts,
        host_key_policy=args.host_key_policy,
        connect_timeout=args.connect_timeout,
        pull=getattr(args, "pull", None),
        recreate=getattr(args, "recreate", False),
        inline_provision=getattr(args, "inline_provision", False),
        sshd_port=args.sshd_port,
        keepalive=args.keepalive,
    )


def _print_report(report: cvs_core.LifecycleReport, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    mark = "ok" if report.ok else "FAILED"
    print(f"{report.op}: {mark} [{report.kind}] {report.message}")
    width = max((len(h.host) for h in report.hosts), default=4)
    for h in report.hosts:
        state = "ok " if h.ok else "ERR"
        extra = ""
        if h.container_id:
            extra = f"  id={h.container_id[:12]}"
        if h.started_at and report.op == "status":
            extra += f" started={h.started_at}"
        print(f"  {state} {h.host:<{width}}  {h.action:<9} {h.detail}{extra}")
        if h.output and not h.ok:
            for line in h.output.splitlines()[-10:]:
                print(f"        | {line}")
    for w in report.warnings:
        print(f"  warning: {w}")


def _lifecycle_command(
    run: Callable[
        [cvs_core.ContainerLifecycle, Progress, argparse.Namespace, list],
        list[cvs_core.LifecycleReport],
    ],
    many: bool = False,
) -> Callable[[argparse.Namespace], int]:
    """A lifecycle command; with ``many`` its JSON output is always a list of reports."""

    def command(args: argparse.Namespace) -> int:
        try:
            cfg = _load(args)
            if cfg.container is None:
                raise cvs_core.ConfigError(
                    "this command needs a 'container' block in the configuration"
                )
            lifecycle = _lifecycle(args, cfg)
        except cvs_core.ConfigError as exc:
            return _print_config_error(args, exc)
        except cvs_core.ScriptTooLargeError as exc:
            # Found before any host is touched: a usage error, like a bad configuration.
            print(f"cvs-core: {exc}", file=sys.stderr)
            return EXIT_INVALID
        progress = Progress(enabled=not args.json and not args.quiet)
        done: list[cvs_core.LifecycleReport] = []
        try:
            reports = run(lifecycle, progress, args, done)
        except KeyboardInterrupt as exc:
            progress.done()
            report = getattr(exc, "report", None)
            if report is not None:
                done.append(report)
            if args.json and many:
                print(json.dumps([r.to_dict() for r in done], indent=2))
            elif args.json and report is not None:
                print(json.dumps(report.to_dict(), indent=2))
            elif report is not None:
                _print_report(report, args)
            raise
        finally:
            progress.done()
            lifecycle.cluster.close()
        if args.json and many:
            print(json.dumps([r.to_dict() for r in reports], indent=2))
        else:
            for r in reports:
                _print_report(r, args)
        return EXIT_OK if all(r.ok for r in reports) else EXIT_FAILED

    return command


def _up(lifecycle: cvs_core.ContainerLifecycle, progress: Progress, _args: Any, done: list) -> list:
    setup = lifecycle.setup(progress=progress)
    done.append(setup)
    if not setup.ok:
        return [setup]
    return [setup, lifecycle.setup_sshd(progress=progress)]


def _cmd_exec(args: argparse.Namespace) -> int:
    try:
        cfg = _load(args)
    except cvs_core.ConfigError as exc:
        return _print_config_error(args, exc)
    on_host = args.on_host or cfg.container is None
    try:
        if on_host:
            cluster = cvs_core.Cluster.from_config(
                cfg,
                ssh_config=args.ssh_config,
                known_hosts=args.known_hosts,
                host_key_policy=args.host_key_policy,
                connect_timeout=args.connect_timeout,
                keepalive=args.keepalive,
            )
            runner: Any = cluster
        else:
            runner = _lifecycle(args, cfg)
            cluster = runner.cluster
    except cvs_core.ConfigError as exc:
        return _print_config_error(args, exc)
    try:
        results = runner.exec(args.command, hosts=args.hosts or None, timeout=args.timeout)
    finally:
        cluster.close()
    if args.json:
        print(results.to_json())
    else:
        for group in results.fold():
            status = "ok" if group.status == "ok" else f"{group.status}, exit {group.exit_code}"
            print(f"== {', '.join(group.hosts)} ({status}) ==")
            if group.stdout:
                print(group.stdout, end="" if group.stdout.endswith("\n") else "\n")
        for r in results:
            if not r.ok and (r.stderr or r.error):
                print(f"[{r.host}] {(r.stderr or r.error).strip()}", file=sys.stderr)
        print(results.summary(), file=sys.stderr)
    return EXIT_OK if results.ok else EXIT_FAILED


def _add_common(p: argparse.ArgumentParser, positional_cluster: bool = False) -> None:
    if positional_cluster:
        p.add_argument("cluster_file", nargs="?", help="cluster JSON file")
    p.add_argument(
        "--cluster-file",
        dest="cluster_file_opt",
        metavar="FILE",
        help="cluster JSON file"
        + (" (same as the positional argument)" if positional_cluster else ""),
    )
    p.add_argument("--config-file", metavar="FILE", help="testsuite JSON file (merged on top)")
    p.add_argument(
        "--transport",
        choices=["ssh", "slurm", "auto"],
        help="how commands reach the hosts; overrides CVS_CORE_TRANSPORT and the file's "
        "transport (default: ssh; auto: slurm inside a Slurm allocation)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds greater than zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):  # also refuses nan, which compares false to everything
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds greater than 0, got {text!r}"
        )
    return value


def _persist(text: str) -> str:
    """argparse type: a persistence duration (``10m``, ``2h``, ``true``, ``off``)."""
    try:
        cvs_core._native.parse_persist_duration(text)
    except cvs_core.CvsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _port(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535, got {text!r}")
    return value


def _add_ssh(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ssh-config", metavar="FILE", help="OpenSSH client config (ssh -F)")
    p.add_argument("--known-hosts", metavar="FILE", help="known_hosts file to check host keys")
    p.add_argument(
        "--host-key-policy",
        choices=["strict", "accept-new", "off"],
        default="strict",
        help="host key checking (default: strict)",
    )
    p.add_argument("--connect-timeout", type=_seconds, default=10.0, metavar="S")
    p.add_argument(
        "--keepalive",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="SSH keepalive interval: a lost host is given up after about three (default 30)",
    )
    p.add_argument(
        "--sshd-port",
        type=_port,
        default=2224,
        metavar="PORT",
        help="port of the in-container sshd (default 2224, as CVS); with --network host every "
        "container of a node shares it, so two users' persistent containers need two ports",
    )
    p.add_argument(
        "--persist",
        type=_persist,
        metavar="DURATION",
        help="keep each host's SSH connection up for DURATION after this command (10m, 2h, "
        "true = 10m, off) so the next command re-attaches instead of reconnecting; overrides "
        "CVS_CORE_PERSIST and the cluster file's persist. `cvs-core disconnect` ends them",
    )
    _add_control_dir(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


def _add_control_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--control-dir",
        metavar="DIR",
        help="directory of the persistent connections' control sockets (default: "
        "CVS_CORE_CONTROL_DIR, else $XDG_RUNTIME_DIR/cvs-core, else /tmp/cvs-core-<uid>); "
        "it must be 0700 and yours",
    )


def _cmd_disconnect(args: argparse.Namespace) -> int:
    hosts: list[str] | None = args.hosts
    if hosts is None and (args.cluster_file or args.cluster_file_opt):
        try:
            hosts = _load(args).hosts
        except cvs_core.ConfigError as exc:
            return _print_config_error(args, exc)
    ended = cvs_core.disconnect_all(hosts=hosts, control_dir=args.control_dir)
    if args.json:
        print(json.dumps({"ok": True, "ended": ended}, indent=2))
    else:
        where = args.control_dir or cvs_core.default_control_dir()
        print(f"ended {len(ended)} persistent connection{'s' if len(ended) != 1 else ''} ({where})")
        for host in ended:
            print(f"  {host}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvs-core",
        description="Run and containerise validation work across GPU clusters over SSH.",
        epilog="Exit codes: 0 ok, 1 failed or refused on some host, 2 invalid configuration "
        "or usage, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); an interrupted step stops "
        "its remote work and removes what it created before exiting.",
    )
    parser.add_argument("--version", action="version", version=f"cvs-core {cvs_core.__version__}")
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND")
    sub.required = True

    v = sub.add_parser(
        "validate",
        help="resolve and check a cluster file (and testsuite file); print the result",
        description="Resolve placeholders, merge the testsuite file, check every field and "
        "the files it names, and print the resolved configuration, or every error with its "
        "path (exit 2). A priv_key_file that does not exist on this machine is only a warning "
        "here (a file may be checked away from the control host); plan, up, down, status and "
        "exec refuse it before connecting. A key file that exists must be a private key only "
        "its owner can read (chmod 600). With the slurm transport no key file is needed.",
    )
    _add_common(v, positional_cluster=True)
    v.set_defaults(func=_cmd_validate, require_key_file=False)

    p = sub.add_parser("plan", help="show what `up` would do on each host and why (dry run)")
    _add_common(p)
    _add_ssh(p)
    p.set_defaults(func=_lifecycle_command(lambda lc, pr, _a, _d: [lc.plan(progress=pr)]))

    u = sub.add_parser("up", help="set up the containers (per the lifetime) and their sshd")
    _add_common(u)
    _add_ssh(u)
    u.add_argument("--pull", choices=["missing", "never", "always"], help="docker run --pull")
    u.add_argument(
        "--recreate",
        action="store_true",
        help="recreate persistent containers whose configuration drifted (their overlay is lost)",
    )
    u.add_argument(
        "--inline-provision",
        action="store_true",
        help="send the setup script base64-inline like CVS (16 KiB cap) instead of on stdin",
    )
    u.set_defaults(func=_lifecycle_command(_up, many=True))

    d = sub.add_parser("down", help="remove per_run containers (persistent/no_launch are kept)")
    _add_common(d)
    _add_ssh(d)
    d.add_argument(
        "--orphans",
        action="store_true",
        help="also remove your per_run containers left behind by crashed runs",
    )
    d.set_defaults(
        func=_lifecycle_command(lambda lc, pr, a, _d: [lc.teardown(orphans=a.orphans, progress=pr)])
    )

    s = sub.add_parser("status", help="per-host container state")
    _add_common(s)
    _add_ssh(s)
    s.set_defaults(func=_lifecycle_command(lambda lc, pr, _a, _d: [lc.status(progress=pr)]))

    e = sub.add_parser("exec", help="run a command in the containers (or --on-host)")
    _add_common(e)
    _add_ssh(e)
    e.add_argument("command", help="the command (one shell string)")
    e.add_argument("--on-host", action="store_true", help="run on the hosts, not in containers")
    e.add_argument("--hosts", nargs="+", metavar="HOST", help="only these hosts")
    e.add_argument("--timeout", type=_seconds, metavar="S", help="kill the command after S seconds")
    e.set_defaults(func=_cmd_exec)

    x = sub.add_parser(
        "disconnect",
        help="end the persistent SSH connections (--persist) of a cluster, or all of them",
        description="End the SSH masters that --persist (or CVS_CORE_PERSIST, or the cluster "
        "file's persist) left running: those of the cluster file's hosts, of --hosts, or "
        "every one in the control directory when neither is given.",
    )
    _add_common(x, positional_cluster=True)
    x.add_argument("--hosts", nargs="+", metavar="HOST", help="only these hosts")
    _add_control_dir(x)
    x.set_defaults(func=_cmd_disconnect, require_key_file=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Every cluster of this command (also the one inside ContainerLifecycle) reads them.
    if getattr(args, "persist", None) is not None:
        os.environ["CVS_CORE_PERSIST"] = args.persist
    if getattr(args, "control_dir", None):
        os.environ["CVS_CORE_CONTROL_DIR"] = args.control_dir
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"cvs-core: {what}; the remote work of the step was stopped", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except cvs_core.ConfigError as exc:
        return _print_config_error(args, exc)
    except cvs_core.CvsError as exc:
        print(f"cvs-core: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
