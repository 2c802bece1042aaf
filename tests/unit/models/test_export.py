"""ONNX export (fp32 and int8) of a sentence-transformers folder, and the onnx backend loading it."""
from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from embedray.cli import main
from embedray.models.backends import (INT8_FILE, ONNX_FILE, MissingExtraError, load_sentence_model, onnx_path,
                                      onnx_precision)
from embedray.models.export import export_model
from embedray.models.rotation import rotate_model

from .conftest import TEXTS

FIT = [f"package {i}: tools for {w}" for i, w in enumerate(
    ["audio", "json", "kernel", "fonts", "python", "mail", "games", "maps", "backup", "ssh"] * 2)]


@pytest.fixture(scope="module")
def rotated(tiny_bert_dir, tmp_path_factory):
    """tiny-bert with Matryoshka dims in embedray.json and a rotation Dense before Normalize."""
    base = tmp_path_factory.mktemp("src") / "tiny"
    shutil.copytree(tiny_bert_dir, base)
    (base / "embedray.json").write_text(json.dumps({"matryoshka_dims": [32, 16, 8]}))
    out = tmp_path_factory.mktemp("rot") / "tiny-rotated"
    rotate_model(base, FIT, out)
    return out


@pytest.fixture(scope="module")
def exported(rotated, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    record = export_model(rotated, out, quantize="int8")
    return out, record


def _types(model) -> list[str]:
    return [type(m).__name__ for m in model]


def test_export_writes_sentence_transformers_layout(exported):
    out, record = exported
    assert (out / "onnx" / ONNX_FILE).is_file() and (out / "onnx" / INT8_FILE).is_file()
    assert (out / "model.safetensors").is_file() and (out / "2_Dense").is_dir()  # the torch folder is kept
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    meta = json.loads((out / "embedray.json").read_text())
    assert meta["matryoshka_dims"] == [32, 16, 8] and meta["rotation"]["kind"] == "pca"
    assert meta["export"] == {"onnx": record}
    assert {n: f["precision"] for n, f in record["files"].items()} == {ONNX_FILE: "fp32", INT8_FILE: "int8"}
    assert record["files"][INT8_FILE]["size_mb"] < record["files"][ONNX_FILE]["size_mb"]


def test_onnx_embeddings_match_torch_and_keep_the_rotation(exported, rotated, tiny_bert_dir):
    out, _ = exported
    torch_model = SentenceTransformer(str(rotated), device="cpu")
    expected = torch_model.encode(TEXTS, normalize_embeddings=True)  # (n, 32)
    fp32 = load_sentence_model(out, "onnx", ONNX_FILE)
    assert _types(fp32) == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert type(fp32[0].auto_model).__name__ == "OrtTransformer"
    assert fp32.embedray_precision == "fp32" and fp32.embedray_onnx_file == ONNX_FILE
    np.testing.assert_allclose(fp32.encode(TEXTS), expected, atol=1e-5)
    int8 = load_sentence_model(out, "onnx", INT8_FILE)
    assert int8.embedray_precision == "int8"
    assert (int8.encode(TEXTS, normalize_embeddings=True) * expected).sum(axis=1).min() >= 0.99
    unrotated = SentenceTransformer(str(tiny_bert_dir), device="cpu").encode(TEXTS)
    assert not np.allclose(fp32.encode(TEXTS), unrotated, atol=1e-3)  # the Dense rotation ran


def test_openvino_pools_in_the_graph_and_keeps_the_rotation(exported, rotated, tiny_bert_dir, tmp_path):
    """The OpenVINO graph does the mean pooling; the rotation Dense and Normalize still run after it."""
    pytest.importorskip("openvino")
    out = tmp_path / "tiny-ov"
    shutil.copytree(exported[0], out)
    export_model(out, fmt="openvino")
    expected = SentenceTransformer(str(rotated), device="cpu").encode(TEXTS)  # (n, 32)
    model = load_sentence_model(out, "openvino", precision="fp32")
    assert _types(model) == ["Transformer", "_PooledInGraph", "Dense", "Normalize"]
    assert model.embedray_graph_pooling == "mean"
    np.testing.assert_allclose(model.encode(TEXTS), expected, atol=1e-5)
    unrotated = SentenceTransformer(str(tiny_bert_dir), device="cpu").encode(TEXTS)
    assert not np.allclose(model.encode(TEXTS), unrotated, atol=1e-3)  # the Dense rotation ran


def test_export_in_place_replaces_the_old_export(exported, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(exported[0], folder)
    record = export_model(folder)  # fp32 only, into the folder itself
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == [ONNX_FILE]
    assert list(record["files"]) == [ONNX_FILE]
    assert json.loads((folder / "embedray.json").read_text())["rotation"]["kind"] == "pca"


def test_export_refuses_bad_requests(rotated):
    with pytest.raises(ValueError, match="format .tflite. is not supported; choose one of onnx, openvino"):
        export_model(rotated, fmt="tflite")
    with pytest.raises(ValueError, match="quantize 'int4'"):
        export_model(rotated, quantize="int4")
    with pytest.raises(ValueError, match="bundled model.*--out"):
        export_model("tiny-bert")


def test_cli_rejects_an_unknown_format(rotated, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(rotated), "--format", "tflite"])
    assert exc.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


def test_cli_export_prints_the_record(rotated, tmp_path, capsys):
    assert main(["export", str(rotated), "--out", str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"] == str(tmp_path / "out") and list(printed["files"]) == [ONNX_FILE]


def test_missing_onnxruntime_says_how_to_install(rotated, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"onnxruntime.*pip install .*\.\[onnx\]"):
        load_sentence_model(rotated, "onnx")
    assert main(["export", str(rotated), "--out", "unused"]) == 2
    assert "embedray: error: the onnx backend needs onnxruntime" in capsys.readouterr().err


def test_a_missing_onnx_file_names_the_export_command(exported, rotated):
    with pytest.raises(FileNotFoundError, match=r"it has no ONNX export.*embedray export .* --format onnx"):
        onnx_path(rotated, ONNX_FILE)
    with pytest.raises(FileNotFoundError, match=rf"it has {ONNX_FILE}, {INT8_FILE}"):
        onnx_path(exported[0], "model_O4.onnx")
    with pytest.raises(ValueError, match="'tensorrt' is not a backend"):
        load_sentence_model(rotated, "tensorrt")


def test_precision_of_file_names():
    assert onnx_precision(INT8_FILE) == "int8" and onnx_precision("model_quint8_avx2.onnx") == "int8"
    assert onnx_precision(ONNX_FILE) == "fp32" and onnx_precision("model_O4.onnx") == "fp16"


def test_eval_loads_the_onnx_backend(exported):
    from embedray.models.backends import load_encoder

    model = load_encoder(exported[0], backend="onnx", onnx_file=INT8_FILE)
    assert model.embedray_precision == "int8" and model.encode(["x"]).shape == (1, 32)
    with pytest.raises(ValueError, match="bf16 applies to the torch and openvino backends"):
        load_encoder(exported[0], precision="bf16", backend="onnx")


def test_eval_command_runs_the_int8_file(exported, topic_beir, tmp_path):
    report = tmp_path / "eval.json"
    assert main(["eval", "--model", str(exported[0]), "--data", str(topic_beir), "--backend", "onnx",
                 "--onnx-file", INT8_FILE, "--no-progress", "--output", str(report)]) == 0
    (result,) = json.loads(report.read_text())["results"].values()
    assert result["settings"]["backend"] == "onnx" and result["settings"]["precision"] == "int8"
    assert 0.0 <= result["metrics"]["ndcg@10"] <= 1.0
