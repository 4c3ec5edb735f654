"""CVS's ``cvs.lib.parallel.multiprocess_pssh``: ``MultiProcessPssh``, the ``Pssh`` every CVS
module actually gets (``cvs.lib.parallel_ssh_lib.Pssh``).

Construction, attributes and dispatch are CVS's (contract §2.4, seams §2 C2, §3, §6): with more
hosts than ``config.hosts_per_shard`` (``CVS_HOSTS_PER_SHARD``, default 32; 0 disables) the
handle is sharded (``self._init_sharded(...)``, ``self.sharder = PsshSharder(self.config)``,
``self.pssh = None``: no ``Pssh`` and no connection at construction), otherwise it wraps
``self.pssh = Pssh(...)``. Every sharded operation builds CVS's payloads and calls
``self.sharder.execute_sharded(payloads)`` once, then merges; every method reads only the
attributes CVS's reads, so doubles of ``Pssh``, ``PsshSharder`` or ``_init_sharded`` work.

What changed is under the seam: ``PsshSharder.execute_sharded`` runs the shards in this process
over one engine kept across calls (no process pool, no reconnect per call). Fixed on the way
(contract §1.4, §9.6): the sharded path reports previously pruned hosts
(``ABORT: Host Unreachable Error``) instead of dropping them, and ``detailed=True`` with
``print_console=True`` no longer crashes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .config import ParallelConfig
from .interfaces import ShardableSshInterface
from .pssh import BANNER, UNREACHABLE_ABORT, Pssh, build_env_prefix
from .pssh_sharder import PsshSharder

__all__ = ["MultiProcessPssh"]


class MultiProcessPssh(ShardableSshInterface):
    """CVS's sharding ``Pssh`` wrapper, running every host count in this process."""

    def __init__(
        self,
        log: Any,
        host_list: Sequence[str],
        user: str | None = None,
        password: str | None = None,
        pkey: str = "id_rsa",
        host_key_check: bool = False,
        stop_on_errors: bool = True,
        env_vars: Mapping[str, Any] | None = None,
        config: ParallelConfig | None = None,
        **ssh_client_kwargs: Any,
    ) -> None:
        self.config = config or ParallelConfig.from_env()
        # CVS's globals.log (the root logger), whatever `log` was given.
        self.log = logging.getLogger()
        self.ssh_client_kwargs = ssh_client_kwargs
        shards = self.config.hosts_per_shard
        if shards > 0 and len(host_list) > shards:
            self._init_sharded(
                log,
                host_list,
                user,
                password,
                pkey,
                host_key_check,
                stop_on_errors,
                env_vars,
                **ssh_client_kwargs,
            )
            self.sharder = PsshSharder(self.config)
            self.pssh = None
        else:
            self.pssh = Pssh(
                log,
                host_list,
                user,
                password,
                pkey,
                host_key_check,
                stop_on_errors,
                env_vars,
                process_output=True,
                **ssh_client_kwargs,
            )
            self.host_list = host_list  # the caller's object, as CVS (#176)
            self.reachable_hosts = list(host_list)
            self.unreachable_hosts: list[str] = []
            self.env_vars = env_vars

    def _init_sharded(
        self,
        log: Any,
        host_list: Sequence[str],
        user: str | None,
        password: str | None,
        pkey: str,
        host_key_check: bool,
        stop_on_errors: bool,
        env_vars: Mapping[str, Any] | None,
        **ssh_client_kwargs: Any,
    ) -> None:
        self.log = logging.getLogger()
        self.host_list = host_list
        self.reachable_hosts = list(host_list)
        self.unreachable_hosts = []
        self.user = user
        self.password = password
        self.pkey = pkey
        self.host_key_check = host_key_check
        self.stop_on_errors = stop_on_errors
        self.env_vars = env_vars
        self.ssh_client_kwargs = ssh_client_kwargs
        self.env_prefix = build_env_prefix(env_vars)
        self.process_output = True
        self.client = None

    # -- plumbing ----------------------------------------------------------------------------
    def _shard_init_kwargs(self) -> dict[str, Any]:
        return {
            "log": None,
            "user": self.user,
            "password": self.password,
            "pkey": self.pkey,
            "host_key_check": self.host_key_check,
            "stop_on_errors": self.stop_on_errors,
            "env_vars": self.env_vars,
            **self.ssh_client_kwargs,
        }

    def _sync_pssh_state(self) -> None:
        self.reachable_hosts = list(self.pssh.reachable_hosts)
        self.unreachable_hosts = list(self.pssh.unreachable_hosts)

    def _merge_shard_returns(
        self, shard_returns: Sequence[Mapping[str, Any]], merge_unreachable: bool = True
    ) -> dict[str, Any]:
        reachable: set[str] = set()
        for shard in shard_returns:
            reachable.update(shard["reachable_hosts"])
        self.reachable_hosts = [h for h in self.host_list if h in reachable]
        if merge_unreachable:
            for shard in shard_returns:
                for host in shard["unreachable_hosts"]:
                    if host not in self.unreachable_hosts:
                        self.unreachable_hosts.append(host)
        merged: dict[str, Any] = {}
        for shard in shard_returns:
            merged.update(shard.get("result") or {})
        return {h: merged[h] for h in self.host_list if h in merged}

    def _report_pruned(self, cmd_output: dict[str, Any], detailed: bool) -> dict[str, Any]:
        """Fixed (contract §1.4): CVS's shards never saw the hosts pruned by earlier calls, so
        they vanished from the output; they are reported as in the non-sharded path."""
        for host in self.unreachable_hosts:
            if host in cmd_output:
                continue
            if detailed:
                cmd_output[host] = {"output": UNREACHABLE_ABORT, "exit_code": -1}
            else:
                cmd_output[host] = UNREACHABLE_ABORT
        return cmd_output

    def _print_merged_outputs(
        self,
        cmd_output: Mapping[str, Any],
        cmd: str | None = None,
        cmd_list: Sequence[str] | None = None,
        cmd_hosts: Sequence[str] | None = None,
        print_console: bool = True,
    ) -> None:
        """Re-emit the per-host log lines for merged results. Fixed: CVS called
        ``.splitlines()`` on ``detailed=True`` entries (dicts) and crashed."""
        if not print_console:
            return
        log = self.log
        per_host = dict(zip(cmd_hosts, cmd_list)) if cmd_list and cmd_hosts else {}
        for host, value in cmd_output.items():
            log.info(BANNER)
            log.info(f"Host == {host} ==")
            log.info(BANNER)
            log.debug(per_host.get(host, cmd))
            text = value.get("output", "") if isinstance(value, Mapping) else value
            for line in str(text).splitlines():
                log.info(line)

    def _sharded_call(self, operation: str, merge_unreachable: bool = True, **op_args: Any) -> Any:
        chunks = list(self.sharder.chunk_hosts(self.reachable_hosts))
        payloads = self.sharder.create_payloads(
            operation, chunks, self._shard_init_kwargs(), **op_args
        )
        returns = self.sharder.execute_sharded(payloads)
        return self._merge_shard_returns(returns, merge_unreachable=merge_unreachable)

    # -- operations --------------------------------------------------------------------------
    def exec(
        self,
        cmd: str,
        timeout: float | None = None,
        print_console: bool = True,
        detailed: bool = False,
        inactivity_timeout: float | None = None,
    ) -> dict[str, Any]:
        extra = {} if inactivity_timeout is None else {"inactivity_timeout": inactivity_timeout}
        if self.pssh is not None:
            out = self.pssh.exec(
                cmd, timeout=timeout, print_console=print_console, detailed=detailed, **extra
            )
            self._sync_pssh_state()
            return out
        out = self._sharded_call("exec", cmd=cmd, timeout=timeout, detailed=detailed, **extra)
        self._report_pruned(out, detailed)
        full_cmd = f"{self.env_prefix} ; {cmd}" if self.env_prefix else cmd
        self._print_merged_outputs(out, cmd=full_cmd, cmd_list=None, print_console=print_console)
        return out

    def exec_cmd_list(
        self,
        cmd_list: Sequence[str],
        timeout: float | None = None,
        print_console: bool = True,
        inactivity_timeout: float | None = None,
    ) -> dict[str, str]:
        extra = {} if inactivity_timeout is None else {"inactivity_timeout": inactivity_timeout}
        if self.pssh is not None:
            out = self.pssh.exec_cmd_list(
                cmd_list, timeout=timeout, print_console=print_console, **extra
            )
            self._sync_pssh_state()
            return out
        if len(cmd_list) == len(self.host_list):
            by_host = dict(zip(self.host_list, cmd_list))
        elif len(cmd_list) == len(self.reachable_hosts):
            by_host = dict(zip(self.reachable_hosts, cmd_list))
        else:
            raise ValueError(
                "cmd_list length must match host_list length or reachable_hosts length "
                f"(cmd_list={len(cmd_list)}, host_list={len(self.host_list)}, "
                f"reachable_hosts={len(self.reachable_hosts)})"
            )
        hosts = list(self.reachable_hosts)
        size = self.config.hosts_per_shard
        init = self._shard_init_kwargs()
        payloads = []
        for start in range(0, len(hosts), size):
            chunk = hosts[start : start + size]
            payloads.append(
                self.sharder.create_payloads(
                    "exec_cmd_list",
                    [chunk],
                    init,
                    cmd_list=[by_host[h] for h in chunk],
                    timeout=timeout,
                    **extra,
                )[0]
            )
        returns = self.sharder.execute_sharded(payloads)
        out = self._merge_shard_returns(returns)
        self._report_pruned(out, False)
        prefix = self.env_prefix
        sent = [f"{prefix} ; {by_host[h]}" if prefix else by_host[h] for h in hosts]
        self._print_merged_outputs(out, cmd_list=sent, cmd_hosts=hosts, print_console=print_console)
        return out

    def scp_file(self, local_file: str, remote_file: str, recurse: bool = False) -> Any:
        self.log.info(f"About to copy local file {local_file} to remote {remote_file} on all Hosts")
        return self.upload_file(local_file, remote_file, recurse=recurse)

    def upload_file(self, local_file: str, remote_file: str, recurse: bool = False) -> Any:
        """None, or ``{}`` on a sharded handle (CVS's return values)."""
        if self.pssh is not None:
            self.pssh.upload_file(local_file, remote_file, recurse=recurse)
            return None
        return self._sharded_call(
            "upload_file", local_file=local_file, remote_file=remote_file, recurse=recurse
        )

    def upload_file_list(self, node_path_map: Mapping[str, tuple[str, str]]) -> dict[str, str]:
        if self.pssh is not None:
            return self.pssh.upload_file_list(node_path_map)
        init = self._shard_init_kwargs()
        payloads = []
        for chunk in self.sharder.chunk_hosts(self.reachable_hosts):
            targets = [h for h in chunk if h in node_path_map]
            if not targets:
                continue
            payloads.extend(
                self.sharder.create_payloads(
                    "upload_file_list",
                    [targets],
                    init,
                    node_path_map={h: node_path_map[h] for h in targets},
                )
            )
        if not payloads:
            return {}
        out: dict[str, str] = {}
        for shard in self.sharder.execute_sharded(payloads):
            out.update(shard.get("result", {}))
        return out

    def download_file(
        self,
        remote_file: str,
        local_file: str,
        recurse: bool = False,
        suffix_separator: str = "_",
        hosts: Sequence[str] | None = None,
    ) -> dict[str, str]:
        kwargs: dict[str, Any] = {"recurse": recurse, "suffix_separator": suffix_separator}
        if hosts is not None:
            kwargs["hosts"] = hosts
        if self.pssh is not None:
            return self.pssh.download_file(remote_file, local_file, **kwargs)
        if hosts is not None:
            # CVS main: the requested hosts, checked against the reachable ones, in one shard.
            wanted = list(dict.fromkeys(hosts))
            bad = [h for h in wanted if h not in self.reachable_hosts]
            if bad:
                raise ValueError(f"SFTP download requested unreachable host(s): {bad}")
            payloads = self.sharder.create_payloads(
                "download_file",
                [wanted],
                self._shard_init_kwargs(),
                remote_file=remote_file,
                local_file=local_file,
                recurse=recurse,
                suffix_separator=suffix_separator,
            )
            merged: dict[str, str] = {}
            for shard in self.sharder.execute_sharded(payloads):
                merged.update(shard.get("result") or {})
            return {h: merged[h] for h in wanted if h in merged}
        return self._sharded_call(
            "download_file",
            remote_file=remote_file,
            local_file=local_file,
            recurse=recurse,
            suffix_separator=suffix_separator,
        )

    def reboot_connections(self) -> Any:
        """None, or ``{}`` on a sharded handle (CVS's return values)."""
        if self.pssh is not None:
            self.pssh.reboot_connections()
            return None
        return self._sharded_call("reboot_connections", merge_unreachable=False)

    def prune_nodes(self, nodes_to_remove: Sequence[str]) -> list[str]:
        if self.pssh is not None:
            filtered = [h for h in nodes_to_remove or () if h in self.reachable_hosts]
            if not filtered:
                return []
            removed = self.pssh.prune_nodes(filtered)
            self._sync_pssh_state()
            return removed
        drop = {h for h in nodes_to_remove or () if h}
        removed = [h for h in self.reachable_hosts if h in drop]
        for host in removed:
            self.log.warning(f"Host {host} is unreachable, pruning from reachable hosts list.")
            if host not in self.unreachable_hosts:
                self.unreachable_hosts.append(host)
        if removed:
            self.reachable_hosts = [h for h in self.reachable_hosts if h not in drop]
        return removed

    def destroy_clients(self) -> None:
        if self.pssh is not None:
            self.pssh.destroy_clients()
            return
        self.log.info("Cleaning up sharded mode state ..")
        self.client = None
        # cvs-core's sharder keeps connections across calls: close them (a double has none).
        sharder = self.__dict__.get("sharder")
        if issubclass(type(sharder), PsshSharder):
            sharder.close()
