"""Layer-reduced students and model_size on tiny models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from embedray.models.config import ModelConfig
from embedray.models.encoder import BiEncoder
from embedray.models.student import keeps_every_layer, layer_reduced_student, model_size, pick_layers

from .conftest import TEXTS, sgd_steps


@pytest.mark.parametrize("keep, n, expected", [
    (3, 6, [0, 2, 5]), (2, 6, [0, 5]), (6, 6, [0, 1, 2, 3, 4, 5]), (1, 6, [0]), (4, 12, [0, 4, 7, 11]),
    ([4, 0, 4], 6, [0, 4]), ([-1], 6, [5]),
])
def test_pick_layers(keep, n, expected):
    assert pick_layers(keep, n) == expected


@pytest.mark.parametrize("keep", [0, 7, [], [6], [-7], True, [1.0]])
def test_pick_layers_rejects(keep):
    with pytest.raises(ValueError, match="keep_layers"):
        pick_layers(keep, 6)


@pytest.mark.parametrize("keep, expected", [(2, True), ([0, 1], True), ([1, 0, -1], True), (1, False), ([1], False)])
def test_keeps_every_layer_of_tiny_bert(tiny_bert_dir, keep, expected):
    assert keeps_every_layer("tiny-bert", keep) is expected


def test_keeps_every_layer_reads_the_student_folder(tmp_path):
    path = layer_reduced_student("tiny-bert", [1], out_dir=tmp_path / "student")
    assert keeps_every_layer(path, 1) and not keeps_every_layer("tiny-bert", 1)


def manual_single_layer_embedding(folder, layer: int, text: str) -> np.ndarray:
    """Embeddings -> teacher layer ``layer`` only -> mean pool -> L2 norm, one unpadded text."""
    bert = AutoModel.from_pretrained(str(folder)).eval()
    ids = AutoTokenizer.from_pretrained(str(folder))(text, return_tensors="pt")
    with torch.no_grad():
        h = bert.embeddings(input_ids=ids["input_ids"], token_type_ids=ids["token_type_ids"])
        out = bert.encoder.layer[layer](h)
        h = out[0] if isinstance(out, tuple) else out  # (1, seq, hidden)
    return F.normalize(h.mean(dim=1), dim=-1)[0].numpy()


def test_tiny_bert_keep_one_layer_equals_manual_forward(tiny_bert_dir, tmp_path):
    path = layer_reduced_student("tiny-bert", [1], out_dir=tmp_path / "student")
    assert json.loads((path / "config.json").read_text())["num_hidden_layers"] == 1
    student = SentenceTransformer(str(path), device="cpu")
    assert len(student[0].auto_model.encoder.layer) == 1
    got = student.encode(TEXTS)
    manual = np.stack([manual_single_layer_embedding(tiny_bert_dir, 1, t) for t in TEXTS])
    np.testing.assert_allclose(got, manual, atol=1e-5)
    teacher = SentenceTransformer(str(tiny_bert_dir), device="cpu").encode(TEXTS)
    assert np.abs(got - teacher).max() > 1e-3  # really a different network
    meta = json.loads((path / "embedray.json").read_text())
    assert meta["training"]["kept_layers"] == [1] and meta["base_model"] == "tiny-bert"


def test_student_is_trainable_by_biencoder(tmp_path):
    path = layer_reduced_student("tiny-bert", 1, out_dir=tmp_path / "s")
    model = BiEncoder.from_config(ModelConfig(str(path)))
    sgd_steps(model)
    assert model.encode(TEXTS).shape == (len(TEXTS), 32)


def test_mpnet_student_keeps_chosen_teacher_layers(tiny_mpnet_dir, tmp_path):
    path = layer_reduced_student(tiny_mpnet_dir, [0, 2], out_dir=tmp_path / "s")
    teacher = SentenceTransformer(str(tiny_mpnet_dir), device="cpu")
    student = SentenceTransformer(str(path), device="cpu")
    t_layers, s_layers = teacher[0].auto_model.encoder.layer, student[0].auto_model.encoder.layer
    assert len(s_layers) == 2 and student[0].auto_model.config.num_hidden_layers == 2
    for s_idx, t_idx in enumerate([0, 2]):
        for (name, sp), (_, tp) in zip(s_layers[s_idx].named_parameters(),
                                       t_layers[t_idx].named_parameters(), strict=True):
            assert torch.equal(sp, tp), name
    emb = student.encode(TEXTS)
    assert emb.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_student_of_projected_model_keeps_dense(tmp_path):
    model = BiEncoder.from_config(ModelConfig("tiny-bert", projection_dim=8))
    teacher = model.save_sentence_transformer(tmp_path / "teacher")
    path = layer_reduced_student(teacher, 1, out_dir=tmp_path / "student")
    assert SentenceTransformer(str(path), device="cpu").encode(TEXTS).shape == (len(TEXTS), 8)
    assert model_size(path)["params"] < model_size(teacher)["params"]


def test_model_size_counts_every_weight(tiny_bert_dir, tmp_path):
    size = model_size("tiny-bert")
    st_params = sum(p.numel() for p in SentenceTransformer(str(tiny_bert_dir), device="cpu").parameters())
    assert size["params"] == st_params
    weights = sum(f.stat().st_size for f in tiny_bert_dir.rglob("*.safetensors"))
    assert size["bytes"] == weights
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        (tmp_path / "config.json").write_text("{}")
        model_size(tmp_path)


def test_max_seq_length_caps_the_copy_and_is_checked(tmp_path):
    from embedray.models.config import ModelConfig
    from embedray.models.encoder import BiEncoder
    path = layer_reduced_student("tiny-bert", [1], out_dir=tmp_path / "capped", max_seq_length=16)
    st = SentenceTransformer(str(path), device="cpu")
    assert st.max_seq_length == 16
    assert BiEncoder.from_config(ModelConfig(name_or_path=str(path))).max_seq_length == 16  # training reads it
    long = " ".join(["word"] * 200)
    assert np.allclose(st.encode([long]), st.encode([" ".join(["word"] * 14)]), atol=1e-5)  # cut at 16 tokens
    assert SentenceTransformer(str(layer_reduced_student("tiny-bert", [1], out_dir=tmp_path / "plain")),
                               device="cpu").max_seq_length != 16
    with pytest.raises(ValueError, match="max_seq_length must be a positive integer"):
        layer_reduced_student("tiny-bert", [1], out_dir=tmp_path / "bad", max_seq_length=0)
