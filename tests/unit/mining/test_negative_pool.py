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


def _publish(store, version, snapshot_step, fp="w", recipe="r"):
    from embedray.mining.pool import NegativePool

    meta = {"snapshot_step": snapshot_step, "weights_fingerprint": fp, "recipe": recipe,
            "telemetry": {"version": version, "snapshot_step": snapshot_step}}
    store.publish(NegativePool(version, {"q1": [(f"d{version}", None)]}, meta=meta))


def test_a_resumed_run_uses_no_pool_mined_ahead_of_its_step(tmp_path):
    """A killed attempt published v3 (snapshot 6) and v4 (snapshot 9); resumed at step 4 the run
    trains on v2 until step 6, as the uninterrupted run did."""
    from embedray.mining.store import PoolStore
    from embedray.pipeline.refresh import reader_hooks

    store = PoolStore(tmp_path / "pools")
    for version, snap in [(1, 0), (2, 3), (3, 6), (4, 9)]:
        _publish(store, version, snap, fp=f"w{snap}")
    causal = reader_hooks(PoolStore(store.root), refreshing=True).pool_version
    assert [causal(step) for step in (0, 2, 3, 4, 5, 6, 8, 9, 20)] == [1, 1, 2, 2, 2, 3, 3, 4, 4]
    assert reader_hooks(store).pool_version(4) == 4  # static: a pool given before training, the newest

    # Re-snapshotting the killed attempt's weights at its step finds its pool, nothing else does.
    assert store.published_for(6, "w6", "r") == 3 and store.published_for(9, "w9", "r") == 4
    assert store.published_for(6, "other weights", "r") is None
    assert store.published_for(6, "w6", "another mining recipe") is None
    assert store.published_for(12, "w12", "r") is None
