"""Real all-MiniLM-L6-v2: the bi-encoder reproduces sentence-transformers, students load."""
from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from embedray.models.bundled import resolve_model
from embedray.models.config import ModelConfig
from embedray.models.encoder import BiEncoder
from embedray.models.student import layer_reduced_student, model_size

from .conftest import TEXTS

pytestmark = pytest.mark.integration


def test_untrained_minilm_equals_sentence_transformer():
    model = BiEncoder.from_config(ModelConfig("minilm-l6"))
    assert (model.config.pooling, model.max_seq_length, model.embedding_dim) == ("mean", 256, 384)
    expected = SentenceTransformer(str(resolve_model("minilm-l6")), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(model.encode(TEXTS), expected, atol=1e-5)


def test_minilm_three_layer_student(tmp_path):
    path = layer_reduced_student("minilm-l6", 3, out_dir=tmp_path / "student")
    student = SentenceTransformer(str(path), device="cpu")
    assert len(student[0].auto_model.encoder.layer) == 3
    assert student[0].auto_model.config.num_hidden_layers == 3
    emb = student.encode(TEXTS)
    assert emb.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    teacher, small = model_size("minilm-l6"), model_size(path)
    # 3 of 6 layers of ~1.78M params each go away; the 11.7M embedding table stays
    assert 0.55 < small["params"] / teacher["params"] < 0.85
