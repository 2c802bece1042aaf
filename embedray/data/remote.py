"""Data named by a filesystem URI that pyarrow opens (``s3://``, ``gs://``, ``hdfs://``, ``abfs://``).

Every reader of the project takes local paths: a corpus is memory-mapped, counted by line and
validated row by row, and a run re-reads it at each resume. So a URI is mirrored once into a
local folder, which then stands in for it everywhere: for a training job or a pipeline that
folder is under ``cluster.storage_path`` / ``output_dir`` (``.data/``), which every node of a
cluster already shares; for a one-off command it is under ``$EMBEDRAY_CACHE/.data``.

The mirror copies what is there: a folder (a BEIR folder, say) recursively, or one file. A file
is downloaded again only when its size or modification time changed; files gone from the source
are removed from the mirror. Each file is written beside its final name and renamed into place
when complete, and the mirror's manifest is written last, so an interrupted copy resumes
rather than leaving a half-written corpus that looks whole. Credentials come from the
filesystem's usual settings (``AWS_*`` variables, instance roles, ``GOOGLE_APPLICATION_CREDENTIALS``);
a URI's own ``user:secret@`` part is never printed. A ``file://`` URI is a local path, read where it is.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from embedray.atomic import atomic_open, write_json_atomic

#: ``scheme://`` at the start of a setting (a Windows drive letter has one letter and no ``//``).
_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")
MANIFEST = ".embedray-mirror.json"
#: The mirrors' folder under a run's storage (and under ``$EMBEDRAY_CACHE``).
MIRROR_DIR = ".data"
#: Read size of each download request.
CHUNK = 8 << 20
#: Seconds a process waits for another one mirroring the same URI.
LOCK_TIMEOUT_S = 3600


def is_uri(value: Any) -> bool:
    """``s3://…`` and the like. A plain path is not one, nor a ``file://`` URI (a local path,
    read where it is: see :func:`plain_path`)."""
    return isinstance(value, str) and _URI.match(value) is not None and not value.startswith("file://")


def plain_path(value: str) -> str:
    """``file:///a/b`` → ``/a/b``; anything else as it is."""
    if isinstance(value, str) and value.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(value).path)
    return value


def redact(uri: str) -> str:
    """``uri`` without the ``user:secret@`` part a URI may carry."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]+://)[^/@]*@", r"\1", uri)


@dataclass
class Copied:
    """What one :func:`mirror` or :func:`publish` call did."""

    source: str
    """A URI or a folder."""
    target: str
    files: int = 0
    bytes: int = 0
    copied: int = 0
    """Files written (a mirror skips the unchanged ones; a publish writes all)."""
    removed: int = 0
    """Files the source no longer has, deleted from the target."""

    @property
    def local(self) -> Path:
        """A mirror's local copy (a folder or a file)."""
        return Path(self.target)

    def summary(self) -> str:
        return (f"{redact(self.source)} → {redact(self.target)} ({self.files} file{'s' * (self.files != 1)}, "
                f"{_size(self.bytes)}; {self.copied} copied, {self.files - self.copied} unchanged"
                f"{f', {self.removed} removed' if self.removed else ''})")


def _size(n: int) -> str:
    return next(f"{n / d:.1f} {u}" for d, u in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "B")) if n >= d or d == 1)


def _pump(src, out, bar) -> None:
    """Copy one open stream into another in :data:`CHUNK` reads, advancing the progress bar."""
    while chunk := src.read(CHUNK):
        out.write(chunk)
        bar.update(len(chunk))


def _open_source(uri: str, setting: str):
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:
        raise ValueError(f"{setting}: {redact(uri)}: not a filesystem URI pyarrow can open ({e})") from None
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise ValueError(f"{setting}: {redact(uri)}: cannot be read ({e})") from None
    if info.type == pafs.FileType.NotFound:
        raise ValueError(f"{setting}: {redact(uri)}: not found")
    return fs, path, info


def _relative(base: str, path: str, uri: str) -> PurePosixPath:
    """``path`` below ``base``, refused when it would leave the mirror's folder."""
    rel = PurePosixPath(path[len(base) + 1:]) if path.startswith(base.rstrip("/") + "/") else None
    if rel is None or not rel.parts or rel.is_absolute() or any(p in ("..", ".") for p in rel.parts) \
            or rel.name == MANIFEST:
        raise ValueError(f"{redact(uri)}: the object {path!r} has a name that can't be mirrored into a folder")
    return rel


def mirror(uri: str, root: str | Path, setting: str = "data", progress: bool = True) -> Copied:
    """Copy ``uri`` (a folder or one file) below ``root``; return where it is and what was copied.

    The copy is ``root/<hash of the URI>/<its name>``, a folder or a file. Processes
    mirroring the same URI at once wait for the first (a file lock).

    Raises:
        ValueError: naming ``setting``: the URI doesn't parse, can't be read or doesn't exist.
    """
    import pyarrow.fs as pafs
    from filelock import FileLock
    from tqdm import tqdm

    fs, path, info = _open_source(uri, setting)
    name = PurePosixPath(path.rstrip("/")).name or "root"
    home = Path(root).expanduser().resolve() / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if info.type == pafs.FileType.File:
        base, listing, dest = str(PurePosixPath(path).parent), [info], home
    else:
        base, dest = path.rstrip("/"), home / name
        listing = [f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                   if f.type == pafs.FileType.File]
        if not listing:
            raise ValueError(f"{setting}: {redact(uri)}: an empty folder")
    files = {str(_relative(base, f.path, uri)): f for f in listing}
    dest.mkdir(parents=True, exist_ok=True)
    with FileLock(str(home / ".lock"), timeout=LOCK_TIMEOUT_S):
        manifest_path = home / MANIFEST
        try:
            known = json.loads(manifest_path.read_text())["files"]
        except (OSError, ValueError, KeyError):
            known = {}
        todo = {rel: f for rel, f in files.items()
                if known.get(rel) != [f.size, f.mtime_ns] or f.mtime_ns is None or not (dest / rel).is_file()
                or (dest / rel).stat().st_size != f.size}
        done = Copied(uri, str(home / name if info.type == pafs.FileType.File else dest),
                      files=len(files), bytes=sum(f.size or 0 for f in files.values()), copied=len(todo))
        for rel in set(known) - set(files):  # gone from the source
            (dest / rel).unlink(missing_ok=True)
            done.removed += 1
        total = sum(f.size or 0 for f in todo.values())
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"mirror {setting}",
                  disable=not progress or not todo, file=sys.stderr, mininterval=2.0) as bar:
            for rel, f in todo.items():
                local = dest / rel
                local.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with fs.open_input_stream(f.path) as src, atomic_open(local, binary=True) as out:
                        _pump(src, out, bar)
                except OSError as e:
                    raise ValueError(f"{setting}: {redact(uri)}: reading {rel} failed ({e})") from None
                if f.mtime_ns is not None:  # the file's identity (size, mtime) follows the source's
                    os.utime(local, ns=(f.mtime_ns, f.mtime_ns))
        write_json_atomic({"uri": redact(uri), "files": {rel: [f.size, f.mtime_ns] for rel, f in files.items()}},
                          manifest_path)
    return done


#: Written last into a published folder: what it holds, so that the next publish may replace it.
PUBLISHED = ".embedray-published.json"


def _publish_target(dest: str, setting: str):
    """``(filesystem, folder, {name: file info})`` of a publish destination, refused when it is a
    file or holds files that no publish wrote."""
    import pyarrow.fs as pafs

    target = dest if is_uri(dest) else str(Path(plain_path(dest)).expanduser().resolve())
    try:
        fs, root = pafs.FileSystem.from_uri(target)
        info = fs.get_file_info(root)
        root = root.rstrip("/")
        if info.type == pafs.FileType.File:
            raise ValueError(f"{setting}: {redact(dest)}: a file, not a folder")
        there = {} if info.type == pafs.FileType.NotFound else {
            str(_relative(root, f.path, dest)): f for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if f.type == pafs.FileType.File}
    except OSError as e:
        raise ValueError(f"{setting}: {redact(dest)}: cannot be opened ({e})") from None
    except ValueError as e:
        raise ValueError(str(e) if str(e).startswith(setting) else f"{setting}: {redact(dest)}: {e}") from None
    if there and PUBLISHED not in there:
        raise ValueError(f"{setting}: {redact(dest)}: holds {len(there)} files no earlier publish wrote "
                         f"(e.g. {sorted(there)[0]}); name an empty or new destination")
    return fs, root, there


def check_publishable(dest: str, setting: str = "publish") -> None:
    """Raise now what :func:`publish` would raise about ``dest`` later (nothing is written)."""
    _publish_target(dest, setting)


def publish(local: str | Path, dest: str, setting: str = "publish", progress: bool = True) -> Copied:
    """Copy the folder ``local`` to ``dest`` (a URI, or a path), for another machine to load.

    What an earlier publish wrote there is replaced (files it held that ``local`` lacks are
    deleted); a destination that holds other files is refused, so nothing else is overwritten.
    The manifest :data:`PUBLISHED` goes last: a folder without it is incomplete.

    Raises:
        ValueError: naming ``setting``, for a destination that can't be opened or written, or
            that holds files no publish wrote.
    """
    from tqdm import tqdm

    local = Path(local).resolve()
    fs, root, there = _publish_target(dest, setting)
    files = sorted(p for p in local.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(local).parts))
    done = Copied(str(local), dest, files=len(files), bytes=sum(f.stat().st_size for f in files), copied=len(files))
    try:
        if PUBLISHED in there:  # from now until the new one is written, the folder is incomplete
            fs.delete_file(f"{root}/{PUBLISHED}")
        with tqdm(total=done.bytes, unit="B", unit_scale=True, desc=f"publish {setting}",
                  disable=not progress, file=sys.stderr, mininterval=2.0) as bar:
            for f in files:
                rel = f.relative_to(local).as_posix()
                fs.create_dir(f"{root}/{rel}".rsplit("/", 1)[0], recursive=True)
                with open(f, "rb") as src, fs.open_output_stream(f"{root}/{rel}") as out:
                    _pump(src, out, bar)
        kept = {f.relative_to(local).as_posix() for f in files}
        for rel in sorted(set(there) - kept - {PUBLISHED}):
            fs.delete_file(f"{root}/{rel}")
            done.removed += 1
        manifest = {"files": {f.relative_to(local).as_posix(): f.stat().st_size for f in files}}
        with fs.open_output_stream(f"{root}/{PUBLISHED}") as out:
            out.write(json.dumps(manifest, indent=2).encode())
    except OSError as e:
        raise ValueError(f"{setting}: {redact(dest)}: writing failed ({e})") from None
    return done


@dataclass
class Localized:
    """The URIs a config named, each replaced by its mirror."""

    mirrors: dict[str, Copied] = field(default_factory=dict)
    """setting → what was mirrored for it."""

    def lines(self) -> list[str]:
        return [f"[embedray] {setting}: {m.summary()}" for setting, m in self.mirrors.items()]


#: The settings that name data files or folders, by the config class that holds them.
_DATA_FIELDS = {"DataConfig": ("path", "train_pairs", "train_labels"),
                "PrepareConfig": ("flag_train", "flag_dev", "flag_test")}


def localize(cfg: Any, root: str | Path, progress: bool = True) -> Localized:
    """Mirror every data URI of a job or pipeline config below ``root`` and point the config at
    the mirrors, in place (a URI met twice is copied once)."""
    out = Localized()
    done: dict[str, Copied] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{getattr(item, 'name', i)}]")
            return
        if not dataclasses.is_dataclass(node):
            return
        for name in _DATA_FIELDS.get(type(node).__name__, ()):
            value = plain_path(getattr(node, name))
            setattr(node, name, value)
            if is_uri(value):
                setting = f"{where}.{name}".lstrip(".")
                if value not in done:
                    done[value] = mirror(value, root, setting, progress)
                out.mirrors[setting] = done[value]
                setattr(node, name, str(done[value].local))
        for f in dataclasses.fields(node):
            walk(getattr(node, f.name), f"{where}.{f.name}")

    walk(cfg, "")
    return out


def local_data(value: str, setting: str, root: str | Path, progress: bool = True) -> str:
    """``value`` itself, or the local mirror of a URI under ``root`` (for commands that have no
    run folder: ``embedray eval``, ``serve``, ``mine`` mirror into ``$EMBEDRAY_CACHE/.data``)."""
    if not is_uri(value):
        return plain_path(value)
    m = mirror(value, root, setting, progress)
    print(f"[embedray] {setting}: {m.summary()}", file=sys.stderr, flush=True)
    return str(m.local)
