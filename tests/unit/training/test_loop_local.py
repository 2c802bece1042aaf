"""The loop in one process (LocalSession) on tiny-bert: artifacts, learning, exact resume."""
import json

import pytest
import torch

from embedray.config import build_config
from embedray.pipeline.config import TrainJobConfig
from embedray.pipeline.runtime import run_local
from embedray.training.loop import Hooks
from tests.faults import Crash, crash_at


def _job(beir, storage, name, **train):
    return build_config(TrainJobConfig, {
        "data": {"path": str(beir)},
        "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "infonce", "temperature": 0.1},
        "train": {"max_steps": 8, "batch_size": 4, "num_negatives": 1, "lr": 1e-3, "checkpoint_every": 3,
                  "eval_every": 4, "eval_max_queries": None, "log_every": 1, "max_doc_length": 48,
                  "precision": "fp32", **train},  # exact-resume comparisons are made in fp32
        "cluster": {"storage_path": str(storage), "run_name": name, "num_to_keep": 2},
    })


def _losses(run_dir):
    return [r["loss"] for r in json.loads((run_dir / "detailed_training_logs.json").read_text())["steps"]]


def test_outputs_and_exact_resume_after_crash(topic_beir, tmp_path):
    ref = run_local(_job(topic_beir, tmp_path, "ref"))
    run = tmp_path / "ref"
    for name in ("final/modules.json", "final/embedray.json", "final/training_config.json",
                 "detailed_training_logs.json", "training_losses.json", "training_summary_report.json"):
        assert (run / name).exists(), name
    assert list((run / "runs").glob("events.out.tfevents*"))
    assert ref["steps"] == 8 and ref["dev_before"]["ndcg@10"] >= 0
    # the same summary for people: before/after on dev from the JSON's own figures, and the plots
    md = (run / "training_summary_report.md").read_text()
    before, after = ref["dev_before"]["ndcg@10"], ref["dev_after"]["ndcg@10"]
    assert md.startswith("# Training summary: ref\n") and "| steps | 8 (8 this session) |" in md
    assert f"| ndcg@10 | {before:.4f} | {after:.4f} | {after - before:+.4f} |" in md
    assert "![training](plots/training.png)" in md and (run / "plots" / "training.png").exists()

    with pytest.raises(Crash):
        run_local(_job(topic_beir, tmp_path, "crashy"), Hooks(on_step=[crash_at(5)]))
    resumed = run_local(_job(topic_beir, tmp_path, "crashy"))  # same run name: resumes at step 3
    assert resumed["steps_this_session"] == 5
    a, b = _losses(run), _losses(tmp_path / "crashy")
    assert len(b) == 8
    assert b == pytest.approx(a, abs=1e-6)  # CPU fp32: identical up to float noise


def test_resuming_with_another_seed_is_refused(topic_beir, tmp_path):
    run_local(_job(topic_beir, tmp_path, "seeded", max_steps=3, eval_every=0, checkpoint_every=3))
    with pytest.raises(ValueError, match=r"train.seed=0, but the run resuming it has train.seed 1.*"
                                         r"Re-run with train.seed=0, or start afresh under a new cluster.run_name"):
        run_local(_job(topic_beir, tmp_path, "seeded", max_steps=5, eval_every=0, seed=1))


def test_training_improves_dev_on_learnable_data(topic_beir, tmp_path):
    summary = run_local(_job(topic_beir, tmp_path, "learn", max_steps=40, lr=3e-3, eval_every=0))
    assert summary["dev_after"]["ndcg@10"] > summary["dev_before"]["ndcg@10"] + 0.05


@pytest.mark.parametrize("in_batch", [False, True])
def test_distilling_from_a_teacher_runs_per_query_and_in_batch(topic_beir, tmp_path, in_batch):
    job = _job(topic_beir, tmp_path, f"distill-{in_batch}", max_steps=3, eval_every=0, checkpoint_every=0)
    job = build_config(TrainJobConfig, {
        **_as_dict(job),
        "loss": {"name": "infonce", "temperature": 0.1, "distill_score": "kl", "distill_embed": True,
                 "distill_in_batch": in_batch},
        "distill": {"teacher": "tiny-bert"},
    })
    summary = run_local(job)
    losses = _losses(tmp_path / f"distill-{in_batch}")
    assert summary["steps"] == 3 and len(losses) == 3
    assert all(loss == loss and loss > 0 for loss in losses)  # finite, task + distillation terms


def _as_dict(job):
    from embedray.config import to_dict
    return to_dict(job)


def test_dev_evaluation_borrows_every_core_and_gives_them_back():
    import os

    from embedray.training.loop import _every_core

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _every_core():
            assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_dev_evaluation_reads_documents_mining_encoded_with_the_same_weights(topic_beir, tmp_path):
    from embedray.mining.cache import encode_with_cache, state_dict_fingerprint
    from embedray.mining.pipeline import doc_text
    from embedray.models.encoder import BiEncoder
    from embedray.training.data import load_training_data
    from embedray.pipeline.evaluation import evaluate_dev
    from embedray.training.loop import make_encode_fn

    job = _job(topic_beir, tmp_path, "cache")
    data = load_training_data(job.data)
    model = BiEncoder.from_config(job.model)
    encoded = []
    real_encode = model.encode
    model.encode = lambda texts, **kw: (encoded.extend(texts), real_encode(texts, **kw))[1]
    cache = tmp_path / "cache"

    plain = evaluate_dev(model, job, data, cache_dir=cache)  # nothing mined yet: encodes everything
    n_docs, n_queries = len(data.dev.corpus), len(data.dev.qrels)
    assert len(encoded) == n_docs + n_queries and not cache.exists()  # and writes no cache

    encode = make_encode_fn(model, job.model)  # what a mining round of these weights leaves behind
    encode_with_cache([doc_text(d) for d in data.dev.corpus.values()], lambda t: encode(t, "doc"),
                      state_dict_fingerprint(model.state_dict()), cache, prompt=f"d|{job.mining.doc_prompt}")
    encoded.clear()
    reused = evaluate_dev(model, job, data, cache_dir=cache)
    assert len(encoded) == n_queries  # documents came from the cache
    assert reused["ndcg@10"] == pytest.approx(plain["ndcg@10"], abs=1e-6)

    with torch.no_grad():  # other weights: other fingerprint, the cache does not apply
        next(model.parameters()).add_(0.01)
    encoded.clear()
    evaluate_dev(model, job, data, cache_dir=cache)
    assert len(encoded) == n_docs + n_queries


def test_teacher_states_are_its_own_layer_outputs_padded_like_the_student_batch():
    from embedray.models.config import ModelConfig
    from embedray.models.encoder import BiEncoder
    from embedray.training.distill import Teacher

    teacher = Teacher("tiny-bert", ModelConfig(name_or_path="tiny-bert"), torch.device("cpu"), hidden_layers=[1, 0])
    texts = ["a short text", "a somewhat longer text with more words in it"]
    tok = teacher.model.tokenize(texts, max_length=16)
    states = teacher.states(texts, 16, tok["attention_mask"])
    ref = BiEncoder.from_config(ModelConfig(name_or_path="tiny-bert")).eval()
    with torch.no_grad():
        _, hidden = ref(**tok, return_hidden=True)
    mask = tok["attention_mask"].unsqueeze(-1)
    assert len(states) == 2 and states[0].shape == hidden[1].shape
    assert torch.allclose(states[0], hidden[1] * mask, atol=2e-3)  # fp16 memory
    assert torch.allclose(states[1], hidden[0] * mask, atol=2e-3)
    encoded = teacher.encoded
    teacher.states(texts, 16, tok["attention_mask"])                 # remembered, not encoded again
    assert teacher.encoded == encoded
    with pytest.raises(ValueError, match="layers 0..1"):
        Teacher("tiny-bert", ModelConfig(name_or_path="tiny-bert"), torch.device("cpu"), hidden_layers=[2])


@pytest.mark.parametrize("layers", [None, [1]])
def test_hidden_state_distillation_trains_a_layer_reduced_student(topic_beir, tmp_path, layers):
    """keep layer 0 of 2: with the default map its states start equal to the teacher's layer 0
    (hidden loss 0 without dropout); mapped to teacher layer 1 they start apart."""
    from embedray.models.student import layer_reduced_student
    student = layer_reduced_student("tiny-bert", [0], tmp_path / "student")
    name = f"hidden-{layers}"
    job = build_config(TrainJobConfig, {
        **_as_dict(_job(topic_beir, tmp_path, name, max_steps=2, eval_every=0, checkpoint_every=0, lr=1e-9)),
        "model": {"name_or_path": str(student)},
        "loss": {"name": "infonce", "temperature": 0.1, "distill_hidden": True, "dropout": 0.0,
                 "weights": {"task": 0.0, "hidden": 1.0}},
        "distill": {"teacher": "tiny-bert", "hidden_layers": layers},
    })
    assert run_local(job)["steps"] == 2
    losses = _losses(tmp_path / name)
    if layers is None:
        assert max(losses) < 1e-6
    else:
        assert min(losses) > 1e-5  # ~2e-4 on tiny-bert


def test_hidden_state_distillation_needs_a_layer_map(topic_beir, tmp_path):
    job = build_config(TrainJobConfig, {
        **_as_dict(_job(topic_beir, tmp_path, "nomap", max_steps=1, eval_every=0, checkpoint_every=0)),
        "loss": {"name": "infonce", "distill_hidden": True}, "distill": {"teacher": "tiny-bert"},
    })
    with pytest.raises(ValueError, match="not a layer-reduced copy"):
        run_local(job)
