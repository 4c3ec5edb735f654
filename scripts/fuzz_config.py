#!/usr/bin/env python3
"""Property fuzzing of cvs_core's pure Python surface: configuration loading and every renderer.

Each case is generated from ``(seed, case number)`` alone, so any case can be replayed. A case
calls one function of ``cvs_core`` (``load_config`` with a dict, a testsuite or a JSON file
whose text may repeat keys; the resolvers; the lifecycle decisions and probe parsers; every
command renderer) with arbitrary input: nested JSON biased toward the real schema keys,
unicode with NUL, quotes, ``$()``, newlines and lone surrogates, very long strings, huge ints,
NaN, wrong Python types. Invariants:

- nothing crashes the interpreter and nothing raises ``cvs_core.InternalError`` (a caught Rust
  panic);
- ``load_config`` returns a ClusterConfig (whose getters, ``to_dict`` and rendered commands
  work) or raises ``ConfigError`` with a str ``.path`` and a non-empty ``.issues`` of
  (str, str) pairs;
- the other functions return their documented type or raise ``CvsError``/``ValueError``/
  ``TypeError`` (``OverflowError`` too where an int parameter gets an int out of its range);
- ``quote(s)`` equals CPython's ``shlex.quote(s)`` and splits back to ``[s]``.

The cases run in a worker process: if one kills the interpreter, the supervisor bisects the
range to find it. Any violation is shrunk to a small input and printed; the exit code is 1.

    python scripts/fuzz_config.py [--cases 100000] [--seed S]
    python scripts/fuzz_config.py --seed S --replay N     # run (and print) one case
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

# -- input generation -------------------------------------------------------------------------

SCHEMA_KEYS = [
    "node_dict",
    "username",
    "priv_key_file",
    "password",
    "orchestrator",
    "head_node_dict",
    "env_vars",
    "container",
    "lifetime",
    "enabled",
    "launch",
    "image",
    "name",
    "setup_script",
    "image_tar",
    "env",
    "volumes",
    "runtime",
    "defaults",
    "args",
    "ulimit",
    "devices",
    "cap_add",
    "security_opt",
    "group_add",
    "network",
    "ipc",
    "privileged",
    "registry",
    "mgmt_ip",
    "bmc_ip",
    "_comment",
    "_c",
]
SPECIAL_STRINGS = [
    "",
    " ",
    "\0",
    "a\0b",
    "'",
    '"',
    "\\",
    "$(reboot)",
    "`id`",
    "${HOME}",
    "a b",
    "\n",
    "x\ny",
    "\t",
    "\r\n",
    "{user-id}",
    "<changeme>",
    "<ChangeMe>",
    "~",
    "~/k",
    "~root/x",
    "~nobody_here/x",
    "-oProxyCommand=touch /tmp/x",
    "--privileged",
    "/",
    ".",
    "..",
    "/dev/null",
    "/etc/passwd",
    "/tmp",
    "\ud800",
    "é",
    "日本",
    "\u202e",
    "\x7f",
    "persistent",
    "per_run",
    "no_launch",
    "Persistent",
    "container",
    "baremetal",
    "docker",
    "podman",
    "host",
    "sudo",
    "sudo -n",
    "root",
    "10.0.0.1",
    "::1",
    "h1",
    "H1",
    "c1",
    "rocm/cvs:latest",
    "memlock=-1",
    "GPUS",
    "-----BEGIN OPENSSH PRIVATE KEY-----",
]
NAME_CHARS = "abcXYZ019_.-"
NUMBERS = [
    0,
    1,
    -1,
    255,
    2224,
    65535,
    65536,
    2**31,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**30,
    0.0,
    -0.0,
    1.5,
    1e308,
    -1e308,
    5e-324,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
]


class Opaque:
    """A value with no JSON form (a Python object the core must refuse, not crash on)."""

    def __repr__(self) -> str:
        return "Opaque()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque)

    def __hash__(self) -> int:
        return 0


class Gen:
    def __init__(self, rng: random.Random, files: dict[str, str]) -> None:
        self.r = rng
        self.files = files  # real paths on this machine: a good key, an open key, a script...
        self.p_bad = self.r.choice([0.0, 0.1, 0.4])  # how broken the next configuration is

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def text(self) -> str:
        r = self.r
        pick = r.random()
        if pick < 0.35:
            return r.choice(SPECIAL_STRINGS)
        if pick < 0.5:
            return r.choice(SCHEMA_KEYS)
        if pick < 0.6:
            return r.choice(list(self.files.values()))
        if pick < 0.7:
            return "".join(r.choice(NAME_CHARS) for _ in range(r.randint(1, 12)))
        if pick < 0.73:
            return r.choice(["a", "é", "'", "\0", "x" * 7]) * r.randint(100, 70000)
        if pick < 0.9:
            alphabet = " \0\n\t'\"\\$`(){}<>|;&*?~!#%-_./:=@[]aZ09é\u00a0\u2028\U0001f600"
            return "".join(r.choice(alphabet) for _ in range(r.randint(0, 24)))
        # Arbitrary code points, lone surrogates included (they cannot become UTF-8).
        return "".join(chr(r.randint(0, 0x10FFFF)) for _ in range(r.randint(0, 8)))

    def name(self) -> str:
        """A container name: usually valid, sometimes not."""
        if self.chance(0.7):
            n = self.r.choice([2, 5, 12, 127, 128, 129, 300])
            return self.r.choice("ab09") + "".join(self.r.choice(NAME_CHARS) for _ in range(n - 1))
        return self.text()

    def number(self) -> Any:
        if self.chance(0.6):
            return self.r.choice(NUMBERS)
        return self.r.choice([self.r.randint(-(2**70), 2**70), self.r.uniform(-1e6, 1e6)])

    def scalar(self) -> Any:
        pick = self.r.random()
        if pick < 0.55:
            return self.text()
        if pick < 0.85:
            return self.number()
        if pick < 0.97:
            return None
        return self.r.choice([Opaque(), b"bytes", (1, "t"), {1: "int key"}, {"\ud800": 1}])

    def json(self, depth: int = 0) -> Any:
        pick = self.r.random()
        if depth >= 5 or pick < 0.45:
            return self.scalar()
        if pick < 0.7:
            return [self.json(depth + 1) for _ in range(self.r.randint(0, 4))]
        return {self.key(): self.json(depth + 1) for _ in range(self.r.randint(0, 6))}

    def key(self) -> str:
        return self.r.choice(SCHEMA_KEYS) if self.chance(0.6) else self.text()

    def deep(self) -> Any:
        """Nesting far past any limit, or a dict that contains itself."""
        if self.chance(0.2):
            d: dict = {}
            d["container"] = d
            return d
        value: Any = self.scalar()
        for _ in range(self.r.choice([126, 127, 128, 129, 1000, 20000])):
            value = {"a": value} if self.chance(0.5) else [value]
        return value

    # -- plausible configurations, then broken in random places ---------------------------
    def pick(self, good: list, bad: list) -> Any:
        """A valid choice, or (as often as this configuration is meant to be broken) not."""
        return self.r.choice(bad if self.chance(self.p_bad) else good)

    def config(self) -> dict:
        f = self.files
        # Many clean configurations (they must load, and then everything must work on them),
        # and many broken in a few or many places.
        self.p_bad = self.r.choice([0.0, 0.0, 0.05, 0.2, 0.5])
        doc: dict[str, Any] = {
            "_comment": "fuzz <changeme>",
            "username": self.pick(["{user-id}", "root", "u"], ["", None, 5]),
            "priv_key_file": self.pick(
                [f["key"], f["tilde_key"]],
                [f["open_key"], f["pub_key"], f["dir"], "", "/nonexistent/{user-id}/id_rsa"],
            ),
            "node_dict": self.node_dict(),
        }
        if self.chance(0.7):
            doc["orchestrator"] = self.pick(["container", "baremetal", "Container"], ["k8s", 1])
            doc["container"] = self.container_block()
        if self.chance(0.2):
            doc["env_vars"] = {
                self.key(): self.pick(["v", "$PATH:/x", "a b"], [1, None, True])
                for _ in range(self.r.randint(0, 3))
            }
        if self.chance(0.1):
            doc["head_node_dict"] = self.json(3)
        if self.p_bad:
            for _ in range(self.r.choice([0, 1, 2, 4])):
                self.mutate(doc)
        return doc

    def node_dict(self) -> Any:
        good = ["10.0.0.1", "10.0.0.2", "h1", "node-3.example", "n-{user-id}", "::1", "fe80::2"]
        bad = ["H1", "n-root", "0:0::1", "10.0.0.1", "-oProxyCommand=x", "a b", "", self.text()]
        count = self.r.randint(0 if self.p_bad else 1, 5)
        hosts = self.r.sample(good, count)
        hosts = [h if not self.chance(self.p_bad) else self.r.choice(bad) for h in hosts]
        if self.chance(0.5):
            return {h: {"bmc_ip": "NA"} for h in hosts}
        return [{"mgmt_ip": h} if not self.chance(self.p_bad) else self.json(2) for h in hosts]

    def container_block(self) -> dict:
        f = self.files
        block: dict[str, Any] = {
            "image": self.pick(
                ["rocm/cvs:latest", "img", "r.io/a/b@sha256:" + "0" * 64], ["x" * 140, "a b", "", 5]
            )
        }
        if self.chance(0.6):
            block["lifetime"] = self.pick(["persistent", "per_run", "no_launch"], ["forever", None])
        if self.chance(0.5):
            block["name"] = self.pick(["c1", "cvs_{user-id}", "a" * 128], [self.name()])
        if self.chance(0.4):
            block["setup_script"] = self.pick(
                [f["script"], None], [f["empty_script"], f["dir"], "", "missing.sh", False]
            )
        if self.chance(0.4):
            block["env"] = {
                self.pick(["GPUS", "A", "_B"], ["1X", "a-b"]): self.pick(
                    ["8", "v", "", "a b $(x)"], [8, True, None, {"x": 1}, "a\0b"]
                )
                for _ in range(self.r.randint(0, 3))
            }
        if self.chance(0.5):
            args = {
                k: self.pick([[], ["memlock=-1"], ["/a:/b", "/c:/d:ro"]], [[self.text()], [5], "x"])
                for k in self.r.sample(
                    ["volumes", "devices", "cap_add", "security_opt", "group_add", "ulimit"],
                    self.r.randint(0, 3),
                )
            }
            for k in ("network", "ipc", "privileged"):
                if self.chance(0.2):
                    args[k] = self.pick(
                        [True, False] if k == "privileged" else ["host", "bridge", None],
                        [self.scalar()],
                    )
            block["runtime"] = {
                "args": args,
                "defaults": self.pick([True, False, None], ["no", 1]),
                "name": self.pick(["docker", "Docker"], ["podman", 5]),
            }
        if self.chance(0.1 * self.p_bad):
            block[self.r.choice(["enabled", "launch"])] = True
        return block

    def mutate(self, value: Any, depth: int = 0) -> None:
        """Replace, add or delete something somewhere inside ``value`` (in place)."""
        if isinstance(value, dict) and value:
            key = self.r.choice(list(value))
            pick = self.r.random()
            if pick < 0.3 and depth < 4 and isinstance(value[key], (dict, list)):
                self.mutate(value[key], depth + 1)
            elif pick < 0.6:
                value[key] = self.json(3)
            elif pick < 0.8:
                value[self.key()] = self.json(3)
            else:
                del value[key]
        elif isinstance(value, list) and value:
            i = self.r.randrange(len(value))
            if isinstance(value[i], (dict, list)) and self.chance(0.5):
                self.mutate(value[i], depth + 1)
            else:
                value[i] = self.json(2)

    def json_text(self) -> str:
        """A file's text: a configuration, often with a key written twice, sometimes broken."""
        doc = self.config()
        text = json.dumps(doc, ensure_ascii=self.chance(0.5), default=repr)
        if self.chance(0.5):
            # Write one existing `"key": value` pair again right after the opening brace of
            # its object (a duplicate key), or a duplicate host.
            host = json.dumps(self.r.choice(["10.0.0.1", "h1", "n-{user-id}"]))
            text = text.replace('"node_dict": {', f'"node_dict": {{{host}: {{}}, ', 1)
            text = text.replace('"container": {', '"container": {"image": "dup", ', 1)
        if self.chance(0.1):
            cut = self.r.randrange(len(text) + 1)
            text = (
                text[:cut] + self.r.choice(["", "}", ",", "\0", "\ud800", "[" * 200]) + text[cut:]
            )
        return text


# -- targets ------------------------------------------------------------------------------------

ALLOWED = ("CvsError", "ValueError", "TypeError")


def target_table(g: Gen) -> list[tuple[str, float, Callable[[], tuple[tuple, dict]]]]:
    """(target name, weight, argument generator) for every pure function of cvs_core."""

    def maybe(make: Callable[[], Any], p: float = 0.85) -> Any:
        return make() if g.chance(p) else g.scalar()

    def mapping_of(make: Callable[[], Any]) -> Any:
        if g.chance(0.9):
            return {
                g.text()
                if g.chance(0.95)
                else g.r.choice([1, None, 2.5, b"k", (1,), Opaque()]): make()
                for _ in range(g.r.randint(0, 4))
            }
        return g.json(2)

    def probe_entry() -> Any:
        if g.chance(0.1):
            return g.scalar()
        entry = {}
        for k, make in (
            ("running", lambda: g.r.choice([True, False, 1, "yes", None])),
            ("exit_code", lambda: maybe(g.number)),
            ("name", g.text),
            ("sha", g.text),
            ("image", g.text),
            ("output", g.text),
        ):
            if g.chance(0.6):
                entry[k] = make()
        return entry

    def results() -> Any:
        return mapping_of(
            lambda: g.r.choice(
                [g.text(), {"output": g.text(), "exit_code": maybe(g.number)}, g.json(2)]
            )
        )

    def spec_block() -> Any:
        return ("__spec__", g.container_block() if g.chance(0.9) else g.json(3))

    def prefix() -> Any:
        return maybe(lambda: g.r.choice(["sudo", "", "sudo -n", "doas", g.text()]))

    def labels() -> Any:
        if g.chance(0.5):
            return None
        return [
            (g.text(), g.text()) if g.chance(0.9) else g.scalar() for _ in range(g.r.randint(0, 3))
        ]

    def kw(**options: Callable[[], Any]) -> dict:
        return {k: make() for k, make in options.items() if g.chance(0.5)}

    return [
        (
            "load_config",
            30,
            lambda: (
                (g.config() if g.chance(0.9) else g.json(),)
                + ((g.config() if g.chance(0.3) else g.json(),) if g.chance(0.3) else ()),
                kw(require_key_file=lambda: g.r.choice([True, False]) if g.chance(0.95) else None),
            ),
        ),
        ("load_config_deep", 1, lambda: ((g.deep(),), {})),
        (
            "load_config_file",
            6,
            lambda: (
                (g.json_text(), g.json_text() if g.chance(0.2) else None),
                kw(require_key_file=lambda: g.chance(0.5)),
            ),
        ),
        (
            "ContainerSpec.from_dict",
            8,
            lambda: (
                (g.container_block() if g.chance(0.8) else g.json(),),
                kw(require_image=lambda: g.r.choice([True, False, 0])),
            ),
        ),
        ("resolve_container_lifetime", 3, lambda: ((maybe(g.container_block),), {})),
        (
            "resolve_container_setup_script",
            3,
            lambda: (
                (maybe(g.container_block),),
                kw(default_script=lambda: maybe(lambda: g.files["script"])),
            ),
        ),
        (
            "resolve_cluster_placeholders",
            4,
            lambda: ((maybe(g.config),), kw(strip_comments=lambda: g.chance(0.5))),
        ),
        ("placeholder_user", 0.2, lambda: ((), {})),
        ("validate_container_name", 3, lambda: ((maybe(g.name),), {})),
        ("sanitize_container_name", 2, lambda: ((maybe(g.text),), {})),
        ("default_container_name", 2, lambda: ((maybe(g.text),), kw(user=lambda: maybe(g.text)))),
        (
            "decide_setup",
            8,
            lambda: (
                (
                    maybe(lambda: g.r.choice(["persistent", "per_run", "no_launch", "forever"])),
                    mapping_of(probe_entry),
                )
                + ((mapping_of(probe_entry),) if g.chance(0.5) else ()),
                kw(
                    hosts=lambda: maybe(lambda: [g.text() for _ in range(g.r.randint(0, 4))]),
                    name=lambda: maybe(g.name),
                    image=lambda: maybe(g.text),
                ),
            ),
        ),
        (
            "decide_teardown",
            2,
            lambda: ((maybe(lambda: g.r.choice(["persistent", "per_run", "x"])), g.scalar()), {}),
        ),
        (
            "hosts_needing_sshd",
            3,
            lambda: ((mapping_of(lambda: g.r.choice([g.number(), probe_entry()])),), {}),
        ),
        ("parse_running_probe", 3, lambda: ((maybe(g.name), results()), {})),
        ("parse_image_probe", 3, lambda: ((results(),), {})),
        (
            "docker_run_command",
            6,
            lambda: (
                (spec_block(),),
                kw(
                    prefix=prefix,
                    infiniband_expansion=lambda: g.r.choice([True, False, "x"]),
                    labels=labels,
                ),
            ),
        ),
        ("docker_run_argv", 3, lambda: ((spec_block(),), kw(prefix=prefix, labels=labels))),
        (
            "docker_exec_command",
            4,
            lambda: (
                (maybe(g.name), maybe(g.text)),
                kw(prefix=prefix, interactive=lambda: g.r.choice([True, False, None])),
            ),
        ),
        ("is_running_command", 2, lambda: ((maybe(g.name),), kw(prefix=prefix))),
        (
            "image_sha_status_command",
            2,
            lambda: ((maybe(g.name), maybe(g.text)), kw(prefix=prefix)),
        ),
        (
            "remove_command",
            2,
            lambda: ((maybe(g.name),), kw(prefix=prefix, quiet=lambda: g.chance(0.5))),
        ),
        ("image_exists_command", 2, lambda: ((maybe(g.text),), kw(prefix=prefix))),
        ("load_image_command", 2, lambda: ((maybe(g.text),), kw(prefix=prefix))),
        ("sshd_precheck_command", 1, lambda: ((maybe(g.number),), {})),
        ("sshd_setup_commands", 1, lambda: ((maybe(g.number),), {})),
        ("quote", 5, lambda: ((maybe(g.text, 0.95),), {})),
        ("cvs_runtime_args", 3, lambda: ((maybe(lambda: g.json(3)),), {})),
        (
            "cvs_docker_run_command",
            4,
            lambda: (
                (maybe(g.name), maybe(g.text)),
                kw(
                    prefix=prefix,
                    volumes=lambda: maybe(lambda: [g.text() for _ in range(g.r.randint(0, 3))]),
                    environment=lambda: g.json(2),
                    runtime_args=lambda: g.json(3),
                    device_expansion=lambda: maybe(g.text),
                ),
            ),
        ),
        (
            "provision_command",
            2,
            lambda: (
                (
                    maybe(
                        lambda: g.r.choice(
                            [
                                b"",
                                b"#!/bin/sh\ntrue\n",
                                os.urandom(64),
                                b"x" * 16384,
                                b"x" * 16385,
                                g.text().encode("utf-8", "surrogatepass"),
                            ]
                        )
                    ),
                ),
                kw(label=lambda: maybe(g.text)),
            ),
        ),
        ("provision_stdin_command", 2, lambda: ((maybe(g.name),), kw(prefix=prefix))),
    ]


def make_case(seed: int, index: int, files: dict[str, str]) -> tuple[str, tuple, dict]:
    g = Gen(random.Random(f"{seed}:{index}"), files)
    table = target_table(g)
    name, _, make = g.r.choices(table, weights=[w for _, w, _ in table])[0]
    args, kwargs = make()
    return name, args, kwargs


# -- running one case and checking the invariants ------------------------------------------------


class Violation(Exception):
    pass


def check_config_error(exc: BaseException) -> None:
    import cvs_core

    if not isinstance(exc, cvs_core.ConfigError):
        raise Violation(f"expected ConfigError, got {type(exc).__name__}: {exc}")
    path, issues = getattr(exc, "path", None), getattr(exc, "issues", None)
    if not isinstance(path, str):
        raise Violation(f"ConfigError.path is {path!r}, not a str ({exc})")
    if not issues or not all(
        isinstance(i, tuple) and len(i) == 2 and all(isinstance(x, str) for x in i) for i in issues
    ):
        raise Violation(f"ConfigError.issues is {issues!r} ({exc})")
    if path != issues[0][0]:
        raise Violation(f"ConfigError.path {path!r} is not the first issue's {issues[0][0]!r}")


def exercise_config(cfg: Any) -> None:
    """A ClusterConfig that loaded must be fully usable."""
    import cvs_core

    for attr in ("orchestrator", "hosts", "head_node", "username", "priv_key_file", "password"):
        getattr(cfg, attr)
    json.dumps([cfg.to_dict(), cfg.node_dict, cfg.head_node_dict, cfg.env_vars, cfg.warnings])
    if not cfg.hosts or cfg.head_node != cfg.hosts[0]:
        raise Violation(f"hosts {cfg.hosts!r} / head node {cfg.head_node!r}")
    if len(set(cfg.hosts)) != len(cfg.hosts):
        raise Violation(f"a host is listed twice: {cfg.hosts!r}")
    spec = cfg.container
    if spec is not None:
        exercise_spec(spec)
        if spec.name is not None:
            cvs_core.validate_container_name(spec.name)


def exercise_spec(spec: Any) -> None:
    import cvs_core

    json.dumps(spec.to_dict())
    if not all(isinstance(v, str) for v in spec.environment.values()):
        raise Violation(f"non-string environment {spec.environment!r}")
    if spec.image is not None and spec.name is not None:
        # A spec that validated renders: every value in it was checked.
        command = cvs_core.docker_run_command(spec)
        argv = cvs_core.docker_run_argv(spec)
        if shlex.split(command) != argv:
            raise Violation(f"docker_run_command {command!r} is not the argv {argv!r}")


def spec_of(block: Any) -> Any:
    import cvs_core

    try:
        return cvs_core.ContainerSpec.from_dict(block, require_image=False)
    except cvs_core.ConfigError:
        return cvs_core.ContainerSpec.from_dict({"image": "img", "name": "c1"})
    except TypeError:
        return block


def run_case(name: str, args: tuple, kwargs: dict, scratch: Path) -> str:
    """Call the target; return the outcome's name, or raise Violation."""
    import cvs_core

    int_params = name in {
        "sshd_precheck_command",
        "sshd_setup_commands",
        "hosts_needing_sshd",
        "decide_setup",
        "parse_running_probe",
        "parse_image_probe",
    }
    args = tuple(
        spec_of(a[1]) if isinstance(a, tuple) and a[:1] == ("__spec__",) else a for a in args
    )
    before = fingerprint(args)
    try:
        if name.startswith("load_config"):
            if name == "load_config_file":
                cluster_text, suite_text = args
                cluster = scratch / "cluster.json"
                cluster.write_text(cluster_text, errors="surrogatepass")
                call_args: tuple = (str(cluster),)
                if suite_text is not None:
                    suite = scratch / "suite.json"
                    suite.write_text(suite_text, errors="surrogatepass")
                    call_args += (suite,)
            else:
                call_args = args
            try:
                cfg = cvs_core.load_config(*call_args, **kwargs)
            except TypeError as exc:
                if isinstance(kwargs.get("require_key_file", True), bool):
                    raise Violation(f"TypeError from load_config: {exc}") from exc
                return "TypeError"
            except BaseException as exc:
                if isinstance(exc, (KeyboardInterrupt, Violation)):
                    raise
                if isinstance(exc, cvs_core.InternalError):
                    raise Violation(f"InternalError (a Rust panic): {exc}") from exc
                check_config_error(exc)
                return "ConfigError"
            try:
                exercise_config(cfg)
            except Violation:
                raise
            except Exception as exc:
                raise Violation(
                    f"a loaded config is unusable: {type(exc).__name__}: {exc}"
                ) from exc
            return "ok"

        if name == "ContainerSpec.from_dict":
            result = cvs_core.ContainerSpec.from_dict(*args, **kwargs)
            try:
                exercise_spec(result)
            except Violation:
                raise
            except Exception as exc:
                raise Violation(f"a valid spec is unusable: {type(exc).__name__}: {exc}") from exc
            return "ok"
        result = getattr(cvs_core, name)(*args, **kwargs)
        check_result(name, args, result)
        return "ok"
    except Violation:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        if isinstance(exc, cvs_core.InternalError):
            raise Violation(f"InternalError (a Rust panic): {exc}") from exc
        if isinstance(exc, cvs_core.ConfigError):
            check_config_error(exc)
        if isinstance(exc, (cvs_core.CvsError, ValueError, TypeError)):
            return type(exc).__name__
        if isinstance(exc, OverflowError) and int_params:
            return "OverflowError"
        raise Violation(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if name in ("resolve_container_lifetime", "resolve_container_setup_script"):
            pass  # these mutate their argument by contract (CVS's semantics)
        elif fingerprint(args) != before:
            raise Violation("the function changed its input")


def check_result(name: str, args: tuple, result: Any) -> None:
    if name == "quote":
        s = args[0]
        if result != shlex.quote(s):
            raise Violation(f"quote({s!r}) = {result!r}, CPython says {shlex.quote(s)!r}")
        if shlex.split(result) != [s]:
            raise Violation(f"quote({s!r}) = {result!r} does not split back")
    elif name in ("docker_run_argv", "sshd_setup_commands"):
        if not isinstance(result, list) or not all(isinstance(x, str) for x in result):
            raise Violation(f"{name} returned {result!r}")
    elif name in ("resolve_container_lifetime", "resolve_container_setup_script"):
        if result is not args[0]:
            raise Violation(f"{name} did not return its argument")
    elif name == "resolve_cluster_placeholders":
        json.dumps(result)
    elif name in ("decide_setup",):
        for attr in (
            "kind",
            "proceeds",
            "running_hosts",
            "missing_hosts",
            "failed_hosts",
            "stale_hosts",
            "message",
            "warnings",
        ):
            getattr(result, attr)
    elif name in ("decide_teardown",):
        if not isinstance(result, bool):
            raise Violation(f"{name} returned {result!r}")
    elif name in ("hosts_needing_sshd",):
        if not isinstance(result, list):
            raise Violation(f"{name} returned {result!r}")
    elif name in ("parse_running_probe", "parse_image_probe"):
        if not isinstance(result, dict):
            raise Violation(f"{name} returned {result!r}")
    elif name in ("validate_container_name",):
        if result is not None:
            raise Violation(f"{name} returned {result!r}")
    elif not isinstance(result, str):
        raise Violation(f"{name} returned {type(result).__name__}, not str")


def fingerprint(value: Any) -> str | None:
    """A cheap identity of an input, to tell whether a call changed it (None: too deep)."""
    try:
        return repr(value)
    except RecursionError:
        return None


# -- shrinking ------------------------------------------------------------------------------------


def smaller(value: Any) -> list[Any]:
    """Candidate simplifications of a value, smallest first."""
    out: list[Any] = []
    if isinstance(value, dict):
        keys = list(value)
        if len(keys) > 1:
            half = len(keys) // 2
            out.append({k: value[k] for k in keys[:half]})
            out.append({k: value[k] for k in keys[half:]})
        for k in keys:
            out.append({k2: v for k2, v in value.items() if k2 != k})
        for k in keys:
            for v in smaller(value[k]):
                out.append({**value, k: v})
    elif isinstance(value, list):
        if len(value) > 1:
            out += [value[: len(value) // 2], value[len(value) // 2 :]]
        for i in range(len(value)):
            out.append(value[:i] + value[i + 1 :])
        for i, item in enumerate(value):
            for v in smaller(item):
                out.append([*value[:i], v, *value[i + 1 :]])
    elif isinstance(value, tuple) and value[:1] == ("__spec__",):
        out += [("__spec__", v) for v in smaller(value[1])]
    elif isinstance(value, str) and value:
        out += [value[: len(value) // 2], value[len(value) // 2 :], value[1:], value[:-1]]
    elif isinstance(value, bytes) and value:
        out += [value[: len(value) // 2], value[1:]]
    elif isinstance(value, int) and not isinstance(value, bool) and value not in (0, 1):
        out += [0, 1, value // 2]
    return out


def shrink(case: tuple[str, tuple, dict], fails: Callable[[tuple], bool], budget: int) -> tuple:
    name, args, kwargs = case
    current = (list(args), dict(kwargs))
    progress = True
    while progress and budget > 0:
        progress = False
        slots = [("a", i) for i in range(len(current[0]))] + [("k", k) for k in current[1]]
        for kind, slot in slots:
            try:
                if kind == "k":
                    without = {k: v for k, v in current[1].items() if k != slot}
                    candidates = [(current[0], without)] + [
                        (current[0], {**current[1], slot: v}) for v in smaller(current[1][slot])
                    ]
                else:
                    candidates = [
                        ([*current[0][:slot], v, *current[0][slot + 1 :]], current[1])
                        for v in smaller(current[0][slot])
                    ]
            except RecursionError:  # nesting past Python's own limit: keep it as it is
                continue
            for cand in candidates:
                budget -= 1
                if budget <= 0:
                    break
                if fails((name, tuple(cand[0]), cand[1])):
                    current = cand
                    progress = True
                    break
            if progress or budget <= 0:
                break
    return name, tuple(current[0]), current[1]


def show(case: tuple[str, tuple, dict]) -> str:
    name, args, kwargs = case

    def fmt(v: Any) -> str:
        if isinstance(v, tuple) and v[:1] == ("__spec__",):
            return f"ContainerSpec.from_dict({fmt(v[1])})"
        text = fingerprint(v) or "<nested deeper than Python's repr goes>"
        return text if len(text) <= 4000 else text[:4000] + f"... ({len(text)} chars)"

    parts = [fmt(a) for a in args] + [f"{k}={fmt(v)}" for k, v in kwargs.items()]
    if name == "load_config_file":
        return (
            "load_config(<file with this text>)\n  text: "
            + fmt(args[0])
            + ("\n  testsuite text: " + fmt(args[1]) if args[1] is not None else "")
            + (f"\n  kwargs: {kwargs!r}" if kwargs else "")
        )
    shown = "load_config" if name == "load_config_deep" else name
    return f"cvs_core.{shown}({', '.join(parts)})"


# -- worker and supervisor ------------------------------------------------------------------------


def control_files(root: Path) -> dict[str, str]:
    """Real files the generated configurations name, so loading can also succeed."""
    key_text = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n"
        "-----END OPENSSH PRIVATE KEY-----\n"
    )
    files = {}
    for name, text, mode in (
        ("key", key_text, 0o600),
        ("open_key", key_text, 0o644),
        ("pub_key", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 fuzz\n", 0o600),
        ("script", "#!/bin/sh\ntrue\n", 0o755),
        ("empty_script", "", 0o755),
    ):
        path = root / name
        path.write_text(text)
        path.chmod(mode)
        files[name] = str(path)
    (root / "dir").mkdir(exist_ok=True)
    files["dir"] = str(root / "dir")
    files["tilde_key"] = "~/../" + os.path.relpath(files["key"], "/")  # ~ expands, .. climbs
    return files


def worker(seed: int, start: int, stop: int, root: Path, report: Path) -> int:
    """Run cases [start, stop); write counts (and a shrunk violation, if any) to ``report``."""
    files = control_files(root)
    scratch = root / "scratch"
    scratch.mkdir(exist_ok=True)
    outcomes: Counter = Counter()
    targets: Counter = Counter()
    violation = None
    for index in range(start, stop):
        case = make_case(seed, index, files)
        targets[case[0]] += 1
        try:
            outcomes[f"{case[0]}: {run_case(*case, scratch)}"] += 1
        except Violation as exc:

            def fails(c: tuple, kind: str = type(exc.__cause__).__name__) -> bool:
                try:
                    run_case(*c, scratch)
                except Violation as again:
                    return type(again.__cause__).__name__ == kind
                return False

            small = shrink(case, fails, budget=3000)
            try:
                run_case(*small, scratch)
                why = str(exc)
            except Violation as again:
                why = str(again)
            violation = {"index": index, "why": why, "case": show(small)}
            break
    report.write_text(
        json.dumps({"outcomes": outcomes, "targets": targets, "violation": violation})
    )
    return 1 if violation else 0


def spawn(seed: int, start: int, stop: int, root: Path) -> tuple[int, dict | None]:
    report = root / f"report-{start}-{stop}.json"
    cmd = [sys.executable, __file__, "--worker", str(seed), str(start), str(stop), str(root)]
    # A caught panic is reported by the worker; a backtrace for each shrinking step is noise.
    env = {**os.environ, "RUST_BACKTRACE": "0"}
    proc = subprocess.run([*cmd, str(report)], check=False, env=env)
    data = json.loads(report.read_text()) if report.exists() else None
    return proc.returncode, data


def find_crash(seed: int, start: int, stop: int, root: Path) -> int:
    """Bisect [start, stop) down to the one case that kills the interpreter."""
    while stop - start > 1:
        mid = (start + stop) // 2
        rc, _ = spawn(seed, start, mid, root)
        if rc < 0 or rc > 128:
            stop = mid
        else:
            start = mid
    return start


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        seed, start, stop = (int(x) for x in argv[1:4])
        return worker(seed, start, stop, Path(argv[4]), Path(argv[5]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=100_000, help="number of cases (default 100000)")
    ap.add_argument("--seed", type=int, default=None, help="seed (default: random, printed)")
    ap.add_argument("--replay", type=int, metavar="N", help="run and print case N only")
    ap.add_argument("--batch", type=int, default=25_000, help="cases per worker process")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)

    with tempfile.TemporaryDirectory(prefix="cvs-core-fuzz-") as tmp:
        root = Path(tmp)
        if args.replay is not None:
            case = make_case(seed, args.replay, control_files(root))
            print(show(case))
            rc, data = spawn(seed, args.replay, args.replay + 1, root)
            print("violation:", (data or {}).get("violation") or ("crash" if rc else "none"))
            return 1 if rc else 0

        print(f"fuzz_config: {args.cases} cases, seed {seed}", flush=True)
        started = time.monotonic()
        outcomes: Counter = Counter()
        targets: Counter = Counter()
        for start in range(0, args.cases, args.batch):
            stop = min(start + args.batch, args.cases)
            rc, data = spawn(seed, start, stop, root)
            if data:
                outcomes.update(data["outcomes"])
                targets.update(data["targets"])
            if data and data["violation"]:
                v = data["violation"]
                print(f"\nVIOLATION in case {v['index']} (seed {seed}): {v['why']}")
                print(f"minimal reproducer:\n  {v['case']}")
                print(f"replay: python {sys.argv[0]} --seed {seed} --replay {v['index']}")
                return 1
            if 0 < rc < 128 and not data:
                print(f"\nthe fuzzer itself failed (exit {rc}) in cases {start}..{stop - 1}")
                return 2
            if rc != 0:
                name = signal.Signals(-rc).name if rc < 0 else f"exit {rc}"
                index = find_crash(seed, start, stop, root)
                case = make_case(seed, index, control_files(root))
                print(f"\nCRASH ({name}) in case {index} (seed {seed}): the interpreter died")
                print(f"reproducer:\n  {show(case)}")
                print(f"replay: python {sys.argv[0]} --seed {seed} --replay {index}")
                return 1
        took = time.monotonic() - started
    total = sum(targets.values())
    print(f"{total} cases in {took:.1f}s ({total / took:.0f} cases/s); no violation")
    by_target: dict[str, list[str]] = {}
    for key, count in sorted(outcomes.items()):
        target, outcome = key.split(": ", 1)
        by_target.setdefault(target, []).append(f"{outcome} {count}")
    for target, count in targets.most_common():
        print(f"  {target:<32} {count:>6}  {', '.join(by_target.get(target, []))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
