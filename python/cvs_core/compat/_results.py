"""Helpers over CVS's result shapes, shared by the orchestrator and runtime drop-ins."""

from __future__ import annotations

from typing import Any


def console_kw(print_console: Any) -> dict[str, Any]:
    """CVS main's ``print_console`` keyword, only when the caller changed it."""
    return {} if print_console is True else {"print_console": print_console}


def exit_code(entry: Any) -> int:
    """A detailed result's exit code; anything unreadable is -1 (unknown), never success."""
    if isinstance(entry, dict):
        code = entry.get("exit_code")
        return code if isinstance(code, int) else -1
    return -1


def failed_hosts(results: Any) -> list[str]:
    """Hosts of a ``{host: {"output", "exit_code"}}`` result that did not exit 0."""
    if not isinstance(results, dict):
        return []
    return [h for h, r in results.items() if exit_code(r) != 0]
