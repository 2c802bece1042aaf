"""NegativePool: JSON round trip, atomic save, fingerprint semantics."""
from __future__ import annotations

import json

import pytest

from embedray.mining.pool import NegativePool


def _pool(**kw) -> NegativePool:
    base = dict(version=3, negatives={"q1": [("d2", 0.25), ("d3", None)], "q2": []},
                positive_scores={"q1": {"d1": 0.9}}, meta={"took_s": 1.5})
    base.update(kw)
    return NegativePool(**base)


def test_round_trip(tmp_path):
    pool = _pool()
    path = pool.save(tmp_path / "pools" / "v3.json")
    back = NegativePool.load(path)
    assert back == pool
    assert back.negatives["q1"][0] == ("d2", 0.25)  # tuples, not lists
    assert [p.name for p in path.parent.iterdir()] == ["v3.json"]  # no temp file left


def test_fingerprint_ignores_meta_and_version_but_not_negatives():
    a = _pool()
    assert a.fingerprint() == _pool(version=9, meta={"other": 1}).fingerprint()
    assert a.fingerprint() != _pool(negatives={"q1": [("d3", None), ("d2", 0.25)], "q2": []}).fingerprint()
    assert a.fingerprint() != _pool(positive_scores={"q1": {"d1": 0.8}}).fingerprint()
    # float noise below the 5th decimal does not change the hash
    assert a.fingerprint() == _pool(negatives={"q1": [("d2", 0.2500000001), ("d3", None)],
                                               "q2": []}).fingerprint()


def test_load_rejects_other_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"negatives": {}}))
    with pytest.raises(ValueError, match="not a negative pool"):
        NegativePool.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="malformed JSON"):
        NegativePool.load(bad)


def test_counts():
    pool = _pool()
    assert len(pool) == 2 and pool.num_negatives == 2
    assert pool.negative_ids("q1") == ["d2", "d3"] and pool.negative_ids("nope") == []


def test_overlap_with_the_previous_pool():
    prev = _pool()
    new = _pool(negatives={"q1": [("d2", 0.1), ("d9", 0.2)], "q2": [("d4", None)]})
    assert new.overlap(prev) == 1 / 3
    assert prev.overlap(prev) == 1.0
    assert NegativePool(0, {}).overlap(prev) == 1.0
