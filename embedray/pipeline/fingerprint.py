"""Stage fingerprints of the pipeline: what decides a stage's result, hashed.

A stage's *inputs* are the config fields it reads (less those that cannot change a result:
names, output paths, CPUs, retries, logging, fault injection), the identity (size + mtime) of
the input files it reads, and the fingerprints of the stages it reads from, so a changed
teacher changes the student's fingerprint too. The fingerprint is the sha256 of their
canonical JSON; :func:`describe_changes` says in words what differs between two inputs.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Fields (dotted, from the top of PipelineConfig) that never change a stage's result.
IGNORED_FIELDS = frozenset({
    "name", "output_dir", "data.path",  # where things live; the data's identity is hashed instead
    "cluster.storage_path", "cluster.run_name", "cluster.cpus_per_worker", "cluster.max_failures",
    "cluster.num_to_keep", "refresh.num_cpus", "refresh.max_restarts", "refresh.keep_indexes",
    "refresh.ray_data_encode", "cluster.resources_per_worker", "refresh.num_gpus", "refresh.resources",
    "cluster.collective_timeout_s", "refresh.sync_timeout_s",
})
# Leaf names ignored wherever they are (teacher.train.*, student.train.*): an exact resume makes
# the checkpoint cadence irrelevant, and threads and logging change no result.
IGNORED_LEAVES = frozenset({"log_every", "num_threads", "checkpoint_every"})


def fingerprint(inputs: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``inputs``."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def config_fields(config: dict, fields: Iterable[str]) -> dict[str, Any]:
    """``{dotted field: value}`` of the named sections or fields of ``config`` (a
    ``to_dict(PipelineConfig)``), flattened, without the ignored fields."""
    out: dict[str, Any] = {}
    for name in fields:
        value: Any = config
        for part in name.split("."):
            value = value[part]
        out.update(_flatten(value, name))
    return {k: v for k, v in out.items()
            if k not in IGNORED_FIELDS and k.rsplit(".", 1)[-1] not in IGNORED_LEAVES}


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, sub in value.items() for k, v in _flatten(sub, f"{prefix}.{key}").items()}
    return {prefix: value}


def files_identity(paths: Iterable[Path], root: Path | None = None) -> dict[str, list[int]]:
    """``{name: [size, mtime_ns]}`` of each file, and of every file under each folder (names
    relative to ``root`` when given; hidden files, e.g. a writer's temp files, left out)."""
    out: dict[str, list[int]] = {}
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            rel = f.relative_to(root) if root is not None and f.is_relative_to(root) else f
            if any(part.startswith(".") for part in Path(rel).parts if part not in (".", "..")):
                continue
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            out[str(rel)] = [st.st_size, st.st_mtime_ns]
    return out


def describe_changes(old: dict, new: dict) -> str:
    """What differs between two stage inputs, e.g. ``config changed (teacher.train.max_steps
    8 → 12)``, ``input data changed (corpus.jsonl)``, ``teacher changed``."""
    parts = []
    was, now = old.get("config", {}), new.get("config", {})
    config = _changed(was, now)
    if config:
        shown = [f"{k} {_show(was.get(k, '(unset)'))} → {_show(now.get(k, '(unset)'))}" for k in config[:4]]
        parts.append(f"config changed ({', '.join(shown)}{_more(config, 4)})")
    files = _changed(old.get("files", {}), new.get("files", {}))
    if files:
        parts.append(f"input data changed ({', '.join(files[:3])}{_more(files, 3)})")
    upstream = _changed(old.get("after", {}), new.get("after", {}))
    parts += [f"{stage} changed" for stage in upstream]
    return ", ".join(parts) or "its recorded inputs differ"


def _changed(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k, _MISSING) != new.get(k, _MISSING))


_MISSING = object()


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _more(items: list, shown: int) -> str:
    return f" and {len(items) - shown} more" if len(items) > shown else ""
