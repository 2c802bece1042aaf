"""Known false negatives: duplicate descriptions found in package data, what each denoiser
removes of them on a fixture, and the refresh telemetry checked against constructed cases."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from embedray.data.beir import Document
from embedray.mining.config import MiningConfig
from embedray.mining.false_negatives import DuplicatePair, duplicate_pairs, planted_report
from embedray.mining.pipeline import mine
from embedray.mining.pool import NegativePool

PACKAGES = {
    # identical descriptions (spacing and case aside), different summaries: an exact pair
    "foo": ("foo tool", "Foo compresses files quickly."),
    "foo-doc": ("foo tool (documentation)", "foo compresses   files quickly."),
    # same description once numbers are masked: a versioned pair
    "libbar1": ("bar library v1", "Bar 1 parses config files."),
    "libbar2": ("bar library v2", "Bar 2 parses config files."),
    # same description and the same summary: no query tells them apart, no pair
    "baz": ("baz", "Baz draws charts."),
    "baz-data": ("BAZ", "Baz draws charts."),
    "alone": ("alone", "Nothing like it."),
    "empty": ("", "No summary."),
}


def test_duplicate_pairs_in_package_descriptions():
    pairs = duplicate_pairs(PACKAGES)
    assert sorted((p.kind, {p.query, p.duplicate} == s) for p, s in
                  zip(sorted(pairs, key=lambda p: p.kind), [{"foo", "foo-doc"}, {"libbar1", "libbar2"}])) == \
        [("exact", True), ("versioned", True)]
    assert all(isinstance(p, DuplicatePair) for p in pairs) and len(pairs) == 2
    assert duplicate_pairs(PACKAGES, seed=0) == pairs  # stable


def _pool(negatives):
    return NegativePool(1, {q: [(d, None) for d in ds] for q, ds in negatives.items()})


def test_planted_report_counts_recall_and_cost():
    before = _pool({"q1": ["dup1", "a", "b"], "q2": ["c", "dup2", "d"], "q3": ["e"]})
    after = _pool({"q1": ["a"], "q2": ["c", "dup2"], "q3": ["e"]})
    planted = {"q1": {"dup1"}, "q2": {"dup2"}, "q4": {"dup4"}}  # dup4 was never selected
    assert planted_report(before, after, planted) == {
        "planted": 3, "selected": 2, "removed": 1, "recall": 0.5,
        "others_selected": 5, "others_removed": 2, "cost": 0.4}
    assert planted_report(before, before, planted)["removed"] == 0
    assert planted_report(before, after, {})["recall"] is None


def test_the_positive_aware_rule_removes_planted_exact_duplicates(tiny_bert_st):
    """A duplicate of the positive scores as the positive does: the miner selects it and the
    95%-of-positive rule removes it; what else the rule removes is every candidate above 95% of
    the positive's score, counted here from the undenoised pool."""
    texts = ["Foo compresses files quickly.", "Bar parses config files.", "Baz draws charts on the screen.",
             "Qux sends mail over SMTP.", "Quux plays music files.", "Corge edits images."]
    corpus = {f"d{i}": Document(f"d{i}", t, "") for i, t in enumerate(texts)}
    corpus["dup0"] = Document("dup0", texts[0], "")
    corpus["dup1"] = Document("dup1", texts[1], "")
    queries = {"q0": "fast file compression", "q1": "configuration parser", "q2": "charts"}
    positives = {"q0": ["d0"], "q1": ["d1"], "q2": ["d2"]}
    planted = {"q0": {"dup0"}, "q1": {"dup1"}}
    cfg = MiningConfig(k=7, num_negatives=7, range_min=0, precision="fp32")
    none = mine(corpus, queries, positives, tiny_bert_st, cfg)
    ratio = mine(corpus, queries, positives, tiny_bert_st, dataclasses.replace(cfg, max_score_ratio=0.95))
    report = planted_report(none.pool, ratio.pool, planted)
    assert (report["planted"], report["selected"], report["removed"], report["recall"]) == (2, 2, 2, 1.0)
    high = 0
    for q, negs in none.pool.negatives.items():  # the pool keeps ids (its score slots are the cross-encoder's)
        p_score = _cosine(tiny_bert_st, queries[q], corpus[positives[q][0]].text)
        scores = {d: _cosine(tiny_bert_st, queries[q], corpus[d].text) for d, _ in negs}
        for d in planted.get(q, set()):
            assert scores[d] == pytest.approx(p_score, abs=1e-5)  # the duplicate scores as the positive
        high += sum(1 for d, s in scores.items() if d not in planted.get(q, set()) and s > 0.95 * p_score + 1e-6)
    assert report["others_removed"] == high
    assert report["others_selected"] == sum(len(v) for v in none.pool.negatives.values()) - 2


def _cosine(model, query: str, doc: str) -> float:
    q, d = model.encode([query, doc], normalize_embeddings=True)
    return float(q @ d)


@pytest.fixture(scope="module")
def tiny_bert_st():
    from embedray.models.backends import load_encoder

    return load_encoder("tiny-bert", precision="fp32")


def test_refresh_telemetry_on_constructed_pools():
    from embedray.pipeline.refresh import _mining_counts, overlap_at_k

    old = _pool({"q1": ["a", "b", "c", "d"], "q2": ["e", "f"]})
    new = _pool({"q1": ["a", "b", "x", "y"], "q2": ["e", "f"], "q3": ["z"]})
    # q1: 2 of 4 were in the old top-k; q2: 2 of 2; q3: new query, 0 of 1 → mean of 0.5, 1, 0
    assert overlap_at_k(new, old) == pytest.approx(0.5)
    assert overlap_at_k(new, old, k=2) == pytest.approx((1 + 1 + 0) / 3)
    assert overlap_at_k(new, None) is None
    results = [SimpleNamespace(counts={"queries_mined": 3, "negatives_kept": 7, "negatives_removed": 3,
                                       "docs_encoded": 10, "docs_cached": 5},
                               timings={"encode_s": 1.0, "index_s": 0.5, "search_s": 0.25, "rescore_s": 2.0})]
    counts = _mining_counts(new, results, old)
    assert counts["false_negative_rate"] == pytest.approx(0.3)  # 3 removed of 10 mined
    assert counts["overlap@10"] == pytest.approx(0.5)
    assert (counts["negatives_kept"], counts["docs_encoded"], counts["rescore_s"]) == (7, 10, 2.0)


def test_staleness_is_the_steps_between_snapshot_and_first_use():
    from embedray.training.loop import _maybe_switch_pool

    class Log:
        events = []

        def event(self, kind, step, values):
            self.events.append((kind, step, values))

    switched = []
    sampler = SimpleNamespace(set_pool=lambda negatives, version, scores: switched.append(version))
    hooks = SimpleNamespace(pool_version=lambda step: 2 if step >= 7 else 1,
                            load_pool=lambda v: ({"q": ["d"]}, {"snapshot_step": 4 if v == 2 else None}, {}))
    state, log = {"pool_version": 1, "pool_switches": []}, Log()
    _maybe_switch_pool(hooks, [sampler], state, log, 6, True)
    assert switched == [] and log.events == []  # still version 1
    _maybe_switch_pool(hooks, [sampler], state, log, 7, True)
    assert switched == [2] and state["pool_switches"] == [[7, 2]]
    assert log.events == [("pool", 7, {"version": 2, "queries": 1, "staleness_steps": 3})]


def test_one_kind_counted_the_others_are_not_ordinary_negatives():
    before = _pool({"q1": ["dup1", "dup1b", "a"]})
    after = _pool({"q1": ["dup1b", "a"]})
    every = {"q1": {"dup1", "dup1b"}}
    only = planted_report(before, after, {"q1": {"dup1"}}, known=every)
    assert (only["selected"], only["removed"], only["others_selected"], only["others_removed"]) == (1, 1, 1, 0)
