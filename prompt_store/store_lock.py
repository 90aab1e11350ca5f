"""One process per store directory: an exclusive `flock` on `<store>/promptswap.lock`.

Start-up discards `staging/` and `trash/`, which would destroy another process's upload in flight, and two
processes appending versions to one task would both write `v<N+1>`. The kernel drops a `flock` when its process
dies, however it dies (kill -9 included), so a stale lock file never blocks a restart.

Within one process the lock is shared and counted: the CLI takes it before the server starts (so a second server
fails before binding its port), the store takes it again, and tests may open several stores on one directory to
simulate restarts. Note: `flock` is advisory and local; on NFS it does not exclude other hosts.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import Self

from prompt_store.errors import StorageError

LOCK_FILE = "promptswap.lock"

_guard = threading.Lock()
_held: dict[Path, list[int]] = {}  # resolved store directory -> [fd, number of holders in this process]


class StoreLockedError(StorageError):
    """Another process serves this store directory."""


class StoreLock:
    """A hold on a store directory's lock; `release()` once (the last holder in the process unlocks)."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory).resolve()
        self._is_held = False
        with _guard:
            entry = _held.get(self.directory)
            if entry is None:
                entry = _held[self.directory] = [_lock_file(self.directory), 0]
            entry[1] += 1
        self._is_held = True

    def release(self) -> None:
        with _guard:
            if not self._is_held:
                return
            self._is_held = False
            entry = _held[self.directory]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[self.directory]
                os.close(entry[0])  # closing the only descriptor drops the flock

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _lock_file(directory: Path) -> int:
    """Open and lock `<directory>/promptswap.lock`, recording our pid in it; raise StoreLockedError if held."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # O_CLOEXEC: children don't inherit it
    except OSError as exc:
        raise StorageError(f"cannot open the prompt store {directory}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreLockedError(
            f"prompt store {directory} is in use by another promptswap process (pid {owner}); "
            "run one server per store directory, or give this one another --store"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StorageError(f"cannot lock the prompt store {directory}: {exc.strerror or exc}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message above; the flock is what excludes
    return fd
