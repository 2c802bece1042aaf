"""``train.attention``: the backbone's attention kernel in training-mode passes only, restored after
each pass; the same embeddings and gradients either way."""
from __future__ import annotations

import pytest
import torch

from embedray.models.config import ModelConfig
from embedray.models.encoder import BiEncoder, resolve_attention

from .conftest import TEXTS


def _seen(model: BiEncoder) -> list[str]:
    """The attention implementation the backbone ran each forward with, recorded by a hook."""
    seen: list[str] = []
    model.backbone.register_forward_pre_hook(lambda mod, args: seen.append(mod.config._attn_implementation))
    return seen


def _build(**kw) -> BiEncoder:
    torch.manual_seed(0)
    return BiEncoder.from_config(ModelConfig("tiny-bert", **kw))


def test_training_passes_run_the_training_kernel_and_give_the_backbone_back():
    model = _build()
    own = model.backbone.config._attn_implementation
    assert own == "sdpa"  # transformers' default for BERT: what the switch departs from
    model.train_attention = "eager"
    model.train()
    seen = _seen(model)
    emb = model(**model.tokenize(TEXTS))
    emb.sum().backward()  # the graph recorded eager attention; back-propagating needs no switch
    with torch.no_grad():  # GradCache's first pass: the kernel of the pass it is replayed by
        model(**model.tokenize(TEXTS))
    model.encode(TEXTS)  # inference (eval mode): the backbone's own
    model.eval()
    with torch.no_grad():
        model(**model.tokenize(TEXTS))
    assert seen == ["eager", "eager", "sdpa", "sdpa"]
    assert model.backbone.config._attn_implementation == own and model.encode(TEXTS).shape == (4, 32)


def test_lora_backbones_switch_their_base_model():
    model = _build(finetune="lora")
    model.train_attention = "eager"
    model.train()
    base = model.backbone.get_base_model()
    seen: list[str] = []
    base.register_forward_pre_hook(lambda mod, args: seen.append(mod.config._attn_implementation))
    model(**model.tokenize(TEXTS)).sum().backward()
    assert seen == ["eager"] and base.config._attn_implementation == "sdpa"


def test_eager_and_sdpa_give_the_same_embeddings_and_gradients():
    results = []
    for kernel in ("eager", "sdpa"):
        model = _build()
        model.train_attention = kernel
        model.train()
        for m in model.modules():  # training mode without dropout: the two passes must agree
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        emb = model(**model.tokenize(TEXTS))
        (emb @ emb.T).sum().backward()
        grad = model.backbone.encoder.layer[0].attention.self.query.weight.grad.clone()
        results.append((emb.detach(), grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-3)


def test_auto_is_eager_on_cpu_and_the_backbones_own_elsewhere():
    assert resolve_attention("auto", "cpu") == "eager"
    assert resolve_attention("auto", torch.device("cuda", 0)) is None
    assert resolve_attention("sdpa", "cpu") == "sdpa" and resolve_attention("eager", "cuda") == "eager"
    with pytest.raises(ValueError, match="attention: must be auto, eager or sdpa, got 'flash'"):
        resolve_attention("flash", "cpu")


def test_the_recipe_names_the_kernel_and_refuses_an_unknown_one():
    from embedray.config import ConfigError, build_config
    from embedray.training.config import TrainConfig

    assert build_config(TrainConfig, {}).attention == "auto"
    assert build_config(TrainConfig, {"attention": "sdpa"}).attention == "sdpa"
    with pytest.raises(ConfigError, match=r"attention: Input should be 'auto', 'eager' or 'sdpa'"):
        build_config(TrainConfig, {"attention": "flash"})
