"""Atomic writes: every file and folder embedray writes goes through here.

One semantics everywhere: the content goes to a temporary name in the target's own folder
(same filesystem), is flushed and fsynced, then renamed over the target, and the folder entry
is fsynced. A reader sees the old content or the new, never part of either; a write that fails
or is interrupted leaves no temporary file behind (a SIGKILL may leave a dot-named ``.tmp``,
which no reader ever opens).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "atomic_open", "write_bytes_atomic", "write_text_atomic", "write_json_atomic",
           "atomic_dir", "replace_dir", "fsync_path"]


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's data and metadata to disk (a folder: its entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fsync_path(folder)
    except OSError:
        pass  # some filesystems do not open or sync folders; the rename itself is still atomic


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (a Parquet writer,
    ``savefig``); on a clean exit it is fsynced and renamed over ``path``, else deleted.
    ``mode``: permission bits of the new file (e.g. ``0o600``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, binary: bool = False, mode: int | None = None,
                newline: str | None = None) -> Iterator[IO]:
    """An open file whose content replaces ``path`` when the ``with`` block ends without error."""
    with atomic_path(path, mode=mode) as tmp:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": newline})) as f:
            yield f
            f.flush()


def write_bytes_atomic(data: bytes, path: str | os.PathLike, mode: int | None = None) -> Path:
    with atomic_open(path, binary=True, mode=mode) as f:
        f.write(data)
    return Path(path)


def write_text_atomic(text: str, path: str | os.PathLike, mode: int | None = None) -> Path:
    with atomic_open(path, mode=mode) as f:
        f.write(text)
    return Path(path)


def write_json_atomic(obj: Any, path: str | os.PathLike, indent: int | None = 2) -> Path:
    """``obj`` as strict JSON (UTF-8, non-ASCII kept; paths, dates and other objects JSON lacks
    written with ``str``). NaN and infinities are not JSON: ``ValueError``, the old file kept."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, default=str, allow_nan=False)
    return write_text_atomic(text + "\n", path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; on a clean exit it becomes ``path`` in one
    rename (an existing ``path`` is swapped out and deleted only after that, when ``overwrite``;
    otherwise ``FileExistsError``). On error the temporary folder is deleted."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Move the complete folder ``new`` to ``target``; an old ``target`` is swapped out first
    and deleted only after the rename succeeded (on failure it is put back)."""
    new, target = Path(new), Path(target)
    if not target.exists():
        new.rename(target)
        _fsync_dir(target.parent)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    old.rmdir()
    target.rename(old)
    try:
        new.rename(target)
    except OSError:
        old.rename(target)
        raise
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
