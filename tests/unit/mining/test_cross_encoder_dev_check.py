"""The cross-encoder's dev check after training: its depth is configurable and 0 skips it."""
import json

import pytest

from embedray.config import build_config
from embedray.mining.config import CrossEncoderConfig
from embedray.pipeline.config import TrainJobConfig
from embedray.pipeline.refresh import base_cross_encoder
from embedray.training.data import load_training_data


def _job(beir, depth):
    return build_config(TrainJobConfig, {
        "data": {"path": str(beir)},
        "model": {"name_or_path": "tiny-bert"},
        "mining": {"k": 10, "num_negatives": 2, "range_min": 0},
        "cross_encoder": {"base_model": "tiny-bert", "max_steps": 2, "batch_size": 4,
                          "negatives_per_query": 1, "max_length": 48, "dev_rerank_depth": depth},
    })


@pytest.mark.parametrize("depth", [5, 0])
def test_dev_check_reranks_the_configured_depth(topic_beir, tmp_path, capsys, depth):
    job = _job(topic_beir, depth)
    data = load_training_data(job.data)
    assert data.dev is not None
    base_cross_encoder(job, data, tmp_path / "ce", tmp_path)
    assert (tmp_path / "ce" / "config.json").exists()
    report = tmp_path / "cross_encoder_dev.json"
    if depth:
        saved = json.loads(report.read_text())
        assert saved["depth"] == 5 and 0 <= saved["after"]["ndcg@10"] <= 1
        # The first stage read the mining cache; encoding afresh gives the same ranking.
        from embedray.eval.retrieval import evaluate_retrieval
        from embedray.models.encoder import BiEncoder
        from embedray.training.loop import make_encode_fn

        model = BiEncoder.from_config(job.model).eval()
        fresh = evaluate_retrieval(make_encode_fn(model, job.model), data.dev, k=5, show_progress=False)
        from embedray.eval.metrics import compute_metrics

        want = compute_metrics(data.dev.qrels, fresh.run, ks=[5, 10])
        assert saved["before"]["ndcg@10"] == pytest.approx(want["ndcg@10"], abs=1e-5)
        assert saved["before"]["recall@5"] == pytest.approx(want["recall@5"], abs=1e-5)
        assert "reranking dev top-5:" in capsys.readouterr().out
    else:
        assert not report.exists()
        assert "reranking dev" not in capsys.readouterr().out


def test_dev_rerank_depth_must_not_be_negative():
    with pytest.raises(ValueError, match="dev_rerank_depth"):
        CrossEncoderConfig(dev_rerank_depth=-1)


def _dev(before, after):
    return {"before": {"ndcg@10": before}, "after": {"ndcg@10": after}, "depth": 5}


def test_the_gate_fails_when_reranking_is_worse_on_any_dev_split(topic_beir):
    from embedray.pipeline.cross_encoder import gate

    job = _job(topic_beir, 5)
    assert gate(job, _dev(0.5, 0.6)) == {"checked": True, "passed": True,
                                         "dev": {"": {"bi_encoder": 0.5, "reranked": 0.6, "depth": 5}}}
    failed = gate(job, _dev(0.6, 0.5))
    assert not failed["passed"] and failed["fallback"] == {"max_score_ratio": 0.95}
    assert failed["why"] == "it reranks dev worse than the bi-encoder (0.5000 < 0.6000)"
    tasks = gate(job, {"tasks": {"a": _dev(0.5, 0.7), "b": _dev(0.4, 0.3)}})
    assert not tasks["passed"] and tasks["worse"] == ["b"] and "b: 0.3000 < 0.4000" in tasks["why"]
    assert gate(job, None) == {"checked": False, "passed": True,
                               "why": "no dev check (no dev split, or cross_encoder.dev_rerank_depth: 0)"}
    job.cross_encoder.gate = False
    assert gate(job, _dev(0.6, 0.5))["passed"]
    job.cross_encoder.gate, job.mining.max_score_ratio = True, 0.9  # the recipe's own rule wins
    assert gate(job, _dev(0.6, 0.5))["fallback"] == {"max_score_ratio": 0.9}


@pytest.mark.parametrize("passes", [True, False])
def test_a_failed_gate_leaves_the_cross_encoder_out_of_mining(topic_beir, tmp_path, passes, capsys):
    """Pool v1 with the gate's verdict: passed, the cross-encoder scores and denoises; failed,
    nothing is scored, the positive-aware rule filters, and cross-encoder distillation is refused."""
    from embedray.mining.store import PoolStore
    from embedray.pipeline.refresh import prepare_negatives, read_gate

    job = build_config(TrainJobConfig, {
        "data": {"path": str(topic_beir)}, "model": {"name_or_path": "tiny-bert"},
        "mining": {"k": 10, "num_negatives": 2, "range_min": 0}, "refresh": {"mode": "static"},
        "cross_encoder": {"base_model": "tiny-bert", "max_steps": 2, "batch_size": 4, "negatives_per_query": 1,
                          "max_length": 48, "dev_rerank_depth": 0, "denoise_margin": -1.0,
                          "fallback_max_score_ratio": 1.0}})  # random weights: a tighter rule drops all
    data = load_training_data(job.data)
    base_cross_encoder(job, data, tmp_path / "cross-encoder", tmp_path)
    # The verdict's input, as the dev check writes it: the reranker's dev nDCG@10 against the bi-encoder's.
    (tmp_path / "cross_encoder_dev.json").write_text(json.dumps(_dev(0.5, 0.6) if passes else _dev(0.6, 0.5)))
    prepare_negatives(job, data, tmp_path)
    assert read_gate(tmp_path)["passed"] is passes
    pool = PoolStore(tmp_path / "pools").load(1)
    scored = [s for negs in pool.negatives.values() for _, s in negs]
    assert scored and all((s is not None) is passes for s in scored)
    assert pool.meta["config"]["max_score_ratio"] == (None if passes else 1.0)
    assert bool(pool.positive_scores) is passes
    assert ("cross-encoder gate: it reranks dev worse" in capsys.readouterr().out) is not passes
    if not passes:
        job.distill.score_source = "cross_encoder"
        with pytest.raises(ValueError, match="cross-encoder gate failed"):
            prepare_negatives(job, data, tmp_path)


def test_a_gate_passed_by_fusion_denoises_by_the_fused_score(topic_beir, tmp_path, capsys):
    """The cross-encoder alone reranks dev worse, fused with the bi-encoder better: pool v1 is
    scored and denoised by the fused score at the dev-chosen weight (``denoise_fused``, the
    default), and its own scores are no distillation target."""
    from embedray.mining.store import PoolStore
    from embedray.pipeline.refresh import prepare_negatives, read_gate

    job = build_config(TrainJobConfig, {
        "data": {"path": str(topic_beir)}, "model": {"name_or_path": "tiny-bert"},
        "mining": {"k": 10, "num_negatives": 2, "range_min": 0}, "refresh": {"mode": "static"},
        "cross_encoder": {"base_model": "tiny-bert", "max_steps": 2, "batch_size": 4, "negatives_per_query": 1,
                          "max_length": 48, "dev_rerank_depth": 0, "denoise_margin": 0.0}})
    data = load_training_data(job.data)
    base_cross_encoder(job, data, tmp_path / "cross-encoder", tmp_path)
    report = {**_dev(0.6, 0.5), "fused": {"alpha": 0.4, "ndcg@10": {0.0: 0.6, 0.4: 0.7, 1.0: 0.5}, "queries": 4}}
    (tmp_path / "cross_encoder_dev.json").write_text(json.dumps(report))
    prepare_negatives(job, data, tmp_path)
    verdict = read_gate(tmp_path)
    assert verdict["passed"] and verdict["fusion"] == {"alpha": 0.4, "dev": {"": 0.7}} and verdict["denoise"]
    pool = PoolStore(tmp_path / "pools").load(1)
    assert pool.meta["fusion_alpha"] == 0.4
    assert all(s is not None for negs in pool.negatives.values() for _, s in negs)  # cross-encoder scores kept
    job.distill.score_source = "cross_encoder"
    with pytest.raises(ValueError, match="passed its gate only fused with the bi-encoder"):
        prepare_negatives(job, data, tmp_path)


def _fused_only(topic_beir, tmp_path, score_source):
    """A job whose gate passes the cross-encoder only fused, with ``denoise_fused: false``, its
    pool v1 prepared: ``(job, data, verdict, pool)``."""
    from embedray.mining.store import PoolStore
    from embedray.pipeline.refresh import prepare_negatives, read_gate

    job = build_config(TrainJobConfig, {
        "data": {"path": str(topic_beir)}, "model": {"name_or_path": "tiny-bert"},
        "mining": {"k": 10, "num_negatives": 2, "range_min": 0}, "refresh": {"mode": "static"},
        "distill": {"score_source": score_source},
        "cross_encoder": {"base_model": "tiny-bert", "max_steps": 2, "batch_size": 4, "negatives_per_query": 1,
                          "max_length": 48, "dev_rerank_depth": 0, "denoise_margin": -1.0, "denoise_fused": False,
                          "fallback_max_score_ratio": 1.0}})  # random weights: this margin would drop every one
    data = load_training_data(job.data)
    base_cross_encoder(job, data, tmp_path / "cross-encoder", tmp_path)
    report = {**_dev(0.6, 0.5), "fused": {"alpha": 0.4, "ndcg@10": {0.0: 0.6, 0.4: 0.7, 1.0: 0.5}, "queries": 4}}
    (tmp_path / "cross_encoder_dev.json").write_text(json.dumps(report))
    prepare_negatives(job, data, tmp_path)
    return job, data, read_gate(tmp_path), PoolStore(tmp_path / "pools").load(1)


def test_a_gate_passed_only_fused_need_not_denoise(topic_beir, tmp_path, capsys):
    """With ``denoise_fused: false`` the fused score may rerank but does not denoise: the
    positive-aware rule filters pool v1 and nothing carries cross-encoder scores."""
    from embedray.pipeline.cross_encoder import gate
    from embedray.pipeline.refresh import denoises

    job, _, verdict, pool = _fused_only(topic_beir, tmp_path, "teacher")
    assert verdict["passed"] and verdict["fusion"]["alpha"] == 0.4
    assert verdict["denoise"] is False and verdict["fallback"] == {"max_score_ratio": 1.0}
    assert not denoises(verdict) and denoises(None) and denoises({"passed": True})  # older verdicts: they denoise
    assert "denoising uses the bi-encoder's positive-aware rule (max_score_ratio 1;" in verdict["why"]
    assert pool.meta["config"]["max_score_ratio"] == 1.0 and "fusion_alpha" not in pool.meta
    negatives = [s for negs in pool.negatives.values() for _, s in negs]
    assert negatives and all(s is None for s in negatives) and not pool.positive_scores
    out = capsys.readouterr().out
    assert "cross-encoder gate: it reranks dev worse than the bi-encoder alone, better fused" in out
    assert "removed by the cross-encoder" not in out
    job.cross_encoder.denoise_fused = True
    report = json.loads((tmp_path / "cross_encoder_dev.json").read_text())
    assert gate(job, report)["denoise"] is True and "fallback" not in gate(job, report)


def test_fused_targets_keep_the_scores_of_a_cross_encoder_that_does_not_denoise(topic_beir, tmp_path):
    """Under ``score_source: fused`` the cross-encoder still scores pool v1 (the targets read its
    scores) but drops nothing, whatever its margin says."""
    _, _, verdict, pool = _fused_only(topic_beir, tmp_path, "fused")
    assert verdict["denoise"] is False
    negatives = [s for negs in pool.negatives.values() for _, s in negs]
    assert negatives and all(s is not None for s in negatives) and pool.positive_scores
    assert pool.meta["counts"]["negatives_removed"] == 0 and pool.meta["denoise_margin"] is None
    # The same negatives as without scores (margin -1 would have dropped every one).
    _, _, _, unscored = _fused_only(topic_beir, tmp_path / "unscored", "teacher")
    ids = {q: [d for d, _ in negs] for q, negs in pool.negatives.items()}
    assert ids == {q: [d for d, _ in negs] for q, negs in unscored.negatives.items()} and any(ids.values())
