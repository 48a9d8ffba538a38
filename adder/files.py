"""The files a run writes, so that a crash never leaves half of one: atomic writes, synced to disk; and
metrics.jsonl read back."""

from __future__ import annotations

import json
import os
from pathlib import Path


def atomic_write(path: str | Path, write) -> None:
    """write(f) into a temporary file beside `path`, flushed to disk, then renamed over `path`:
    a crash at any moment leaves either the old file or the new one, never half of one. A failed write
    (a full disk) removes the temporary file and raises the OSError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        sync_to_disk(path.parent)  # the new name too
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def sync_to_disk(*paths: Path) -> None:
    """fsync each path: a file's contents, or a folder's entries (the names in it), so that they survive a
    machine that stops without flushing its cache (a pre-empted VM). For a folder only where it can be done:
    some network filesystems refuse, and Windows opens no folder."""
    for path in paths:
        folder = path.is_dir()
        try:
            fd = os.open(path, os.O_RDONLY if folder or os.name == "posix" else os.O_RDWR)  # Windows: write access
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            if not folder:
                raise


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's rows, one per finished epoch."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
