"""Streaming JSONL reading with line numbers and typed field checks."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedray.atomic import atomic_open
from embedray.data.errors import DataError, OnError, SkipReport, handle


def decode_utf8(raw: bytes, path: str | Path, lineno: int) -> str:
    """Decode one line of a file strictly as UTF-8; a bad byte is a :class:`DataError` at ``path:lineno``."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, lineno, None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                        f"{e.start + 1}; re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8)") from None


def iter_jsonl(path: str | Path, on_error: OnError = "raise",
               report: SkipReport | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line (numbers are the file's lines);
    bad JSON or a line that is not UTF-8 raises or is counted."""
    path = Path(path)
    with open(path, "rb") as f:  # bytes: split on "\n" only, as JSONL does, and decode each line strictly
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # json.loads rejects a UTF-8 BOM
            if not raw.strip():
                continue
            try:
                obj = json.loads(decode_utf8(raw, path, lineno))
            except json.JSONDecodeError as e:
                handle(DataError(path, lineno, None, f"malformed JSON ({e})"), on_error, report)
                continue
            except DataError as e:
                handle(e, on_error, report)
                continue
            if not isinstance(obj, dict):
                handle(DataError(path, lineno, None,
                                 f"expected a JSON object, got {type(obj).__name__}"), on_error, report)
                continue
            yield lineno, obj


def require_str(obj: dict, key: str, path: Path | str, lineno: int, *, allow_empty: bool = False) -> str:
    """Return ``obj[key]`` as a string; missing, non-string or empty values raise :class:`DataError`."""
    if key not in obj:
        raise DataError(path, lineno, key, "missing field")
    value = obj[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith("id"):
        value = str(value)  # BEIR ids are sometimes written as numbers
    if not isinstance(value, str):
        raise DataError(path, lineno, key, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(path, lineno, key, "empty text")
    return value


def require_list(obj: dict, key: str, path: Path | str, lineno: int, item_type: type,
                 *, required: bool = True, min_len: int = 0) -> list[Any] | None:
    """Return ``obj[key]`` as a list of ``item_type``; wrong types raise :class:`DataError`."""
    if key not in obj or obj[key] is None:
        if required:
            raise DataError(path, lineno, key, "missing field")
        return None
    value = obj[key]
    if not isinstance(value, list):
        raise DataError(path, lineno, key, f"expected a list, got {type(value).__name__}")
    for i, item in enumerate(value):
        ok = isinstance(item, item_type) and not isinstance(item, bool)
        if item_type is float:
            ok = isinstance(item, (int, float)) and not isinstance(item, bool)
        if not ok:
            raise DataError(path, lineno, f"{key}[{i}]",
                            f"expected {item_type.__name__}, got {type(item).__name__}")
        if item_type is str and not item.strip():
            raise DataError(path, lineno, f"{key}[{i}]", "empty text")
    if len(value) < min_len:
        raise DataError(path, lineno, key, f"needs at least {min_len} item(s), got {len(value)}")
    return value


def write_jsonl_atomic(rows, path: str | Path) -> int:
    """Write dict rows as JSONL atomically (:mod:`embedray.atomic`); return the row count."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
