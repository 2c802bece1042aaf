"""Typed configuration: one dataclass per stage (each in its own package), YAML recipes,
dotted command-line overrides (``train.lr=3e-5``).

Validation is pydantic's (types, nested dataclasses, ``__post_init__`` checks); unknown keys are
rejected with a suggestion, so a typo never silently falls back to a default. A key that was
renamed or moved still loads, with a warning naming its new place: a section's dataclass lists
them in ``RENAMED`` (old key → new dotted key, relative to that section).
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
import warnings
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that does not fit the config schema (names the file and key)."""


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=3e-5", "model.name_or_path=minilm-l6"]`` into a nested dict.

    Values are parsed as YAML scalars/lists, so ``3e-5``, ``true``, ``[384,96]`` keep their types.
    """
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        value = yaml.safe_load(raw) if raw.strip() else None
        node = tree
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is a value, not a section")
        node[leaf] = value
    return tree


def merge(base: dict, extra: dict) -> dict:
    """Deep-merge ``extra`` into a copy of ``base``."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _apply_renames(cls: type, data: dict, where: str, source: str) -> dict:
    """``data`` with the keys ``cls.RENAMED`` lists moved to their new place (warning once each)."""
    renamed = getattr(cls, "RENAMED", {})
    if not any(k in renamed for k in data):
        return data
    out = {k: v for k, v in data.items() if k not in renamed}
    for old, new in renamed.items():
        if old not in data:
            continue
        warnings.warn(f"{source}: '{where}{old}' is now '{where}{new}' (the old key still works; rename it)",
                      FutureWarning, stacklevel=4)
        *parents, leaf = new.split(".")
        node = out
        for p in parents:
            child = node.get(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: '{where}{old}' moves into '{where}{p}', which is a value")
            node[p] = node = dict(child)  # a copy: the caller's dicts stay as they were
        if leaf in node:
            raise ConfigError(f"{source}: both '{where}{old}' and its new name '{where}{new}' are set")
        node[leaf] = data[old]
    return out


def _check_keys(cls: type, data: Any, where: str, source: str) -> Any:
    """``data`` checked against ``cls`` (unknown keys are an error) with renamed keys applied."""
    if not (dataclasses.is_dataclass(cls) and isinstance(data, dict)):
        return data
    data = _apply_renames(cls, data, where, source)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"{source}: unknown key '{where}{key}'{hint}")
        sub = hints.get(key)
        for cand in (sub, *typing.get_args(sub)):
            if dataclasses.is_dataclass(cand):
                out[key] = _check_keys(cand, value, f"{where}{key}.", source)
                break
            item = typing.get_args(cand)
            if typing.get_origin(cand) is list and item and dataclasses.is_dataclass(item[0]) and isinstance(value, list):
                out[key] = [_check_keys(item[0], v, f"{where}{key}[{i}].", source) for i, v in enumerate(value)]
                break
    return out


def build_config(cls: type[T], data: dict, source: str = "<config>") -> T:
    """Validate ``data`` against dataclass ``cls`` (nested), with errors naming ``source`` and key."""
    data = _check_keys(cls, data, "", source)
    try:
        return pydantic.TypeAdapter(cls).validate_python(data)
    except pydantic.ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(lines)) from None
    except (ValueError, TypeError) as e:  # raised by a __post_init__ check
        raise ConfigError(f"{source}: {e}") from None


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Load a YAML recipe (or none: defaults) into ``cls`` and apply dotted overrides."""
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path).expanduser().resolve()
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: recipe not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if overrides:
        data = merge(data, parse_overrides(overrides))
        source += " + overrides"
    return build_config(cls, data, source)


def to_dict(cfg: Any) -> dict:
    """A plain, YAML/JSON-serialisable dict of a config dataclass."""
    return pydantic.TypeAdapter(type(cfg)).dump_python(cfg, mode="json")
