"""The negative pool: a versioned mapping ``query_id → [(doc_id, ce_score)]``.

This is the contract between mining (which writes pools) and training (which reads the newest
one at a step boundary). A pool is saved as one JSON file written atomically, so a reader sees
either the previous file or the complete new one.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from embedray.atomic import write_json_atomic

POOL_FORMAT = "embedray.negative_pool/1"
# Scores are rounded in the fingerprint only: it identifies *which* negatives were mined and
# their scores up to float noise, so the same run on another BLAS gives the same hash.
_FP_DECIMALS = 5


@dataclass
class NegativePool:
    """Hard negatives per query, with cross-encoder scores when a cross-encoder rescored them.

    Attributes:
        version: monotonically increasing pool version (0 = mined once before training).
        negatives: query id → ordered ``[(doc_id, ce_score or None)]``, hardest first.
        positive_scores: query id → {positive doc id: ce_score}; empty without a cross-encoder.
        meta: free-form provenance (model fingerprint, config, counts, timings).
    """

    version: int
    negatives: dict[str, list[tuple[str, float | None]]]
    positive_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.negatives)

    @property
    def num_negatives(self) -> int:
        """Total negatives over all queries."""
        return sum(len(v) for v in self.negatives.values())

    def negative_ids(self, query_id: str) -> list[str]:
        """The negative doc ids of one query (empty if it has none)."""
        return [d for d, _ in self.negatives.get(query_id, [])]

    def overlap(self, previous: "NegativePool") -> float:
        """Fraction of this pool's negatives that ``previous`` also had for the same query.

        1.0 means a refresh changed nothing; queries absent from ``previous`` count as new.
        """
        total = self.num_negatives
        if not total:
            return 1.0
        same = sum(len(set(self.negative_ids(q)) & set(previous.negative_ids(q))) for q in self.negatives)
        return same / total

    def to_dict(self) -> dict:
        """JSON-ready form (tuples become 2-lists)."""
        return {"format": POOL_FORMAT, "version": self.version,
                "negatives": {q: [[d, s] for d, s in negs] for q, negs in self.negatives.items()},
                "positive_scores": self.positive_scores, "meta": self.meta}

    @classmethod
    def from_dict(cls, obj: dict, source: str = "<dict>") -> "NegativePool":
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming ``source`` on a bad shape."""
        if obj.get("format") != POOL_FORMAT:
            raise ValueError(f"{source}: not a negative pool (format {obj.get('format')!r}, "
                             f"expected {POOL_FORMAT!r})")
        try:
            negatives = {str(q): [(str(d), None if s is None else float(s)) for d, s in negs]
                         for q, negs in obj["negatives"].items()}
            pos = {str(q): {str(d): float(s) for d, s in docs.items()}
                   for q, docs in obj.get("positive_scores", {}).items()}
            return cls(int(obj["version"]), negatives, pos, dict(obj.get("meta", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: malformed negative pool ({e})") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the pool as JSON atomically (temp file in the same folder + rename)."""
        return write_json_atomic(self.to_dict(), path, indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NegativePool":
        """Read a pool written by :meth:`save`."""
        path = Path(path)
        with open(path, encoding="utf-8") as f:
            try:
                obj = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: malformed JSON ({e})") from None
        return cls.from_dict(obj, str(path))

    def fingerprint(self) -> str:
        """sha256 of a canonical serialization of the negatives and positive scores.

        ``version`` and ``meta`` (timings, paths) are left out: two runs that mined the same
        negatives with the same scores have the same fingerprint.
        """
        def r(s: float | None) -> float | None:
            return None if s is None or not math.isfinite(s) else round(float(s), _FP_DECIMALS)

        canon = {"negatives": {q: [[d, r(s)] for d, s in negs]
                               for q, negs in sorted(self.negatives.items())},
                 "positive_scores": {q: {d: r(s) for d, s in sorted(docs.items())}
                                     for q, docs in sorted(self.positive_scores.items())}}
        blob = json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()
