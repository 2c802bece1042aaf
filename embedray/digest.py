"""Content digests of files: what a cache is keyed by."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def files_digest(root: Path, files: Iterable[Path]) -> str:
    """blake2b (16 bytes, hex) of ``files`` in the order given: each one's path relative to
    ``root`` and its bytes, read in 8 MiB chunks."""
    h = hashlib.blake2b(digest_size=16)
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\x00")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(8 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
