"""What the server needs from a model folder's ``embedray.json`` (Matryoshka dims, metrics)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD_FILE = "embedray.json"


@dataclass
class ModelCard:
    """The parts of ``embedray.json`` the server uses; all optional.

    Attributes:
        matryoshka_dims: dimensions the model was trained to truncate to (besides the full one).
        base_model: what the model was trained from.
        metrics: evaluation metrics recorded at export (shown by ``/info``).
        training: training summary recorded at export (shown by ``/info``).
    """

    matryoshka_dims: list[int] = field(default_factory=list)
    base_model: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def allowed_dims(self, full_dim: int) -> list[int]:
        """Dimensions a client may ask for: the Matryoshka ones up to ``full_dim``, and ``full_dim``."""
        return sorted({d for d in self.matryoshka_dims if d <= full_dim} | {full_dim}, reverse=True)


def read_model_card(model_dir: str | Path) -> ModelCard:
    """Read ``<model_dir>/embedray.json``; a missing file means no Matryoshka dims, no metrics.

    Raises:
        ValueError: the file exists but is malformed (names the file and the field).
    """
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        return ModelCard()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    dims = raw.get("matryoshka_dims") or []
    if not isinstance(dims, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                             for d in dims):
        raise ValueError(f"{path}: field 'matryoshka_dims': expected a list of positive integers, got {dims!r}")
    for key in ("metrics", "training"):
        if not isinstance(raw.get(key) or {}, dict):
            raise ValueError(f"{path}: field '{key}': expected an object")
    base = raw.get("base_model")
    return ModelCard(matryoshka_dims=sorted(set(dims), reverse=True),
                     base_model=str(base) if base is not None else None,
                     metrics=raw.get("metrics") or {}, training=raw.get("training") or {})
