"""CVS's ``cvs.lib.parallel.interfaces``: ``ShardableSshInterface``.

The six abstract methods are the operations ``PsshSharder`` supports (``SUPPORTED_OPERATIONS``
is computed from this set). ``download_file`` has main's ``hosts=None`` parameter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

__all__ = ["ShardableSshInterface"]


class ShardableSshInterface(ABC):
    """The parallel-SSH operations a sharded handle must provide."""

    @abstractmethod
    def exec(self, cmd, timeout=None, print_console=True, detailed=False):
        """Run ``cmd`` on every reachable host."""

    @abstractmethod
    def exec_cmd_list(self, cmd_list, timeout=None, print_console=True):
        """Run ``cmd_list[i]`` on reachable host ``i``."""

    @abstractmethod
    def upload_file(self, local_file, remote_file, recurse=False):
        """Copy a local file to every reachable host."""

    @abstractmethod
    def upload_file_list(self, node_path_map):
        """Copy ``{host: (local, remote)}``."""

    @abstractmethod
    def download_file(
        self, remote_file, local_file, recurse=False, suffix_separator="_", hosts=None
    ):
        """Copy a remote file from every (or each requested) host to ``local<sep><host>``."""

    @abstractmethod
    def reboot_connections(self):
        """Send ``reboot -f`` to every reachable host."""
