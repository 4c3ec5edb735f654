"""CVS's ``cvs.lib.parallel.multiprocess_pssh``: ``MultiProcessPssh``, the ``Pssh`` every CVS
module actually gets (``cvs.lib.parallel_ssh_lib.Pssh``).

The constructor and both attribute sets are CVS's (contract §2.4): with more hosts than
``config.hosts_per_shard`` (``CVS_HOSTS_PER_SHARD``, default 32; 0 disables) the handle looks
sharded (``pssh is None``, ``client is None``, ``sharder``, ``user``, ``env_prefix``, ...),
otherwise it wraps ``self.pssh``.

What changed: NO processes are ever spawned. Every host count runs in-process through one
``Pssh`` on one ``cvs_core.Cluster`` (connections kept across calls), because the engine has no
per-process host ceiling: CVS's spawn pool paid an interpreter start, imports and fresh SSH
connects per call. In "sharded" mode that ``Pssh`` is private (``_engine``) and takes the
wrapper's ``stop_on_errors`` and ``env_vars`` at each call, since callers reassign them on the
wrapper. Bugs of the sharded path fixed on the way (contract §1.4, §2.4, §9.6): previously
pruned hosts are still reported (``ABORT: Host Unreachable Error``) instead of vanishing;
``detailed=True`` with ``print_console=True`` works; ``exec_cmd_list`` and ``upload_file_list``
work on subsets and after pruning.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from .config import ParallelConfig
from .interfaces import ShardableSshInterface
from .pssh import BANNER, Pssh, build_env_prefix
from .pssh_sharder import PsshSharder

__all__ = ["MultiProcessPssh"]


class MultiProcessPssh(ShardableSshInterface):
    """CVS's sharding ``Pssh`` wrapper, running every host count in-process."""

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
        self.config = config if config is not None else ParallelConfig.from_env()
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
            # Positional, as CVS (so a non-None log warns from Pssh, as it did).
            self.pssh = Pssh(
                log,
                host_list,
                user,
                password,
                pkey,
                host_key_check,
                stop_on_errors,
                env_vars,
                True,
                **ssh_client_kwargs,
            )
            self.host_list = host_list  # the caller's object, as CVS (#176)
            self.reachable_hosts = list(host_list)
            self.unreachable_hosts: list[str] = []
            self.env_vars = env_vars
            self.ssh_client_kwargs = ssh_client_kwargs
            self.log = logging.getLogger()

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
        if log is not None:
            warnings.warn(
                "MultiProcessPssh's 'log' argument is deprecated and ignored: output is logged "
                "through the root logger (globals.log)",
                DeprecationWarning,
                stacklevel=3,
            )
        self.log = logging.getLogger()
        self.host_list = list(host_list)
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
        self.client = None
        # The one in-process handle doing the work CVS spread over spawned worker processes.
        self._engine = Pssh(
            None,
            self.host_list,
            user,
            password,
            pkey,
            host_key_check,
            stop_on_errors,
            env_vars,
            True,
            **ssh_client_kwargs,
        )

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def _sharded(self) -> bool:
        return self.pssh is None

    def _inner(self) -> Pssh:
        if self.pssh is not None:
            return self.pssh
        # CVS's workers were built from the wrapper's attributes at every call, and applied
        # build_env_prefix(env_vars) themselves (the wrapper's env_prefix only fed its logs).
        engine = self._engine
        engine.stop_on_errors = self.stop_on_errors
        engine.env_prefix = build_env_prefix(self.env_vars)
        return engine

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
        inner = self.pssh if self.pssh is not None else self._engine
        with inner._lock:
            self.reachable_hosts = list(inner.reachable_hosts)
            self.unreachable_hosts = list(inner.unreachable_hosts)

    def _merge_shard_returns(
        self, shard_returns: Sequence[Mapping[str, Any] | None], merge_unreachable: bool = True
    ) -> dict[str, Any]:
        parts = [p or {} for p in shard_returns]
        reachable = {h for p in parts for h in p.get("reachable_hosts") or ()}
        self.reachable_hosts = [h for h in self.host_list if h in reachable]
        if merge_unreachable:
            for p in parts:
                for h in p.get("unreachable_hosts") or ():
                    if h not in self.unreachable_hosts:
                        self.unreachable_hosts.append(h)
        return PsshSharder.merge_results([p.get("result") for p in parts], self.host_list)

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
        log = self.log
        hosts = list(cmd_hosts) if cmd_hosts is not None else list(cmd_output)
        per_host = dict(zip(hosts, cmd_list)) if cmd_list else {}
        for host in cmd_output:
            log.info(BANNER)
            log.info(f"Host == {host} ==")
            log.info(BANNER)
            log.debug(per_host.get(host, cmd))
            if print_console:
                value = cmd_output[host]
                text = value.get("output", "") if isinstance(value, Mapping) else value
                for line in str(text).splitlines():
                    log.info(line)

    # -- operations --------------------------------------------------------------------------
    def exec(
        self,
        cmd: str,
        timeout: float | None = None,
        print_console: bool = True,
        detailed: bool = False,
        inactivity_timeout: float | None = None,
    ) -> dict[str, Any]:
        try:
            return self._inner().exec(
                cmd,
                timeout=timeout,
                print_console=print_console,
                detailed=detailed,
                inactivity_timeout=inactivity_timeout,
            )
        finally:
            self._sync_pssh_state()

    def exec_cmd_list(
        self,
        cmd_list: Sequence[str],
        timeout: float | None = None,
        print_console: bool = True,
        inactivity_timeout: float | None = None,
    ) -> dict[str, str]:
        if self._sharded and len(cmd_list) not in (
            len(self.host_list),
            len(self.reachable_hosts),
        ):
            raise ValueError(
                "cmd_list length must match host_list length or reachable_hosts length "
                f"(cmd_list={len(cmd_list)}, host_list={len(self.host_list)}, "
                f"reachable_hosts={len(self.reachable_hosts)})"
            )
        try:
            return self._inner().exec_cmd_list(
                cmd_list,
                timeout=timeout,
                print_console=print_console,
                inactivity_timeout=inactivity_timeout,
            )
        finally:
            self._sync_pssh_state()

    def scp_file(self, local_file: str, remote_file: str, recurse: bool = False) -> Any:
        self.log.info(f"About to copy local file {local_file} to remote {remote_file} on all Hosts")
        return self.upload_file(local_file, remote_file, recurse=recurse)

    def upload_file(self, local_file: str, remote_file: str, recurse: bool = False) -> Any:
        """None, or ``{}`` on a sharded handle (CVS's return values)."""
        try:
            self._inner().upload_file(local_file, remote_file, recurse=recurse)
        finally:
            self._sync_pssh_state()
        return {} if self._sharded else None

    def upload_file_list(self, node_path_map: Mapping[str, tuple[str, str]]) -> dict[str, str]:
        try:
            return self._inner().upload_file_list(node_path_map)
        finally:
            self._sync_pssh_state()

    def download_file(
        self,
        remote_file: str,
        local_file: str,
        recurse: bool = False,
        suffix_separator: str = "_",
        hosts: Sequence[str] | None = None,
    ) -> dict[str, str]:
        try:
            return self._inner().download_file(
                remote_file,
                local_file,
                recurse=recurse,
                suffix_separator=suffix_separator,
                hosts=hosts,
            )
        finally:
            self._sync_pssh_state()

    def reboot_connections(self) -> Any:
        """None, or ``{}`` on a sharded handle (CVS's return values)."""
        self._inner().reboot_connections()
        return {} if self._sharded else None

    def prune_nodes(self, nodes_to_remove: Sequence[str]) -> list[str]:
        try:
            return self._inner().prune_nodes(nodes_to_remove)
        finally:
            self._sync_pssh_state()

    def destroy_clients(self) -> None:
        if self._sharded:
            self.client = None
            self._engine.destroy_clients()
        else:
            self.pssh.destroy_clients()
