"""GradCache: the parameter gradients equal the uncached loss's on the same batch, dropout masks
replay exactly, and a cached training run follows the uncached one step by step."""
import json

import torch

from embedray.config import build_config
from embedray.losses import InfoNCELoss, MatryoshkaLoss, ids_to_tensor, set_dropout
from embedray.models.config import ModelConfig
from embedray.models.encoder import BiEncoder
from embedray.pipeline.config import TrainJobConfig
from embedray.pipeline.runtime import run_local
from embedray.training.grad_cache import backward_through_model, embed_without_graph

QUERIES = [f"query number {i} about topic {i % 3}" for i in range(7)]
DOCS = [f"document {i} describes topic {i % 3} at some length, with words" for i in range(7)]


def _model(dropout=0.0):
    torch.manual_seed(0)
    model = BiEncoder.from_config(ModelConfig(name_or_path="tiny-bert"))
    model.precision = "fp32"
    set_dropout(model, dropout)
    return model.train()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_cached_gradients_equal_the_uncached_ones():
    for loss_fn in (InfoNCELoss(temperature=0.1), MatryoshkaLoss(InfoNCELoss(temperature=0.1), [32, 16])):
        model = _model()
        q_tok, d_tok = model.tokenize(QUERIES), model.tokenize(DOCS)
        ids = {"pos_ids": ids_to_tensor([f"d{i}" for i in range(7)])}
        loss_fn.batch_loss(model(**q_tok), model(**d_tok), **ids).backward()
        plain = _grads(model)
        model.zero_grad()
        cached = [embed_without_graph(model, q_tok, 3), embed_without_graph(model, d_tok, 2)]
        loss = loss_fn.batch_loss(cached[0].reps, cached[1].reps, **ids)
        loss.backward()
        assert all(p.grad is None for p in model.parameters())  # the loss stopped at the embeddings
        backward_through_model(model, cached)
        again = _grads(model)
        assert plain.keys() == again.keys()
        for name in plain:
            assert torch.allclose(plain[name], again[name], atol=1e-6, rtol=1e-4), name


def test_dropout_masks_replay_exactly():
    model = _model(dropout=0.1)
    tok = model.tokenize(DOCS)
    cached = embed_without_graph(model, tok, 3)
    cached.reps.grad = torch.ones_like(cached.reps)
    seen = []
    handle = model.register_forward_hook(lambda m, args, out: seen.append(out.detach()))
    backward_through_model(model, [cached])
    handle.remove()
    assert torch.equal(torch.cat(seen), cached.reps.detach())
    assert not torch.equal(cached.reps, embed_without_graph(model, tok, 3).reps)  # dropout is on


def _job(beir, storage, name, mini):
    return build_config(TrainJobConfig, {
        "data": {"path": str(beir)}, "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "infonce", "temperature": 0.1, "dropout": 0.0},
        "train": {"max_steps": 8, "batch_size": 8, "num_negatives": 1, "lr": 1e-3, "mini_batch_size": mini,
                  "checkpoint_every": 0, "eval_every": 0, "log_every": 1, "max_doc_length": 48, "precision": "fp32"},
        "cluster": {"storage_path": str(storage), "run_name": name}})


def test_a_cached_run_follows_the_uncached_one(topic_beir, tmp_path):
    losses = {}
    for name, mini in (("plain", None), ("cached", 3)):
        run_local(_job(topic_beir, tmp_path, name, mini))
        steps = json.loads((tmp_path / name / "detailed_training_logs.json").read_text())["steps"]
        losses[name] = [r["loss"] for r in steps]
    assert len(losses["cached"]) == 8
    for a, b in zip(losses["plain"], losses["cached"]):
        assert abs(a - b) < 1e-3 * max(1.0, abs(a)), losses
    assert losses["cached"][-1] < losses["cached"][0]


def test_gradient_accumulation_adds_no_in_batch_negatives(topic_beir, tmp_path):
    """Step 1 of a grad_accum=2 run logs the mean of its two micro-batches' losses, each over its
    own in-batch documents, which is not the loss of one batch holding both (GradCache's)."""
    from embedray.training.batches import BatchPlan, canonical_order
    from embedray.training.data import load_training_data, training_examples

    job = build_config(TrainJobConfig, {
        "data": {"path": str(topic_beir), "dev_split": None}, "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "infonce", "temperature": 0.1, "dropout": 0.0},
        "train": {"max_steps": 1, "batch_size": 4, "grad_accum": 2, "negatives": "none", "checkpoint_every": 0,
                  "eval_every": 0, "max_doc_length": 48, "precision": "fp32"},
        "cluster": {"storage_path": str(tmp_path), "run_name": "accum"}})
    run_local(job)
    logged = json.loads((tmp_path / "accum" / "detailed_training_logs.json").read_text())["steps"][0]["loss"]

    data = load_training_data(job.data)
    examples = canonical_order(training_examples(job.data, data))
    plan = BatchPlan(examples, lambda d: len(data.doc_text(d)), batch_size=4, world_size=1, seed=0, bucket_batches=16)
    model, loss_fn = _model(), InfoNCELoss(temperature=0.1)
    micro = [[examples[i] for i in plan.rank_indices(k, 0)] for k in range(2)]

    def loss_of(batch):
        q = model(**model.tokenize([data.queries[e.query_id] for e in batch], max_length=64))
        d = model(**model.tokenize([data.doc_text(e.pos_id) for e in batch], max_length=48))
        return loss_fn.batch_loss(q, d, pos_ids=ids_to_tensor([e.pos_id for e in batch]),
                                  q_ids=ids_to_tensor([e.query_id for e in batch])).item()

    with torch.no_grad():
        separate = (loss_of(micro[0]) + loss_of(micro[1])) / 2
        together = loss_of(micro[0] + micro[1])
    assert abs(logged - separate) < 1e-4, (logged, separate)
    assert together > separate + 0.1  # twice the in-batch negatives: a harder softmax
