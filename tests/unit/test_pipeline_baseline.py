"""The baseline stage evaluates a base model once when student and teacher start from it; encode
speeds that the report compares are timed in turns; teacher corpus embeddings are shared with the
teacher stage through its embedding cache."""
from pathlib import Path

import numpy as np
import pytest

from embedray.config import build_config
from embedray.pipeline.config import PipelineConfig
from embedray.pipeline.stages import Pipeline


def _pipeline(tmp_path: Path, keep_layers) -> Pipeline:
    cfg = build_config(PipelineConfig, {"name": "t", "output_dir": str(tmp_path), "prepare": {"source": "debian"},
                                        "teacher": {"model": {"name_or_path": "tiny-bert"}},
                                        "student": {"keep_layers": keep_layers}}, "test")
    return Pipeline(cfg)


@pytest.mark.parametrize("keep_layers, calls", [(2, ["tiny-bert"]), (1, ["base-student", "tiny-bert"])])
def test_baseline_evaluates_a_shared_base_model_once(tmp_path, monkeypatch, keep_layers, calls):
    p = _pipeline(tmp_path, keep_layers)
    seen = []

    def fake_eval(name_or_path, **_):  # isolates the stage's bookkeeping from retrieval
        seen.append(Path(str(name_or_path)).name)
        return {"ndcg@10": 0.5 + 0.1 * len(seen)}

    timed = []

    def fake_speeds(models, **_):
        timed.append(sorted(models))
        return {label: 100.0 + i for i, label in enumerate(models)}

    monkeypatch.setattr(p, "_evaluate_model", fake_eval)
    monkeypatch.setattr(p, "_encode_speeds", fake_speeds)
    monkeypatch.setattr(p, "_teacher_docs", lambda path: None)
    rows = p.stage_baseline()
    assert seen == calls
    assert timed == []  # timed by the evaluate stage, on the trained models of the same architecture
    if len(calls) == 1:
        assert rows["base student"] == rows["base teacher"] and rows["base student"] is not rows["base teacher"]
    else:
        assert rows["base student"] != rows["base teacher"]


def test_evaluate_times_the_trained_pair_in_turns_and_base_rows_take_their_architecture(tmp_path, monkeypatch):
    import json

    import embedray.models.student as student_mod

    p = _pipeline(tmp_path, 1)
    p.run.mkdir(parents=True, exist_ok=True)
    (p.run / "baseline.json").write_text(json.dumps({"base student": {"ndcg@10": 0.5, "docs_per_s": None},
                                                     "base teacher": {"ndcg@10": 0.6, "docs_per_s": None},
                                                     "mpnet-base (untrained)": {"ndcg@10": 0.7, "docs_per_s": 9.0}}))

    class Res:
        run, doc_embeddings = {}, None

    def fake_eval(name_or_path, keep=False, truncate_dim=None, **_):
        row = {"ndcg@10": 0.8, "docs_per_s": None, "dim": truncate_dim or 8}
        return (row, Res()) if keep else row

    timed = []

    def fake_speeds(models, **_):
        timed.append(list(models))
        return {"trained teacher": 20.0, "distilled student": 50.0}

    monkeypatch.setattr(p, "_evaluate_model", fake_eval)
    monkeypatch.setattr(p, "_teacher_docs", lambda path: None)
    monkeypatch.setattr(p, "_encode_speeds", fake_speeds)
    monkeypatch.setattr(student_mod, "model_size", lambda path: {"params": 1})
    p.stage_evaluate()
    rows = json.loads((p.run / "test_results.json").read_text())
    assert timed == [["trained teacher", "distilled student"]]  # one sitting, in turns
    assert rows["trained teacher"]["docs_per_s"] == rows["base teacher"]["docs_per_s"] == 20.0
    assert rows["distilled student"]["docs_per_s"] == rows["base student"]["docs_per_s"] == 50.0
    assert rows["base teacher"]["docs_per_s_timed_as"] == "trained teacher"
    assert rows["base student"]["docs_per_s_timed_as"] == "distilled student"
    assert "docs_per_s_timed_as" not in rows["trained teacher"]
    assert rows["mpnet-base (untrained)"]["docs_per_s"] == 9.0  # an extra model keeps its own timing


def test_encode_speeds_are_timed_in_turns(tmp_path, topic_beir, monkeypatch):
    from embedray.data.beir import load_beir

    p = _pipeline(tmp_path, 1)
    p._test = load_beir(topic_beir, "test")
    order = []

    class Clocked:  # an encoder that records when it runs
        def __init__(self, name):
            self.name = name

        def encode(self, texts, batch_size):
            order.append((self.name, len(texts)))

    speeds = p._encode_speeds({"a": Clocked("a"), "b": Clocked("b")}, n=8, rounds=2)
    assert [name for name, _ in order] == ["a", "b"] + ["a", "b"] * 2  # warm-ups, then timed in turns
    assert set(speeds) == {"a", "b"} and all(v > 0 for v in speeds.values())


def test_base_teacher_documents_land_in_the_cache_the_teacher_stage_mines_with(tmp_path, topic_beir):
    """The baseline encodes the corpus with the base teacher once; the teacher stage's first
    mining round (same config, same weights, same texts) finds every document in its cache."""
    from sentence_transformers import SentenceTransformer

    from embedray.mining.cache import (
        cached_embeddings,
        state_dict_fingerprint,
        with_precision,
    )
    from embedray.mining.pipeline import doc_text
    from embedray.models.bundled import resolve_model
    from embedray.models.encoder import BiEncoder
    from embedray.models.precision import resolve_precision
    from embedray.pipeline.stages import Pipeline
    from embedray.training.data import load_training_data

    cfg = build_config(PipelineConfig, {"name": "t", "output_dir": str(tmp_path), "prepare": {"source": "beir"},
                                        "data": {"path": str(topic_beir)}, "teacher": {"model": {"name_or_path": "tiny-bert"}},
                                        "student": {"keep_layers": 1}}, "test")
    p = Pipeline(cfg)
    docs = p._teacher_docs("tiny-bert")
    job = p._teacher_job()
    data = load_training_data(job.data)
    fp = with_precision(state_dict_fingerprint(BiEncoder.from_config(job.model).state_dict()),  # as the teacher
                        job.mining.precision)                                                   # stage mines
    cached = cached_embeddings([doc_text(d) for d in data.corpus.values()], fp, p.run / "teacher" / "cache",
                               prompt=f"d|{job.mining.doc_prompt}")
    assert cached is not None and cached.shape == docs.shape
    st = SentenceTransformer(str(resolve_model("tiny-bert")), device="cpu")
    texts = [d.text_for_model for d in p._test_data().corpus.values()]
    want = st.encode(texts, normalize_embeddings=True)                   # what the eval would encode, in fp32
    if resolve_precision(cfg.eval.precision) == "fp32":
        assert np.allclose(docs, want, atol=1e-5)
    else:                                                                # bf16: the same embeddings to ~3 digits
        assert (docs * want).sum(1).min() > 0.995


def test_trained_teacher_documents_are_read_back_from_its_final_dev_evaluation(tmp_path, topic_beir):
    """The teacher run's final dev evaluation stores its corpus embeddings; the test evaluation
    of the exported folder (same weights once saved and loaded) finds every one of them."""
    import torch

    from embedray.mining.cache import (
        cached_embeddings,
        state_dict_fingerprint,
        with_precision,
    )
    from embedray.mining.pipeline import doc_text
    from embedray.models.encoder import BiEncoder
    from embedray.pipeline.stages import Pipeline
    from embedray.training.data import load_training_data
    from embedray.pipeline.evaluation import evaluate_dev

    cfg = build_config(PipelineConfig, {"name": "t", "output_dir": str(tmp_path), "prepare": {"source": "beir"},
                                        "data": {"path": str(topic_beir)}, "teacher": {"model": {"name_or_path": "tiny-bert"}},
                                        "student": {"keep_layers": 1}}, "test")
    p = Pipeline(cfg)
    job = p._teacher_job()
    core = BiEncoder.from_config(job.model)
    core.precision = job.train.precision                  # as the training loop sets it
    with torch.no_grad():                                 # "trained": weights unlike the base model's
        for param in core.parameters():
            param.add_(0.01)
    data = load_training_data(job.data)
    cache = p.run / "teacher" / "cache"
    assert evaluate_dev(core, job, data, cache_dir=cache, store=True)["ndcg@10"] >= 0
    final = p.run / "teacher" / "final"
    core.save_sentence_transformer(final)
    reloaded = BiEncoder.from_config(job.model.__class__(name_or_path=str(final)))
    texts = [doc_text(d) for d in p._test_data().corpus.values()]
    stored = cached_embeddings(texts, with_precision(state_dict_fingerprint(reloaded.state_dict()), cfg.eval.precision), cache,
                               prompt=f"d|{job.mining.doc_prompt}")
    assert stored is not None
    assert np.allclose(p._teacher_docs(final), stored)
