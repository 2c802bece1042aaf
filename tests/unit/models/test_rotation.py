"""Principal-axes rotation of a model's embedding space (Matryoshka prefixes)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import modules as st_modules

from embedray.models.config import ModelConfig
from embedray.models.encoder import BiEncoder
from embedray.cli import main
from embedray.models.rotation import fit_texts, principal_rotation, rotate_model

from .conftest import TEXTS

FIT = [f"package {i}: tools for {w} and {v}" for i, (w, v) in enumerate(
    [("audio", "video"), ("json", "xml"), ("kernel", "modules"), ("fonts", "icons"), ("python", "perl"),
     ("mail", "news"), ("games", "puzzles"), ("maps", "gps"), ("backup", "sync"), ("ssh", "vpn")] * 3)]


def _module_types(path) -> list[str]:
    return [m["type"].rsplit(".", 1)[-1] for m in json.loads((path / "modules.json").read_text())]


def test_principal_rotation_is_orthogonal_and_sorted():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) * np.array([0.1, 3.0, 0.5, 2.0, 0.01, 1.0])  # (n, dim)
    rot, explained = principal_rotation(x)
    np.testing.assert_allclose(rot.T @ rot, np.eye(6), atol=1e-5)
    var = (x @ rot).var(axis=0)
    assert np.all(np.diff(var) <= 1e-9)  # highest-variance coordinates first
    assert np.argmax(np.abs(rot[:, 0])) == 1 and np.argmax(np.abs(rot[:, 1])) == 3
    assert explained[-1] == pytest.approx(1.0) and np.all(np.diff(explained) >= 0)
    again, _ = principal_rotation(x.copy())
    np.testing.assert_array_equal(rot, again)  # signs are fixed: deterministic
    assert np.all(rot[np.abs(rot).argmax(axis=0), np.arange(6)] > 0)


def test_principal_rotation_needs_two_rows():
    with pytest.raises(ValueError, match="n >= 2"):
        principal_rotation(np.ones((1, 4)))


def test_rotate_model_keeps_scores_and_orders_prefixes(tiny_bert_dir, tmp_path):
    out = tmp_path / "rotated"
    info = rotate_model(tiny_bert_dir, FIT, out)
    assert _module_types(out) == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert json.loads((out / "embedray.json").read_text())["rotation"] == info
    assert info["kind"] == "pca" and info["fit_texts"] == len(FIT)
    assert set(info["explained_variance"]) == {"4", "8", "16"}  # 1/8, 1/4, 1/2 of 32 dims
    assert not list(out.rglob("*.bin"))
    card = (out / "README.md").read_text()
    assert "**Rotation:** onto the principal axes of 30 training texts" in card
    assert "Dense({'in_features': 32, 'out_features': 32, 'bias': False" in card
    before = SentenceTransformer(str(tiny_bert_dir), device="cpu")
    after = SentenceTransformer(str(out), device="cpu")
    a, b = before.encode(TEXTS + FIT), after.encode(TEXTS + FIT)  # (n, 32)
    np.testing.assert_allclose(a @ a.T, b @ b.T, atol=1e-5)  # full-dimension scores unchanged
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    fit_a, fit_b = before.encode(FIT), after.encode(FIT)
    # The first 8 coordinates now hold more of the fit texts' variance than before.
    assert fit_b.var(axis=0)[:8].sum() > fit_a.var(axis=0)[:8].sum() * 1.2
    assert fit_b.var(axis=0)[:8].sum() / fit_b.var(axis=0).sum() == pytest.approx(
        info["explained_variance"]["8"], abs=1e-3)
    # embedray's own loader (training, serving) applies the rotation too.
    np.testing.assert_allclose(BiEncoder.from_config(ModelConfig(str(out))).encode(TEXTS), b[:len(TEXTS)],
                               atol=1e-5)


def test_rotation_folds_into_a_linear_dense(tmp_path):
    torch.manual_seed(0)
    model = BiEncoder.from_config(ModelConfig("tiny-bert", projection_dim=8))
    path = model.save_sentence_transformer(tmp_path / "projected")
    rotate_model(path, FIT, tmp_path / "rotated")
    assert _module_types(tmp_path / "rotated") == ["Transformer", "Pooling", "Dense", "Normalize"]
    card = (tmp_path / "rotated" / "README.md").read_text()
    assert card.count("**Rotation:**") == 1 and card.index("**Matryoshka dims:**") < card.index("**Rotation:**")
    a = SentenceTransformer(str(path), device="cpu").encode(TEXTS)
    b = SentenceTransformer(str(tmp_path / "rotated"), device="cpu").encode(TEXTS)
    assert b.shape == (len(TEXTS), 8) and np.abs(a - b).max() > 1e-3  # rotated ...
    np.testing.assert_allclose(a @ a.T, b @ b.T, atol=1e-5)  # ... with the same scores


def test_rotation_refuses_a_nonlinear_dense(tiny_bert_dir, tmp_path):
    st = SentenceTransformer(str(tiny_bert_dir), device="cpu")
    st.append(st_modules.Dense(32, 32, activation_function=torch.nn.Tanh()))
    st.save(str(tmp_path / "tanh"), create_model_card=False)
    with pytest.raises(ValueError, match="Tanh activation"):
        rotate_model(tmp_path / "tanh", FIT, tmp_path / "rotated")
    assert not (tmp_path / "rotated").exists()


def test_rotation_needs_texts(tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match="at least 2 texts"):
        rotate_model(tiny_bert_dir, ["one"], tmp_path / "rotated")


def test_fit_texts_dedups_and_samples_deterministically():
    pairs = [("q1", "d1"), ("q2", "d1"), ("q1", "d2")]
    assert fit_texts(pairs) == ["q1", "d1", "q2", "d2"]
    assert sorted(fit_texts(pairs, 3)) == sorted(fit_texts(pairs, 3)) and len(fit_texts(pairs, 3)) == 3
    assert fit_texts(iter(pairs), 2, seed=1) == fit_texts(pairs, 2, seed=1)


def test_rotate_command(topic_beir, tmp_path, capsys):
    assert main(["rotate", "tiny-bert", "--data", str(topic_beir), "--out", str(tmp_path / "r")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == str(tmp_path / "r") and out["fit_texts"] == 64  # 32 train queries + 32 docs
    assert json.loads((tmp_path / "r" / "embedray.json").read_text())["rotation"]["fit_texts"] == 64
    assert main(["rotate", "tiny-bert", "--data", str(topic_beir), "--split", "test",
                 "--out", str(tmp_path / "t")]) == 2
    assert "test split only measures" in capsys.readouterr().err and not (tmp_path / "t").exists()
