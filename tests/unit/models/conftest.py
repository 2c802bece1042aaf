"""Shared fixtures for model tests: tiny-bert, a tiny MPNet, a few SGD steps."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from embedray.models.bundled import resolve_model

TEXTS = [
    "apt: commandline package manager",
    "a much longer sentence about Debian packages, their dependencies and maintainers",
    "x",
    "library for parsing JSON in C",
]


@pytest.fixture(scope="session")
def tiny_bert_dir():
    return resolve_model("tiny-bert")


def sgd_steps(model, steps: int = 2, lr: float = 0.5) -> None:
    """A few in-batch-negatives steps that move every trainable weight."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    model.train()
    for _ in range(steps):
        q = model(**model.tokenize(TEXTS))  # (batch, dim)
        d = model(**model.tokenize(TEXTS[::-1]))  # (batch, dim)
        loss = F.cross_entropy(q @ d.T * 20, torch.arange(len(TEXTS)))
        loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.fixture(scope="session")
def tiny_mpnet_dir(tmp_path_factory):
    """A random 3-layer MPNet sentence-transformers folder (MiniLM tokenizer), built once."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    torch.manual_seed(0)
    mpnet = MPNetModel(MPNetConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=3,
                                   num_attention_heads=2, intermediate_size=64,
                                   max_position_embeddings=130, pad_token_id=tok.pad_token_id))
    root = tmp_path_factory.mktemp("mpnet")
    mpnet.save_pretrained(root / "hf", safe_serialization=True)
    tok.save_pretrained(root / "hf")
    st = SentenceTransformer(modules=[models.Transformer(str(root / "hf"), max_seq_length=64),
                                      models.Pooling(32, pooling_mode="mean"), models.Normalize()],
                             device="cpu")
    st.save(str(root / "st"), create_model_card=False)
    return root / "st"
