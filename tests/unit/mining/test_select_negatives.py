"""Negative selection rules on tiny handmade score matrices (exact expected ids)."""
from __future__ import annotations

import numpy as np
import pytest

from embedray.mining.config import MiningConfig
from embedray.mining.select import query_rng, select_negatives

# One query, eight candidates in descending score; "p" is its positive (score 0.80).
IDS = [["p", "a", "b", "c", "d", "e", "f", "g"]]
SCORES = np.array([[0.80, 0.79, 0.76, 0.70, 0.60, 0.50, 0.40, 0.30]], np.float32)
POS = {"q": {"p"}}
POS_SCORES = {"q": {"p": 0.80}}


def sel(**kw):
    cfg = MiningConfig(**{"k": 8, "num_negatives": 3, **kw})
    return select_negatives(SCORES, IDS, POS, ["q"], cfg, pos_scores=POS_SCORES)


def test_top_k_excludes_every_positive():
    got = select_negatives(SCORES, IDS, {"q": {"p", "b"}}, ["q"], MiningConfig(k=8, num_negatives=3))
    assert got == {"q": ["a", "c", "d"]}


def test_unsorted_input_is_ranked_by_score():
    perm = [7, 2, 0, 5, 1, 3, 6, 4]
    got = select_negatives(SCORES[:, perm], [[IDS[0][i] for i in perm]], POS, ["q"],
                           MiningConfig(k=8, num_negatives=3))
    assert got == {"q": ["a", "b", "c"]}


def test_rank_window_skips_first_and_stops_at_max():
    assert sel(range_min=2) == {"q": ["c", "d", "e"]}
    assert sel(range_min=2, range_max=4, num_negatives=2) == {"q": ["c", "d"]}
    # the window ends at rank 4 of the non-positive candidates: only 2 fit
    assert sel(range_min=2, range_max=4, num_negatives=2, max_score=0.65) == {"q": ["d"]}


def test_absolute_margin():
    # keep score <= 0.80 - 0.10 = 0.70: "c" (0.70 exactly) is kept
    assert sel(absolute_margin=0.10) == {"q": ["c", "d", "e"]}


def test_relative_margin_matches_sentence_transformers_definition():
    # ST: drop score > pos - |pos| * margin = 0.80 - 0.08 = 0.72
    assert sel(relative_margin=0.10) == {"q": ["c", "d", "e"]}
    # negative positive scores: threshold pos - |pos|*m, i.e. further below, never above
    ids = [["p", "a", "b"]]
    s = np.array([[-0.10, -0.105, -0.2]], np.float32)
    got = select_negatives(s, ids, POS, ["q"], MiningConfig(k=3, num_negatives=2, relative_margin=0.1),
                           pos_scores={"q": {"p": -0.10}})
    assert got == {"q": ["b"]}  # -0.105 > -0.11 is too close


def test_nv_retriever_percent_of_positive():
    # TopK-PercPos 95%: keep score <= 0.95 * 0.80 = 0.76 ("b" exactly on the bound is kept)
    assert sel(max_score_ratio=0.95) == {"q": ["b", "c", "d"]}
    assert sel(max_score_ratio=0.75) == {"q": ["d", "e", "f"]}  # <= 0.60


def test_lowest_positive_is_the_reference():
    got = select_negatives(SCORES, IDS, {"q": {"p", "d"}}, ["q"],
                           MiningConfig(k=8, num_negatives=2, absolute_margin=0.05),
                           pos_scores={"q": {"p": 0.80, "d": 0.60}})
    assert got == {"q": ["e", "f"]}  # <= 0.55


def test_min_and_max_score():
    assert sel(max_score=0.75, min_score=0.45) == {"q": ["c", "d", "e"]}
    assert sel(min_score=0.65, num_negatives=3) == {"q": ["a", "b", "c"]}
    assert sel(min_score=0.72) == {"q": ["a", "b"]}  # fewer than asked is allowed


def test_max_negatives_and_skip_counts():
    got = sel(num_negatives=1, absolute_margin=0.10)
    assert got == {"q": ["c"]}
    assert got.skipped["absolute_margin"] == 2


def test_margin_without_positive_scores_raises():
    with pytest.raises(ValueError, match="no positive score"):
        select_negatives(SCORES, IDS, POS, ["q"], MiningConfig(k=8, absolute_margin=0.1))


def test_padding_ids_and_short_rows_are_ignored():
    ids = [["p", "a", None]]
    s = np.array([[0.9, 0.5, -np.inf, -np.inf]], np.float32)
    got = select_negatives(s, [["p", "a"]], POS, ["q"], MiningConfig(k=4, num_negatives=2))
    assert got == {"q": ["a"]}
    got = select_negatives(s[:, :3], ids, POS, ["q"], MiningConfig(k=3, num_negatives=2))
    assert got == {"q": ["a"]}


def test_random_sampling_is_seeded_and_sorted():
    cfg = dict(num_negatives=3, sampling_strategy="random")
    a, b = sel(seed=1, **cfg), sel(seed=1, **cfg)
    assert a == b
    draws = {tuple(sel(seed=s, **cfg)["q"]) for s in range(20)}
    assert len(draws) > 1  # different seeds sample differently
    for d in draws:
        order = [IDS[0].index(x) for x in d]
        assert order == sorted(order)  # hardest first
    # the exact draw is numpy's choice under the per-query Generator
    pick = np.sort(query_rng(1, "q").choice(7, size=3, replace=False))
    assert a["q"] == [IDS[0][1:][i] for i in pick]


def test_query_sample_does_not_depend_on_other_queries():
    cfg = MiningConfig(k=8, num_negatives=2, sampling_strategy="random", seed=3)
    two = select_negatives(np.repeat(SCORES, 2, axis=0), IDS * 2, {"q": {"p"}, "r": {"p"}},
                           ["r", "q"], cfg)
    one = select_negatives(SCORES, IDS, POS, ["q"], cfg)
    assert two["q"] == one["q"]


def test_config_validation_messages():
    with pytest.raises(ValueError, match="num_negatives"):
        MiningConfig(k=5, num_negatives=6)
    with pytest.raises(ValueError, match="range_min"):
        MiningConfig(k=5, range_min=5)
    with pytest.raises(ValueError, match="max_score_ratio"):
        MiningConfig(max_score_ratio=1.5)
    with pytest.raises(ValueError, match="sampling_strategy"):
        MiningConfig(sampling_strategy="best")
    with pytest.raises(ValueError, match="rescore_candidates"):
        MiningConfig(num_negatives=7, rescore_candidates=3)
