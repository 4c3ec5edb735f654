"""The ``cvs-core`` command line.

Exit codes: 0 success; 2 invalid configuration or usage (errors are printed with the path of
each offending field); 1 an unexpected internal error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import cvs_core

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INVALID = 2


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
        f"ssh user: {cfg.username}  key: {cfg.priv_key_file}",
    ]
    spec = cfg.container
    if spec is not None:
        lines += [
            f"container: lifetime={spec.lifetime} name={spec.name} image={spec.image}",
            f"  setup_script: {spec.setup_script}",
            f"  CVS default run arguments: {'on' if spec.use_defaults else 'off'}",
        ]
    return lines


def _cmd_validate(args: argparse.Namespace) -> int:
    cluster_file = args.cluster_file or args.cluster_file_opt
    if not cluster_file:
        print("cvs-core validate: a cluster file is required", file=sys.stderr)
        return EXIT_INVALID
    try:
        cfg = cvs_core.load_config(cluster_file, args.config_file)
    except cvs_core.ConfigError as exc:
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

    resolved: dict[str, Any] = cfg.to_dict()
    if args.json:
        out = {
            "ok": True,
            "summary": {
                "orchestrator": cfg.orchestrator,
                "hosts": cfg.hosts,
                "head_node": cfg.head_node,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvs-core",
        description="Run and containerise validation work across GPU clusters over SSH.",
        epilog="Exit codes: 0 ok, 2 invalid configuration or usage, 1 internal error.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    v = sub.add_parser(
        "validate",
        help="resolve and check a cluster file (and testsuite file); print the result",
        description="Resolve placeholders, merge the testsuite file, check every field and "
        "print the resolved configuration, or every error with its path (exit 2).",
    )
    v.add_argument("cluster_file", nargs="?", help="cluster JSON file")
    v.add_argument(
        "--cluster-file", dest="cluster_file_opt", metavar="FILE", help=argparse.SUPPRESS
    )
    v.add_argument("--config-file", metavar="FILE", help="testsuite JSON file (merged on top)")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v.set_defaults(func=_cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except cvs_core.CvsError as exc:
        print(f"cvs-core: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
