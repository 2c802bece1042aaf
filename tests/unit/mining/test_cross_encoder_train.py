"""Training embedray's cross-encoder on tiny-bert: a few steps, a loadable folder, reranker eval."""
from __future__ import annotations

import json

import numpy as np
import pytest

from embedray.data.beir import pairs_from_data
from embedray.mining.config import CrossEncoderConfig
from embedray.training.cross_encoder import build_training_rows, evaluate_reranker, train_cross_encoder

NEGS = {f"q{i}": [f"d{i}x0", f"d{(i + 1) % 8}", f"d{i}x1"] for i in range(8)}


def _cfg(**kw) -> CrossEncoderConfig:
    return CrossEncoderConfig(**{"base_model": "tiny-bert", "max_steps": 3, "batch_size": 4,
                                 "learning_rate": 1e-3, "negatives_per_query": 2, "max_length": 64,
                                 **kw})


def test_training_rows_bce_and_listwise(tiny_data):
    pairs = pairs_from_data(tiny_data)
    assert len(pairs) == 8 and pairs[0] == ("q0", tiny_data.queries["q0"], "d0")
    bce = build_training_rows(pairs, tiny_data.corpus, NEGS, _cfg())
    assert len(bce["query"]) == 8 * 3 and sum(bce["label"]) == 8
    listwise = build_training_rows(pairs, tiny_data.corpus, NEGS, _cfg(loss="listnet"))
    assert len(listwise["query"]) == 8 and listwise["labels"][0] == [1.0, 0.0, 0.0]
    assert listwise["docs"][0][1] == tiny_data.corpus["d0x0"].text_for_model


@pytest.mark.parametrize("loss", ["bce", "listnet"])
def test_train_saves_a_loadable_seeded_cross_encoder(tiny_data, tmp_path, loss):
    from sentence_transformers import CrossEncoder

    pairs = pairs_from_data(tiny_data)
    a = train_cross_encoder(pairs, tiny_data.corpus, NEGS, _cfg(loss=loss), tmp_path / "ce-a")
    b = train_cross_encoder(pairs, tiny_data.corpus, NEGS, _cfg(loss=loss), tmp_path / "ce-b")
    ce_a, ce_b = CrossEncoder(str(a)), CrossEncoder(str(b))
    assert ce_a.num_labels == 1
    probe = [("json parser library", "This package provides a json parser library for Debian.")]
    assert ce_a.predict(probe)[0] == pytest.approx(ce_b.predict(probe)[0], abs=1e-6)  # seeded
    meta = json.loads((a / "embedray.json").read_text())
    assert meta["kind"] == "cross-encoder" and meta["training"]["steps"] == 3
    assert meta["training"]["loss"] == loss
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_evaluate_reranker_reports_before_and_after(tiny_data, tmp_path):
    path = train_cross_encoder(pairs_from_data(tiny_data), tiny_data.corpus, NEGS, _cfg(),
                               tmp_path / "ce")
    # a first stage that ranks the positive last among 4 candidates
    run = {q: {f"d{i}x0": 0.9, f"d{i}x1": 0.8, f"d{i}x2": 0.7, f"d{i}": 0.1}
           for i, q in enumerate(tiny_data.queries)}
    result = evaluate_reranker(path, tiny_data, run, k=4)
    assert set(result) == {"before", "after"}
    # the positive is at rank 4 before: nDCG@10 = 1/log2(5)
    assert result["before"]["ndcg@10"] == pytest.approx(1 / np.log2(5))
    assert 0 < result["after"]["ndcg@10"] <= 1 and result["after"]["num_queries"] == 8
    meta = json.loads((path / "embedray.json").read_text())
    assert meta["metrics"]["rerank_train"]["before"]["ndcg@10"] == result["before"]["ndcg@10"]


def test_head_learning_rate_moves_the_head_faster(tiny_data, tmp_path):
    """With head_learning_rate, the fresh head moves more; the backbone moves as before."""
    from safetensors.torch import load_file

    from embedray.models.bundled import resolve_model
    from embedray.models.cross_encoder import load_cross_encoder
    from embedray.training.cross_encoder import head_parameter_names

    pairs = pairs_from_data(tiny_data)
    base = load_file(str(resolve_model("tiny-bert") / "model.safetensors"))
    moved = {}
    for name, head_lr in [("same", None), ("fast", 1e-1)]:
        cfg = _cfg(learning_rate=1e-4, head_learning_rate=head_lr)
        path = train_cross_encoder(pairs, tiny_data.corpus, NEGS, cfg, tmp_path / name)
        weights = load_file(str(path / "model.safetensors"))
        head = weights["classifier.weight"]
        backbone = weights["bert.encoder.layer.0.attention.self.query.weight"]
        before = base["encoder.layer.0.attention.self.query.weight"]
        moved[name] = (head.norm().item(), (backbone - before).abs().max().item())
        assert json.loads((path / "embedray.json").read_text())["training"]["head_learning_rate"] == head_lr
    assert moved["fast"][0] > 2 * moved["same"][0]
    assert moved["fast"][1] < 10 * moved["same"][1]
    names = head_parameter_names(load_cross_encoder("tiny-bert", num_labels=1))
    assert any("classifier" in n for n in names) and not any("encoder.layer" in n for n in names)


def test_head_learning_rate_is_checked():
    with pytest.raises(ValueError, match="head_learning_rate"):
        _cfg(head_learning_rate=0.0)
