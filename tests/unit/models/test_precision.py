"""The precision policy: what ``auto`` resolves to, and bf16 covering the transformer only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from embedray.models import precision as P


def test_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_is_fast", lambda: True)
    assert P.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(P, "cpu_bf16_is_fast", lambda: False)
    assert P.resolve_precision("auto", "cpu") == "fp32"
    assert P.resolve_precision("bf16", "cpu") == "bf16" and P.resolve_precision("fp32", "cpu") == "fp32"
    assert isinstance(P.autocast("fp32", "cpu"), type(P.autocast("auto", "cpu")))  # both no-ops here
    with pytest.raises(ValueError, match="eval.precision: 'fp16' is not a precision"):
        P.check_precision("fp16", "eval.precision")


def test_cpu_capability_is_read_from_torch():
    caps = torch.cpu.get_capabilities()
    assert P.cpu_bf16_is_fast() == bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def test_sentence_transformer_in_bf16_pools_in_fp32(tiny_bert_dir):
    from sentence_transformers import SentenceTransformer

    texts = ["a fast compression tool", "web server for static files", "x"]
    model = SentenceTransformer(str(tiny_bert_dir), device="cpu")
    want = model.encode(texts)
    seen = {}
    model[1].register_forward_pre_hook(lambda m, args: seen.update(dtype=args[0]["token_embeddings"].dtype))
    assert P.use_precision(model, "bf16") == "bf16" == model.embedray_precision
    got = model.encode(texts)
    assert got.dtype == np.float32 and seen["dtype"] == torch.float32  # Pooling got fp32 tokens
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.999 and not np.array_equal(got, want)  # bf16 ran: close, not identical
    assert P.use_precision(model, "fp32") == "fp32"  # switching back is exact fp32 again
    np.testing.assert_array_equal(model.encode(texts), want)


def test_cross_encoder_head_runs_in_fp32(tiny_bert_dir):
    from embedray.models.cross_encoder import load_cross_encoder

    ce = load_cross_encoder(tiny_bert_dir, num_labels=1, precision="bf16")
    head = ce[0].auto_model.classifier
    seen = {}
    head.register_forward_hook(lambda m, args, out: seen.update(inp=args[0].dtype, out=out.dtype))
    scores = ce.predict([("query", "a document"), ("another", "text")])
    # the transformer handed the head bf16 states; the head computed its score in fp32
    assert ce.embedray_precision == "bf16" and seen == {"inp": torch.bfloat16, "out": torch.float32}
    fp32 = load_cross_encoder(tiny_bert_dir, num_labels=1, precision="fp32")
    fp32.load_state_dict(ce.state_dict())
    np.testing.assert_allclose(scores, fp32.predict([("query", "a document"), ("another", "text")]), atol=5e-3)


def test_bi_encoder_in_bf16_returns_fp32_embeddings_and_states():
    from embedray.models.config import ModelConfig
    from embedray.models.encoder import BiEncoder

    model = BiEncoder.from_config(ModelConfig(name_or_path="tiny-bert")).eval()
    tok = model.tokenize(["hello world", "a longer text about compression"])
    with torch.no_grad():
        ref = model(**tok)
        model.precision = "bf16"
        emb, states = model(**tok, return_hidden=True)
    assert emb.dtype == torch.float32 and all(s.dtype == torch.float32 for s in states)
    assert torch.allclose(emb, ref, atol=2e-2) and not torch.equal(emb, ref)


def test_training_losses_are_computed_outside_autocast(topic_beir, tmp_path, monkeypatch):
    from embedray.config import build_config
    from embedray.losses.infonce import InfoNCELoss
    from embedray.pipeline.config import TrainJobConfig
    from embedray.pipeline.runtime import run_local

    seen = []
    forward = InfoNCELoss.forward

    def recording(self, *args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(InfoNCELoss, "forward", recording)
    job = build_config(TrainJobConfig, {
        "data": {"path": str(topic_beir), "dev_split": None}, "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "infonce", "temperature": 0.1},
        "train": {"max_steps": 2, "batch_size": 4, "num_negatives": 1, "checkpoint_every": 0, "eval_every": 0,
                  "max_doc_length": 32, "precision": "bf16"},
        "cluster": {"storage_path": str(tmp_path), "run_name": "bf16"}})
    run_local(job)
    assert seen and not any(seen)
