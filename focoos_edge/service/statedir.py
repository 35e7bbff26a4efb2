"""The daemon's hold on its state_dir: private (0700) and locked against a second daemon.

Two daemons on one state_dir would take frames from the same spool (uploaded and billed twice) and
flap each other's MQTT connection (same client id). An exclusive `flock` on `state_dir/lock`, held
for the life of the process, prevents it; the kernel releases it when the process ends, however it
ends, so a crash never leaves a stale lock. The file holds the owner's PID for the error message.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = "lock"


class StateDirError(RuntimeError):
    """The state_dir cannot be used: locked by another process, or not ours to use."""


class StateDirLock:
    """Holds the lock until `release()` (or the process ends)."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOCK_NAME
        private_dir(Path(state_dir))
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(self._fd)
            raise StateDirError(f"state_dir {state_dir} is in use by another focoos-edge process "
                                f"(PID {holder}); stop it first, or give this one another state_dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1


def private_dir(path: Path) -> None:
    """Create `path` with mode 0700, or bring an existing one owned by us to 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid != os.geteuid():
        log.warning("state_dir %s has mode %04o and belongs to uid %d: not changing it",
                    path, stat.S_IMODE(st.st_mode), st.st_uid)
    elif stat.S_IMODE(st.st_mode) & 0o077:
        log.warning("state_dir %s had mode %04o; set to 0700 (frames and messages are private)",
                    path, stat.S_IMODE(st.st_mode))
        path.chmod(0o700)
