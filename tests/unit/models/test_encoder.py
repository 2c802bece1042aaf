"""BiEncoder on tiny-bert: pooling, encode, LoRA, state dicts, export to sentence-transformers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from embedray.models.config import ModelConfig
from embedray.models.encoder import BiEncoder, pool

from .conftest import TEXTS, sgd_steps


def build(**kwargs) -> BiEncoder:
    torch.manual_seed(0)
    return BiEncoder.from_config(ModelConfig("tiny-bert", **kwargs))


def test_forward_shape_and_unit_norm():
    model = build()
    emb = model(**model.tokenize(TEXTS))
    assert emb.shape == (len(TEXTS), 32) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-6)
    assert model.config.pooling == "mean" and model.max_seq_length == 128


def test_untrained_equals_sentence_transformer_of_source(tiny_bert_dir):
    model = build()
    expected = SentenceTransformer(str(tiny_bert_dir), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(model.encode(TEXTS), expected, atol=1e-6)


def test_encode_keeps_order_and_training_mode():
    model = build()
    model.train()
    batched = model.encode(TEXTS, batch_size=3)
    one_by_one = np.stack([model.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert model.training
    assert model.encode([]).shape == (0, 32)


def test_max_length_truncates():
    model = build(max_seq_length=5)
    assert model.tokenize([TEXTS[1]])["input_ids"].shape == (1, 5)
    assert model.tokenize([TEXTS[1]], max_length=7)["input_ids"].shape == (1, 7)


@pytest.mark.parametrize("kwargs", [
    {}, {"projection_dim": 8}, {"finetune": "lora"}, {"finetune": "lora", "projection_dim": 8},
    {"pooling": "cls"}, {"pooling": "last"}, {"normalize": False},
])
def test_export_after_training_matches_encode(tmp_path, kwargs):
    model = build(**kwargs)
    before = model.encode(TEXTS)
    sgd_steps(model)
    trained = model.encode(TEXTS)
    assert np.abs(trained - before).max() > 1e-4  # the steps changed the model
    path = model.save_sentence_transformer(tmp_path / "out")
    loaded = SentenceTransformer(str(path), device="cpu")
    np.testing.assert_allclose(loaded.encode(TEXTS), trained, atol=1e-5)
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((path / "modules.json").read_text())]
    expected = ["Transformer", "Pooling"] + (["Dense"] if "projection_dim" in kwargs else []) \
        + ([] if kwargs.get("normalize") is False else ["Normalize"])
    assert modules == expected
    assert not list(path.rglob("*.bin")) and list(path.rglob("*.safetensors"))


def test_lora_trains_adapters_only_and_survives_export(tmp_path):
    model = build(finetune="lora", lora_r=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("pooler" in n for n in trainable)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    sgd_steps(model)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    first = model.encode(TEXTS)
    model.save_sentence_transformer(tmp_path / "a")
    np.testing.assert_array_equal(model.encode(TEXTS), first)  # export left the adapter in place
    sgd_steps(model)  # training goes on after an export
    path = model.save_sentence_transformer(tmp_path / "b")
    np.testing.assert_allclose(SentenceTransformer(str(path), device="cpu").encode(TEXTS),
                               model.encode(TEXTS), atol=1e-5)


def test_lora_targets_default_and_custom():
    model = build(finetune="lora")
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    suffixes = {n.rsplit(".", 1)[-1] for n in adapted}
    assert suffixes == {"query", "key", "value", "dense"}
    model = build(finetune="lora", lora_target_modules=["query", "value"])
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1]
               for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted == {"query", "value"}
    with pytest.raises(ValueError, match="match no linear layer"):
        build(finetune="lora", lora_target_modules=["nope"])


@pytest.mark.parametrize("kwargs", [{}, {"finetune": "lora", "projection_dim": 8}])
def test_state_dict_round_trip(kwargs):
    model = build(**kwargs)
    sgd_steps(model)
    fresh = build(**kwargs)
    assert np.abs(fresh.encode(TEXTS) - model.encode(TEXTS)).max() > 1e-4
    fresh.load_state_dict(model.state_dict(), strict=True)
    np.testing.assert_allclose(fresh.encode(TEXTS), model.encode(TEXTS), atol=1e-6)


def test_cls_pooling_equals_manual_first_token():
    model = build(pooling="cls")
    batch = model.tokenize(TEXTS)
    with torch.no_grad():
        hidden = model.backbone(**batch).last_hidden_state  # (batch, seq, hidden)
    manual = F.normalize(hidden[:, 0], dim=-1).numpy()
    np.testing.assert_allclose(model.encode(TEXTS), manual, atol=1e-6)


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_pooling_equals_manual(side):
    model = build(pooling="last", normalize=False)
    model.tokenizer.padding_side = side
    model.eval()
    batch = model.tokenize(TEXTS)
    with torch.no_grad():
        hidden = model.backbone(**batch).last_hidden_state
        got = model(**batch)
    lasts = []
    for row, mask in enumerate(batch["attention_mask"].tolist()):
        lasts.append(max(i for i, m in enumerate(mask) if m == 1))
        torch.testing.assert_close(got[row], hidden[row, lasts[-1]])
    seq = batch["attention_mask"].shape[1]
    assert all(last == seq - 1 for last in lasts) == (side == "left")
    if side == "right":  # right padding leaves real tokens untouched: equals unpadded forwards
        single = np.stack([model.encode([t])[0] for t in TEXTS])
        np.testing.assert_allclose(got.numpy(), single, atol=1e-5)


def test_pool_on_hand_made_tensors():
    tokens = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # values 0..7
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert pool(tokens, right, "mean").flatten().tolist() == [1.0, 4.5]
    assert pool(tokens, right, "cls").flatten().tolist() == [0.0, 4.0]
    assert pool(tokens, right, "last").flatten().tolist() == [2.0, 5.0]
    assert pool(tokens, left, "cls").flatten().tolist() == [1.0, 6.0]
    assert pool(tokens, left, "last").flatten().tolist() == [3.0, 7.0]


def test_prefixes_are_exported_as_prompts(tmp_path):
    model = build(query_prompt="query: ", doc_prompt="passage: ")
    q = model.encode_queries(TEXTS[:2])
    np.testing.assert_allclose(q, model.encode(["query: " + t for t in TEXTS[:2]]), atol=1e-6)
    assert np.abs(q - model.encode(TEXTS[:2])).max() > 1e-4
    loaded = SentenceTransformer(str(model.save_sentence_transformer(tmp_path / "m")), device="cpu")
    np.testing.assert_allclose(loaded.encode_query(TEXTS[:2]), q, atol=1e-5)
    np.testing.assert_allclose(loaded.encode_document(TEXTS[:2]), model.encode_documents(TEXTS[:2]),
                               atol=1e-5)
    # The document prompt is the default: a plain encode() embeds documents as training did.
    assert loaded.default_prompt_name == "document"
    np.testing.assert_allclose(loaded.encode(TEXTS[:2]), model.encode_documents(TEXTS[:2]), atol=1e-5)


def test_task_prompts_are_exported_by_name(tmp_path):
    model = build(query_prompt="query: ")
    extra = {"sections-query": "Classify the Debian section: ", "scifact-query": "claim: "}
    path = model.save_sentence_transformer(tmp_path / "m", prompts=extra)
    loaded = SentenceTransformer(str(path), device="cpu")
    assert loaded.prompts == {"query": "query: ", "document": "", **extra}
    assert loaded.default_prompt_name is None  # an empty document prompt is no default
    np.testing.assert_allclose(loaded.encode(TEXTS[:2], prompt_name="sections-query"),
                               model.encode(TEXTS[:2], prompt=extra["sections-query"]), atol=1e-5)
    with pytest.raises(ValueError, match="'query' is given twice"):
        model.save_sentence_transformer(tmp_path / "n", prompts={"query": "other: "})


def test_exported_projection_reloads_into_biencoder(tmp_path):
    model = build(projection_dim=8)
    sgd_steps(model)
    path = model.save_sentence_transformer(tmp_path / "m")
    again = BiEncoder.from_config(ModelConfig(str(path)))
    assert again.embedding_dim == 8
    np.testing.assert_allclose(again.encode(TEXTS), model.encode(TEXTS), atol=1e-5)
    with pytest.raises(ValueError, match="projects to 8 dims"):
        BiEncoder.from_config(ModelConfig(str(path), projection_dim=16))


def test_embedray_json_and_model_card(tmp_path):
    model = build()
    extra = {"model_name": "debian-minilm", "data": "debian-packages",
             "metrics": {"test": {"ndcg@10": 0.4321}}, "training": {"lr": 0.002, "steps": 7}}
    path = model.save_sentence_transformer(tmp_path / "m", extra_card=extra, matryoshka_dims=[8, 16])
    meta = json.loads((path / "embedray.json").read_text())
    assert meta["matryoshka_dims"] == [32, 16, 8]
    assert meta["base_model"] == "tiny-bert" and meta["training"] == extra["training"]
    assert meta["metrics"] == extra["metrics"]
    card = (path / "README.md").read_text()
    for needle in ("debian-minilm", "debian-packages", "test.ndcg@10 | 0.4321", "`steps`: 7",
                   "32, 16, 8"):
        assert needle in card, needle
    assert "matryoshka_dims" not in json.loads(
        (model.save_sentence_transformer(tmp_path / "n") / "embedray.json").read_text())


def test_matryoshka_dims_are_validated(tmp_path):
    model = build()
    for bad in ([64], [0], [16.5]):
        with pytest.raises(ValueError, match="matryoshka_dims"):
            model.save_sentence_transformer(tmp_path / "m", matryoshka_dims=bad)
    assert not (tmp_path / "m").exists()


def test_export_replaces_existing_folder_only_when_complete(tmp_path, monkeypatch):
    target = tmp_path / "m"
    target.mkdir()
    (target / "old.txt").write_text("old")
    model = build()

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(SentenceTransformer, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        model.save_sentence_transformer(target)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # old kept, no temp left behind
    assert (target / "old.txt").read_text() == "old"
    monkeypatch.undo()
    model.save_sentence_transformer(target)
    assert not (target / "old.txt").exists() and (target / "modules.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_bfloat16_backbone_gives_float32_embeddings():
    model = build(dtype="bfloat16", projection_dim=8)
    assert next(model.backbone.parameters()).dtype == torch.bfloat16
    emb = model(**model.tokenize(TEXTS))
    assert emb.dtype == torch.float32 and emb.shape == (len(TEXTS), 8)


def test_qlora_without_cuda_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="QLoRA needs a CUDA GPU.*finetune: lora or full"):
        build(finetune="qlora")


def test_unknown_model_fails_fast():
    from embedray.models.bundled import UnknownModelError

    with pytest.raises(UnknownModelError):
        BiEncoder.from_config(ModelConfig("no-such-model"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_and_exports_on_gpu(tmp_path, bits):
    pytest.importorskip("bitsandbytes")
    model = BiEncoder.from_config(ModelConfig("tiny-bert", finetune="qlora", qlora_bits=bits,
                                              dtype="bfloat16"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    sgd_steps_cuda(model)
    live = model.encode(TEXTS)
    loaded = SentenceTransformer(str(model.save_sentence_transformer(tmp_path / "m")), device="cpu")
    exported = loaded.encode(TEXTS)
    # merged into the full-precision base, so close to (not equal to) the quantised model
    cos = (live * exported).sum(-1)
    assert exported.shape == live.shape and cos.min() > 0.9


def sgd_steps_cuda(model, steps: int = 2) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        q = model(**{k: v.cuda() for k, v in model.tokenize(TEXTS).items()})
        d = model(**{k: v.cuda() for k, v in model.tokenize(TEXTS[::-1]).items()})
        F.cross_entropy(q @ d.T * 20, torch.arange(len(TEXTS), device="cuda")).backward()
        opt.step()
        opt.zero_grad()


def test_mpnet_lora_default_targets_and_export(tiny_mpnet_dir, tmp_path):
    model = BiEncoder.from_config(ModelConfig(str(tiny_mpnet_dir), finetune="lora", lora_r=4))
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1]
               for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted == {"q", "k", "v", "o", "dense"}
    sgd_steps(model)
    loaded = SentenceTransformer(str(model.save_sentence_transformer(tmp_path / "m")), device="cpu")
    np.testing.assert_allclose(loaded.encode(TEXTS), model.encode(TEXTS), atol=1e-5)
