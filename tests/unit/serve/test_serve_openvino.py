"""The OpenVINO export (``embedray export --format openvino``) and the ``openvino`` backend: the
export keeps an ONNX export beside it, matches torch in fp32 and rounds like bf16 in bf16,
``auto`` serves it on a CPU with bf16 units, and /info says what runs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from embedray.cli import main
from embedray.models.backends import (INT8_FILE, ONNX_FILE, OPENVINO_DIR, OPENVINO_FILE, auto_backend,
                                      load_encoder, load_sentence_model, openvino_path)
from embedray.models.precision import cpu_bf16_is_fast
from embedray.serve.config import ServeConfig

TEXTS = ["A fast compression tool.", "Debian packages", "x", "The quick brown fox jumps over the lazy dog " * 3]


@pytest.fixture(scope="module")
def ov_model(matryoshka_model, tmp_path_factory):
    """The Matryoshka tiny-bert with an int8 ONNX export and then an OpenVINO one."""
    from embedray.models.export import export_model

    out = tmp_path_factory.mktemp("served-ov") / "tiny-ov"
    export_model(matryoshka_model, out, quantize="int8")
    record = export_model(out, fmt="openvino")
    return out, record


def _embed(client, texts) -> np.ndarray:
    r = client.post("/v1/embeddings", json={"input": texts})
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def test_export_adds_openvino_and_keeps_the_onnx_files(ov_model):
    out, record = ov_model
    assert (out / OPENVINO_DIR / OPENVINO_FILE).is_file() and (out / OPENVINO_DIR / "openvino_model.bin").is_file()
    assert sorted(p.name for p in (out / "onnx").iterdir()) == sorted([ONNX_FILE, INT8_FILE])
    meta = json.loads((out / "embedray.json").read_text())
    assert set(meta["export"]) == {"onnx", "openvino"} and meta["export"]["openvino"] == record
    (file_record,) = record["files"].values()
    assert file_record["fp32_max_abs_diff"] < 1e-4 and file_record["bf16_min_cosine"] >= 0.99
    assert meta["matryoshka_dims"] == [32, 16, 8]


def test_openvino_matches_torch_in_fp32_and_rounds_in_bf16(ov_model):
    out, _ = ov_model
    expected = SentenceTransformer(str(out), device="cpu").encode(TEXTS)  # torch fp32, (n, 32)
    fp32 = load_sentence_model(out, "openvino", precision="fp32")
    assert type(fp32[0].auto_model).__name__ == "OvTransformer"
    assert fp32.embedray_precision == "fp32" and fp32.embedray_onnx_file == f"{OPENVINO_DIR}/{OPENVINO_FILE}"
    np.testing.assert_allclose(fp32.encode(TEXTS), expected, atol=1e-5)
    bf16 = load_encoder(out, backend="openvino", precision="bf16")
    got = bf16.encode(TEXTS)
    assert bf16.embedray_precision == "bf16"
    assert (got * expected).sum(axis=1).min() >= 0.99  # bf16 rounding, not a broken graph
    assert not np.allclose(got, expected, atol=1e-6)  # and it did compute in bf16


def test_auto_picks_openvino_where_the_cpu_has_bf16_units(ov_model, matryoshka_model):
    out, _ = ov_model
    want = "openvino" if cpu_bf16_is_fast() else "onnx"
    assert auto_backend(out)[0] == want
    assert auto_backend(out, precision="fp32") == ("torch", ONNX_FILE)
    assert auto_backend(matryoshka_model)[0] == "torch"


def test_serve_runs_the_openvino_backend_and_says_so(make_client, ov_model):
    out, _ = ov_model
    client = make_client(out, backend="openvino", precision="bf16")
    expected = SentenceTransformer(str(out), device="cpu").encode(TEXTS)
    assert (_embed(client, TEXTS) * expected).sum(axis=1).min() >= 0.99
    info = client.get("/info").json()
    assert (info["backend"], info["precision"]) == ("openvino", "bf16")
    assert info["onnx_file"] == f"{OPENVINO_DIR}/{OPENVINO_FILE}"


def test_openvino_requests_are_checked(ov_model, matryoshka_model, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"backend: .*openvino_model.xml.*embedray export .* --format openvino"):
        ServeConfig(str(matryoshka_model), backend="openvino")
    with pytest.raises(FileNotFoundError, match="--format openvino"):
        openvino_path(matryoshka_model)
    from embedray.models.export import export_model

    with pytest.raises(ValueError, match="--quantize int8 applies to --format onnx"):
        export_model(matryoshka_model, tmp_path / "x", fmt="openvino", quantize="int8")
    # A later ONNX export keeps the OpenVINO files.
    folder = tmp_path / "again"
    shutil.copytree(ov_model[0], folder)
    assert main(["export", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "onnx"
    assert (folder / OPENVINO_DIR / OPENVINO_FILE).is_file()
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == [ONNX_FILE]
    assert set(json.loads((folder / "embedray.json").read_text())["export"]) == {"onnx", "openvino"}
