"""Write a folder so that it appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

_STALE_AFTER_S = 3600.0  # a staging folder this old was left by a killed process


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `final`; when the block succeeds it becomes `final` in one rename.

    Invariant: `final` either does not exist or is complete. On an exception the staging folder is removed; if
    another process published `final` first, its copy is kept and ours discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(final)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(final), dir=final.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the published folder should read like any other
    try:
        yield staging
        _fsync_tree(staging)
        _publish(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, final: Path) -> None:
    try:
        os.rename(staging, final)
    except OSError:
        if not final.is_dir():
            raise


def _fsync_tree(folder: Path) -> None:
    # Flush before the rename, so a crash cannot leave a published folder with truncated files.
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _staging_prefix(final: Path) -> str:
    return f".{final.name}.partial-"


def _remove_stale_staging(final: Path) -> None:
    deadline = time.time() - _STALE_AFTER_S
    for leftover in final.parent.glob(_staging_prefix(final) + "*"):
        with contextlib.suppress(FileNotFoundError):  # another process may be removing it too
            if leftover.stat().st_mtime < deadline:
                shutil.rmtree(leftover, ignore_errors=True)
