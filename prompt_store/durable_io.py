"""The few file operations the store's crash-safety argument rests on (POSIX: rename is atomic, fsync is durable)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def write_file_synced(path: Path, data: bytes) -> None:
    """Write `data` to a new file and flush it to the disk before returning."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (files created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file_atomically(path: Path, data: bytes) -> None:
    """Readers see the old content or the new one, never a mix, even across a crash."""
    temp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        write_file_synced(temp, data)
        os.replace(temp, path)
    except OSError:  # a crash (power loss) leaves the temp file; scan() treats it as a leftover
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def rename_synced(source: Path, target: Path) -> None:
    """Atomic rename, made durable in both parent directories."""
    os.rename(source, target)
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)


def remove_tree(path: Path) -> None:
    """Remove a tree that is no longer reachable by name (callers rename it away first)."""
    shutil.rmtree(path, ignore_errors=True)
