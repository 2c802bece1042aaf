"""Denoising by cross-encoder score and batched rescoring with a score cache."""
from __future__ import annotations

import numpy as np
import pytest

from embedray.mining.cache import ShardedCache
from embedray.mining.pool import NegativePool
from embedray.mining.rescore import denoise, rescore, rescore_and_denoise


def test_denoise_drops_negatives_within_margin_of_the_positive():
    pool = NegativePool(1, {"q1": [("a", None), ("b", None), ("c", None), ("d", None)],
                            "q2": [("e", None)]}, meta={"m": 1})
    ce = {"q1": {"a": 0.95, "b": 0.85, "c": 0.60, "d": 0.10}, "q2": {"e": 0.2}}
    pos = {"q1": {"p1": 0.90, "p2": 0.80}, "q2": {"p3": 0.7}}
    new, removed = denoise(pool, ce, pos, margin=0.1)
    # reference = lowest positive 0.80; drop >= 0.70: "a" (above) and "b" (within the margin)
    assert new.negatives == {"q1": [("c", 0.60), ("d", 0.10)], "q2": [("e", 0.2)]}
    assert removed == 2
    assert new.positive_scores == pos and new.version == 1 and new.meta == {"m": 1}
    capped, removed = denoise(pool, ce, pos, margin=0.1, max_negatives=1)
    assert capped.negatives["q1"] == [("c", 0.60)] and removed == 2  # the cap is not "removed"
    none_removed, removed = denoise(pool, ce, pos, margin=-0.2)  # keep up to pos + 0.2
    assert removed == 0 and len(none_removed.negatives["q1"]) == 4


def test_denoise_needs_scores():
    pool = NegativePool(0, {"q": [("a", None)]})
    with pytest.raises(ValueError, match="no cross-encoder score for any positive"):
        denoise(pool, {"q": {"a": 0.1}}, {}, 0.0)
    with pytest.raises(ValueError, match="negative 'a' has no cross-encoder score"):
        denoise(pool, {"q": {}}, {"q": {"p": 0.5}}, 0.0)


class FakeCE:
    """Scores a pair by word overlap; records the pairs it was asked about."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def predict(self, pairs, batch_size=32, show_progress_bar=False):
        self.seen += list(pairs)
        return np.array([len(set(q.split()) & set(d.split())) / 4 for q, d in pairs], np.float32)


def test_rescore_uses_the_cache(tmp_path):
    ce = FakeCE()
    pairs = [("red apple", "red apple pie"), ("red apple", "green pear"), ("red apple", "red apple pie")]
    cache = ShardedCache(tmp_path / "ce")
    got = rescore(ce, pairs, cache=cache)
    np.testing.assert_allclose(got, [0.5, 0.0, 0.5])
    assert len(ce.seen) == 2  # the duplicate pair is scored once
    again = rescore(ce, pairs + [("pear", "green pear")], cache=cache)
    assert len(ce.seen) == 3 and again[-1] == 0.25
    np.testing.assert_allclose(rescore(FakeCE(), pairs), got)  # no cache


def test_rescore_and_denoise_end_to_end():
    ce = FakeCE()
    queries = {"q": "red apple pie recipe"}
    texts = {"p": "red apple pie recipe", "n1": "red apple pie", "n2": "green pear", "n3": "apple"}
    pool = NegativePool(2, {"q": [("n1", None), ("n2", None), ("n3", None)]})
    new, stats = rescore_and_denoise(pool, ce, queries, texts, {"q": ["p", "missing"]}, margin=0.1)
    # positive scores 1.0; n1 0.75 (kept: < 0.9), n2 0.0, n3 0.25
    assert new.negatives == {"q": [("n1", 0.75), ("n2", 0.0), ("n3", 0.25)]}
    assert new.positive_scores == {"q": {"p": 1.0}}
    assert stats["negatives_removed"] == 0 and stats["pairs_total"] == 4
    strict, stats = rescore_and_denoise(pool, ce, queries, texts, {"q": ["p"]}, margin=0.3,
                                        max_negatives=1)
    assert strict.negatives == {"q": [("n2", 0.0)]} and stats["negatives_removed"] == 1
