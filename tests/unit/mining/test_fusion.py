"""The cross-encoder's score fused with the bi-encoder's: the weight chosen on dev, the gate that
passes a fusion the cross-encoder alone would fail, and denoising by the fused score."""
import json

import pytest

from embedray.config import build_config
from embedray.mining.fusion import ce_logit, fuse, fuse_run, zscores
from embedray.mining.pool import NegativePool
from embedray.mining.rescore import denoise
from embedray.pipeline.config import TrainJobConfig
from embedray.training.cross_encoder import choose_alpha

# Two dev queries: the bi-encoder is right on q1 and wrong on q2; the cross-encoder the other way
# round, but on q1 only by a little: a mix is right on both.
QRELS = {"q1": {"a": 1}, "q2": {"x": 1}}
BI = {"q1": {"a": 0.95, "b": 0.70, "c": 0.10}, "q2": {"y": 0.90, "x": 0.88, "z": 0.10}}
CE = {"q1": {"a": 0.80, "b": 0.85, "c": 0.01}, "q2": {"x": 0.99, "y": 0.30, "z": 0.01}}


def _order(scores):
    return sorted(scores, key=lambda d: -scores[d])


def test_the_ends_of_the_weight_are_the_two_rankings():
    for q in BI:
        assert _order(fuse(BI[q], CE[q], 0.0)) == _order(BI[q])
        assert _order(fuse(BI[q], CE[q], 1.0)) == _order(CE[q])
    assert zscores({"a": 2.0, "b": 2.0}) == {"a": 0.0, "b": 0.0}
    z = zscores({"a": 1.0, "b": 2.0, "c": 3.0})
    assert sum(z.values()) == pytest.approx(0) and sum(v * v for v in z.values()) / 3 == pytest.approx(1)
    assert ce_logit(0.5) == 0 and ce_logit(1.0) == pytest.approx(13.8155, abs=1e-3)  # clipped, finite
    with pytest.raises(KeyError, match="no bi-encoder score for candidate 'w'"):
        fuse({"a": 1.0}, {"a": 0.5, "w": 0.4}, 0.5)


def test_the_weight_is_chosen_on_dev_where_the_mix_beats_both():
    chosen = choose_alpha(QRELS, BI, CE)
    curve = chosen["ndcg@10"]
    assert curve[0.0] < 1 and curve[1.0] < 1  # each alone misses one query
    assert chosen["alpha"] == min(a for a, v in curve.items() if v == 1.0) and 0 < chosen["alpha"] < 1
    assert chosen["queries"] == 2
    assert all(_order(s)[0] in QRELS[q] for q, s in fuse_run(BI, CE, chosen["alpha"]).items())
    # a tie goes to the bi-encoder's side
    same = choose_alpha({"q1": {"a": 1}}, {"q1": BI["q1"]}, {"q1": {"a": 0.9, "b": 0.5, "c": 0.1}})
    assert same["ndcg@10"][0.0] == same["ndcg@10"][1.0] == 1.0 and same["alpha"] == 0.0


def _job(**ce):
    return build_config(TrainJobConfig, {"data": {"path": "data/x"}, "model": {"name_or_path": "tiny-bert"},
                                         "cross_encoder": {"base_model": "tiny-bert", **ce}})


def _report(bi, ce, curve, queries=10):
    return {"before": {"ndcg@10": bi}, "after": {"ndcg@10": ce}, "depth": 5,
            "fused": {"alpha": max(curve, key=curve.get), "ndcg@10": curve, "queries": queries}}


def test_the_gate_passes_a_fusion_that_beats_the_bi_encoder():
    from embedray.pipeline.cross_encoder import gate

    fused = gate(_job(), _report(0.60, 0.55, {0.0: 0.60, 0.3: 0.64, 0.6: 0.62, 1.0: 0.55}))
    assert fused["passed"] and fused["fusion"] == {"alpha": 0.3, "dev": {"": 0.64}}
    assert "better fused with it (weight 0.3: 0.6400 vs 0.6000)" in fused["why"]
    # the bi-encoder's own order is the best mix: nothing to fuse, the gate fails as before
    alone = gate(_job(), _report(0.60, 0.55, {0.0: 0.60, 0.5: 0.58, 1.0: 0.55}))
    assert not alone["passed"] and "fusion" not in alone and alone["fallback"] == {"max_score_ratio": 0.95}
    assert not gate(_job(fuse=False), _report(0.60, 0.55, {0.0: 0.60, 0.3: 0.64, 1.0: 0.55}))["passed"]
    # several tasks: one weight for all, and no split may get worse than its bi-encoder
    tasks = gate(_job(), {"tasks": {"a": _report(0.5, 0.4, {0.0: 0.5, 0.2: 0.56, 1.0: 0.4}),
                                    "b": _report(0.7, 0.75, {0.0: 0.7, 0.2: 0.71, 1.0: 0.75})}})
    assert tasks["passed"] and tasks["fusion"]["alpha"] == 0.2 and tasks["fusion"]["dev"] == {"a": 0.56, "b": 0.71}
    split = gate(_job(), {"tasks": {"a": _report(0.5, 0.4, {0.0: 0.5, 0.2: 0.6, 1.0: 0.4}, queries=100),
                                    "b": _report(0.7, 0.6, {0.0: 0.7, 0.2: 0.69, 1.0: 0.6})}})
    assert not split["passed"] and split["worse"] == ["a", "b"]  # at 0.2, b would be worse than its bi-encoder
    # read back from JSON (string keys), the same verdict
    again = json.loads(json.dumps(_report(0.60, 0.55, {0.0: 0.60, 0.3: 0.64, 1.0: 0.55})))
    assert gate(_job(), again)["fusion"]["alpha"] == 0.3


def test_denoising_by_the_fused_score():
    """At weight 1 the fused rule is the cross-encoder's (margin 0), at weight 0 the bi-encoder's
    (a negative scoring at or above the positive); in between, what the fused score says."""
    pool = NegativePool(1, {"q": [("n1", None), ("n2", None), ("n3", None)]}, {}, {})  # as mined: unscored
    ce = {"q": {"n1": 0.20, "n2": 0.95, "n3": 0.30}}
    pos_ce, bi = {"q": {"p": 0.90}}, {"q": {"n1": 0.85, "n2": 0.50, "n3": 0.20, "p": 0.80}}

    def kept(fusion):
        new, removed = denoise(pool, ce, pos_ce, 0.0, fusion=fusion)
        assert removed == 3 - len(new.negatives["q"])
        assert all(s == ce["q"][d] for d, s in new.negatives["q"])  # the pool keeps cross-encoder scores
        return [d for d, _ in new.negatives["q"]]

    assert kept(None) == ["n1", "n3"] == kept((1.0, bi))  # n2: the cross-encoder rates it above p
    assert kept((0.0, bi)) == ["n2", "n3"]  # n1: the bi-encoder rates it above p
    f = fuse(bi["q"], {**ce["q"], "p": 0.90}, 0.5)
    assert kept((0.5, bi)) == [d for d in ("n1", "n2", "n3") if f[d] < f["p"]]


def test_a_copy_of_the_positive_scored_a_hair_apart_is_dropped_by_the_fused_rule():
    """A duplicate of the positive gets the positive's scores up to rounding (bf16, batch padding);
    without a margin the fused rule keeps it whenever the rounding falls below the positive's, so
    the fused rule drops what is within ``fusion_margin`` (default 0.1 standard deviations)."""
    from embedray.mining.config import CrossEncoderConfig

    pool = NegativePool(1, {"q": [("copy", None), ("near", None), ("far", None)]}, {}, {})
    ce = {"q": {"copy": 0.8499, "near": 0.70, "far": 0.05}}
    pos_ce, bi = {"q": {"p": 0.8500}}, {"q": {"copy": 0.7998, "near": 0.74, "far": 0.20, "p": 0.8000}}
    f = fuse(bi["q"], {**ce["q"], "p": 0.85}, 0.5)
    assert 0 < f["p"] - f["copy"] < 0.01 and f["p"] - f["near"] > 0.3  # a hair apart / clearly below

    def kept(margin):
        new, _ = denoise(pool, ce, pos_ce, 0.0, fusion=(0.5, bi), fusion_margin=margin)
        return [d for d, _ in new.negatives["q"]]

    assert kept(0.0) == ["copy", "near", "far"]  # the rounding saves the copy
    default = CrossEncoderConfig().fusion_margin
    assert default == 0.1 and kept(default) == ["near", "far"]
    assert kept(f["p"] - f["near"] + 0.01) == ["far"]  # a margin wider than the gap drops "near" too
    with pytest.raises(ValueError, match="fusion_margin"):
        CrossEncoderConfig(fusion_margin=-0.1)


def test_the_report_reranks_the_trained_teacher_only_as_dev_says():
    from embedray.pipeline.cross_encoder import rerank_choice

    def report(before, alone, alpha, fused):
        return {"before": {"ndcg@10": before}, "after": {"ndcg@10": alone},
                "fused": {"alpha": alpha, "after": {"ndcg@10": fused}}}

    assert rerank_choice(report(0.90, 0.92, 0.7, 0.93), 5)["mode"] == "cross_encoder"
    fused = rerank_choice(report(0.90, 0.85, 0.3, 0.91), 5)
    assert fused["mode"] == "fused" and fused["alpha"] == 0.3 and "(0.8500 < 0.9000)" in fused["why"]
    none = rerank_choice(report(0.90, 0.85, 0.0, 0.90), 5)  # the best mix is the teacher's own order
    assert none["mode"] is None and "does not improve" in none["why"] and "fused at best 0.9000" in none["why"]
    assert rerank_choice(report(0.90, 0.85, 0.2, 0.89), 5)["mode"] is None
