"""CVS's ``cvs.core.orchestrators.baremetal``: commands run on the hosts themselves.

Seams kept from CVS (callers and tests rely on them; ``shared/spec/cvs-test-seams.md``):

- ``Pssh`` is this module's global, looked up when it is used, so
  ``mock.patch("...orchestrators.baremetal.Pssh")`` works. ``__init__`` calls it exactly twice
  (``head`` over ``[hosts[0]]``, then ``all``) with CVS's arguments, and a host-subset
  ``exec``/``setup_env`` builds one more per call that is never destroyed (B14).
- Full-cluster calls go through ``self.all.exec(cmd, timeout=..., detailed=...)`` with keywords.
  ``print_console`` (CVS main) is forwarded only when it is not the default, so callers that
  assert fa4ca32e's exact call still match.
- ``build_mpi_cmd``/``get_mpi_command``/``distribute_using_mpi`` are fa4ca32e's (O8-O10),
  including its unchecked hostfile writes.

Changed under the seam: when ``Pssh`` is cvs-core's engine class and nothing in its
construction was replaced (``_engine``), a host subset reuses a kept handle (bounded, closed by
``cleanup()``/``close()``) instead of opening and leaking one connection per host on every call
(contract §9.2): a readiness loop polling one host opens one connection, not one per poll.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from cvs_core.compat._engine import is_engine_class
from cvs_core.compat._results import console_kw as _console_kw
from cvs_core.compat._results import exit_code as _exit_code
from cvs_core.compat.parallel_ssh_lib import Pssh

from .base import Orchestrator

# The engine's own class, captured before anyone patches the module global: only handles of
# this class are known to hold reusable connections and to be safe to share between threads.
_ENGINE_PSSH: type = Pssh

MPI_HOSTFILE = "/tmp/mpi_hosts.txt"
# CVS main's cvs.lib.utils_lib.get_passwordless_sudo_status probe.

SUDO_PROBE_CMD = "sudo -n true >/dev/null 2>&1; echo $?"
# Distinct host subsets whose handles are kept; the least recently used one is closed beyond.
MAX_SUBSET_HANDLES = 16
# Guards the first creation of an orchestrator's private state.
_PRIVATE_LOCK = threading.Lock()


def _destroy(handle: Any, log: Any) -> None:
    destroy = getattr(handle, "destroy_clients", None)
    if not callable(destroy):
        return
    try:
        destroy()
    except Exception as exc:  # closing must never hide the command's own outcome
        log.debug(f"destroy_clients failed: {exc}")


def _last_line(output: Any) -> str:
    if isinstance(output, dict):
        output = output.get("output", "")
    lines = str(output or "").strip().splitlines()
    return lines[-1].strip() if lines else ""


class BaremetalOrchestrator(Orchestrator):
    """Runs commands on the cluster's hosts over SSH (CVS's baremetal backend)."""

    def __init__(self, log: Any, config: Any, stop_on_errors: bool = False) -> None:
        super().__init__(log, config, stop_on_errors)
        self.orchestrator_type = "baremetal"
        # Used only in mpirun's rsh arguments (the container orchestrator's sshd port).
        self.ssh_port = 22
        node_dict = config.get("node_dict")
        if node_dict is None:
            raise ValueError("node_dict must be provided in configuration")
        if isinstance(node_dict, dict):
            self.hosts = list(node_dict.keys())
        else:
            self.hosts = [n.get("mgmt_ip") for n in node_dict]
        if not self.hosts:
            raise ValueError("node_dict has no hosts")
        # CVS ignores head_node_dict: the head is always the first host.
        self.head_node = self.hosts[0]
        self.user = config.get("username")
        self.pkey = config.get("priv_key_file")
        self.password = config.get("password")
        self.head = Pssh(
            log,
            [self.head_node],
            user=self.user,
            password=self.password,
            pkey=self.pkey,
            host_key_check=False,
            stop_on_errors=self.stop_on_errors,
        )
        self.all = Pssh(
            log,
            self.hosts,
            user=self.user,
            password=self.password,
            pkey=self.pkey,
            host_key_check=False,
            stop_on_errors=self.stop_on_errors,
        )

    # -- private state, created on first use ------------------------------------------------
    # Callers build orchestrators with __init__ replaced and set CVS's attributes by hand
    # (seams §3), so nothing below may rely on __init__ having run.
    def _private(self, name: str, make: Any) -> Any:
        value = self.__dict__.get(name)
        if value is None:
            with _PRIVATE_LOCK:
                value = self.__dict__.get(name)
                if value is None:
                    value = self.__dict__[name] = make()
        return value

    @property
    def _subset_lock(self) -> threading.Lock:
        return self._private("_cvs_core_subset_lock", threading.Lock)

    @property
    def _subset_handles(self) -> OrderedDict[tuple[str, ...], Any]:
        return self._private("_cvs_core_subset_handles", OrderedDict)

    # -- command execution -----------------------------------------------------------------
    def exec(
        self,
        cmd: str,
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        detailed: bool = False,
        print_console: bool = True,
    ) -> Any:
        """Run ``cmd`` on ``hosts`` (all hosts when None)."""
        if hosts is None or set(hosts) == set(self.hosts):
            return self.all.exec(
                cmd, timeout=timeout, detailed=detailed, **_console_kw(print_console)
            )
        return self._exec_subset(cmd, hosts, timeout, detailed, print_console)

    def exec_on_host(
        self,
        cmd: str,
        hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        detailed: bool = False,
        print_console: bool = True,
    ) -> Any:
        """Run ``cmd`` on the host OS, also for the container orchestrator (CVS main)."""
        return BaremetalOrchestrator.exec(
            self, cmd, hosts=hosts, timeout=timeout, detailed=detailed, print_console=print_console
        )

    def exec_on_head(
        self,
        cmd: str,
        timeout: float | None = None,
        detailed: bool = False,
        print_console: bool = True,
    ) -> Any:
        return self.head.exec(cmd, timeout=timeout, detailed=detailed, **_console_kw(print_console))

    def exec_cmd_list(
        self, cmd_list: Sequence[str], timeout: float | None = None, print_console: bool = True
    ) -> Any:
        """``cmd_list[i]`` on host ``i`` (the Pssh convention); ``{host: str}``."""
        return self.all.exec_cmd_list(cmd_list, timeout=timeout, **_console_kw(print_console))

    def _exec_subset(
        self,
        cmd: str,
        hosts: Sequence[str],
        timeout: float | None,
        detailed: bool,
        print_console: Any,
    ) -> Any:
        kw = _console_kw(print_console)
        if not is_engine_class(Pssh, _ENGINE_PSSH):
            # CVS fa4ca32e: a new handle per call, never destroyed (seams B14). Whoever replaced
            # the class counts these constructions; a double holds no connection to leak.
            handle = Pssh(
                self.log,
                hosts,
                user=self.user,
                password=self.password,
                pkey=self.pkey,
                host_key_check=False,
                stop_on_errors=self.stop_on_errors,
            )
            return handle.exec(cmd, timeout=timeout, detailed=detailed, **kw)
        if not hosts:
            return {}  # what a handle over no host answers
        handle = self._kept_subset_handle(hosts)
        return handle.exec(cmd, timeout=timeout, detailed=detailed, **kw)

    def _kept_subset_handle(self, hosts: Sequence[str]) -> Any:
        """The engine handle kept for ``hosts`` (built on first use, least recently used one
        closed beyond ``MAX_SUBSET_HANDLES``): a subset polled in a loop opens its connections
        once, where CVS opened and leaked them on every call."""
        key = tuple(hosts)
        with self._subset_lock:
            cached = self._subset_handles.get(key)
            if cached is not None:
                self._subset_handles.move_to_end(key)
                return cached
        handle = _ENGINE_PSSH(
            self.log,
            list(hosts),
            user=self.user,
            password=self.password,
            pkey=self.pkey,
            host_key_check=False,
            stop_on_errors=self.stop_on_errors,
        )
        evicted: list[Any] = []
        with self._subset_lock:
            raced = self._subset_handles.get(key)
            if raced is not None:  # another thread built one meanwhile: keep a single handle
                evicted.append(handle)
                handle = raced
            else:
                self._subset_handles[key] = handle
                while len(self._subset_handles) > MAX_SUBSET_HANDLES:
                    evicted.append(self._subset_handles.popitem(last=False)[1])
        for old in evicted:
            _destroy(old, self.log)
        return handle

    def close(self) -> None:
        """Close every connection this orchestrator holds. ``head`` and ``all`` are destroyed
        as CVS's ``destroy_clients()`` does (their ``client`` is dropped), so the orchestrator
        is not usable afterwards."""
        self._close_subset_handles()
        for handle in (self.head, self.all):
            _destroy(handle, self.log)

    def _close_subset_handles(self) -> None:
        with self._subset_lock:
            handles = list(self._subset_handles.values())
            self._subset_handles.clear()
        for handle in handles:
            _destroy(handle, self.log)

    # -- privilege -------------------------------------------------------------------------
    def sudo_prefix(self) -> str:
        """``'sudo -n '`` where passwordless sudo works, else ``''`` (CVS main, #260).

        Probed once over all hosts; when hosts disagree the head node's answer wins (with a
        warning). If the probe gives nothing readable, CVS fa4ca32e's literal ``'sudo '``.
        """
        # CVS main's cache (_needs_sudo; None = not probed yet), read with getattr: the
        # attribute is absent when __init__ was replaced.
        if getattr(self, "_needs_sudo", None) is None and not getattr(self, "_sudo_unknown", False):
            answer = self._probe_passwordless_sudo()
            if answer is None:
                self._sudo_unknown = True
            else:
                self._needs_sudo = answer
        needs = getattr(self, "_needs_sudo", None)
        if needs is None:
            return "sudo "
        return "sudo -n " if needs else ""

    def _probe_passwordless_sudo(self) -> bool | None:
        out = self.all.exec(SUDO_PROBE_CMD)
        if not isinstance(out, dict) or not out:
            return None
        # The probe always prints sudo's exit status; anything else (an unreachable host's
        # ABORT line, no output at all) is no answer, not a "no".
        status = {
            host: int(last) == 0
            for host, last in ((h, _last_line(v)) for h, v in out.items())
            if last.isdigit()
        }
        if len(set(status.values())) > 1:
            self.log.warning(f"Hosts disagree on passwordless sudo availability: {status}")
        return status.get(self.head_node)

    # -- environment and cleanup -----------------------------------------------------------
    def setup_env(self, hosts: Sequence[str] | None, env_script: str | None = None) -> bool:
        return self._setup_env(hosts, env_script, self.exec_on_head)

    def _setup_env(self, hosts: Sequence[str] | None, env_script: str | None, on_head: Any) -> bool:
        if not env_script:
            self.log.info("No environment script specified, skipping setup")
            return True
        cmd = f"bash {env_script}"
        if hosts is None or set(hosts) == set(self.hosts):
            results = self.all.exec(cmd, timeout=60, detailed=True)
        elif list(hosts) == [self.head_node]:
            results = on_head(cmd, timeout=60, detailed=True)
        else:
            results = self._exec_subset(cmd, hosts, 60, True, True)
        failed = [h for h, r in results.items() if _exit_code(r) != 0]
        if failed:
            self.log.error(f"Environment setup failed on hosts: {failed}")
            return False
        return True

    def cleanup(self, hosts: Sequence[str] | None) -> bool:
        self.log.info(f"Cleaning up on {len(hosts or ())} hosts")
        self._close_subset_handles()
        return True

    # -- MPI -------------------------------------------------------------------------------
    def build_mpi_cmd(
        self,
        rank_cmd: str,
        mpi_hosts: Sequence[str],
        ranks_per_host: int,
        env_vars: Any,
        mpi_install_dir: str,
        mpi_extra_args: Any = None,
        no_of_global_ranks: int | None = None,
    ) -> str:
        """Write the hostfile on the head node and return the ``mpirun`` command line.

        CVS's two ``exec_on_head(cmd)`` calls (seams O8): no timeout, not detailed, results
        ignored. A stale hostfile that could not be removed, or a write that failed, goes
        unnoticed until mpirun reads the file (CVS main checks both and raises).
        """
        host_lines = "".join(f"{host} slots={ranks_per_host}\n" for host in mpi_hosts)
        # /tmp is sticky: another user's stale hostfile can only be removed with sudo. In a
        # container the same command runs inside it (where sudo may be missing: ignored too).
        self.exec_on_head(f"sudo rm -f {MPI_HOSTFILE}")
        self.exec_on_head(f"bash -c 'echo \"{host_lines}\" > {MPI_HOSTFILE}'")
        np = no_of_global_ranks or len(mpi_hosts) * ranks_per_host
        runner_args = [f"--np {np}", "--allow-run-as-root", f"--hostfile {MPI_HOSTFILE}"]
        if isinstance(mpi_extra_args, str):
            runner_args.append(mpi_extra_args)
        elif mpi_extra_args:
            runner_args.extend(str(a) for a in mpi_extra_args)
        return self.get_mpi_command(rank_cmd, runner_args, env_vars, mpi_install_dir)

    def get_mpi_command(
        self, rank_cmd: str, mpi_runner_args: Any, env_vars: Any, mpi_install_dir: str
    ) -> str:
        """CVS's f-string exactly (seams O9): empty ``env_vars`` leave two spaces before
        ``rank_cmd``; ``mpi_runner_args`` is a list of words and ``env_vars`` a dict."""
        ssh_opts = (
            f'--mca plm_rsh_agent ssh --mca plm_rsh_args "-p {self.ssh_port} '
            f'-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"'
        )
        env = " ".join(f"-x {k}={v}" for k, v in env_vars.items())
        return f"{mpi_install_dir}/mpirun {ssh_opts} {' '.join(mpi_runner_args)} {env} {rank_cmd}"

    def distribute_using_mpi(
        self,
        rank_cmd: str,
        mpi_hosts: Sequence[str],
        ranks_per_host: int,
        env_vars: Any,
        mpi_install_dir: str,
        mpi_extra_args: Any = None,
        no_of_global_ranks: int | None = None,
    ) -> Any:
        full_cmd = self.build_mpi_cmd(
            rank_cmd,
            mpi_hosts,
            ranks_per_host,
            env_vars,
            mpi_install_dir,
            mpi_extra_args,
            no_of_global_ranks,
        )
        return self.exec_on_head(full_cmd, timeout=500)
