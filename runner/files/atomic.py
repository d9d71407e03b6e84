"""Writing a whole file atomically: readers see the old file or the new one, never a part, and
the new one survives a power cut once `write_atomically` returns."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from runner.files import PRIVATE_FILE


def write_atomically(path: Path, chunks: Iterable[bytes], *, mode: int = PRIVATE_FILE,
                     durable: bool = True) -> None:
    """Write `chunks` to `path.partial` (created with `mode`), fsync it, rename it over `path`
    and fsync the folder. OSError when any step fails (the partial file is removed). Without
    `durable`, no fsync: readers still see the old file or the new one, but after a power cut the
    file may be missing, empty or short (for a file whose reader checks it whole, such as the
    resume index, where that only costs time)."""
    partial = path.with_name(path.name + ".partial")
    try:
        with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
            f.writelines(chunks)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.resolve().parent)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` durable (a new file's name, not only its data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
