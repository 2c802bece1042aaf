"""The statically quantized int8 OpenVINO export (``embedray export --format openvino --quantize
int8 --calibration DATA``): NNCF's int8 graph calibrated on the user's corpus, checked by
retrieval on held-out judgements, served by ``auto`` only where that check passed."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

import embedray.eval.export_check as export_check
from embedray.cli import main
from embedray.eval.export_check import check_int8_quality
from embedray.models.backends import (INT8_MIN_NDCG_RATIO, ONNX_FILE, OPENVINO_DIR, OPENVINO_FILE,
                                      OPENVINO_INT8_FILE, auto_backend, load_encoder, openvino_int8_passed,
                                      openvino_path)
from embedray.models.export import calibration_texts, export_model
from embedray.serve.config import ServeConfig

TEXTS = ["A fast compression tool.", "Debian packages", "x", "The quick brown fox jumps over the lazy dog " * 3]
INT8_KEY = f"{OPENVINO_DIR}/{OPENVINO_INT8_FILE}"


@pytest.fixture(scope="module")
def int8_model(matryoshka_model, topic_beir, tmp_path_factory):
    """The Matryoshka tiny-bert exported to OpenVINO with an int8 file calibrated on topic_beir."""
    out = tmp_path_factory.mktemp("ov-int8") / "tiny-int8"
    record = export_model(matryoshka_model, out, fmt="openvino", quantize="int8", calibration=topic_beir,
                          calibration_samples=40, quality_check=check_int8_quality)
    return out, record


def _op_types(path) -> set[str]:
    import openvino as ov

    return {op.get_type_name() for op in ov.Core().read_model(str(path)).get_ops()}


def test_export_writes_both_files_and_records_the_checks(int8_model, topic_beir):
    out, record = int8_model
    files = sorted(p.name for p in (out / OPENVINO_DIR).iterdir())
    assert files == ["openvino_model.bin", "openvino_model.xml", "openvino_model_qint8_quantized.bin",
                     "openvino_model_qint8_quantized.xml"]
    assert json.loads((out / "embedray.json").read_text())["export"]["openvino"] == record
    int8 = record["files"][INT8_KEY]
    assert int8["precision"] == "int8" and int8["calibration"] == {"data": str(topic_beir), "texts": 40}
    assert int8["size_mb"] < record["files"][f"{OPENVINO_DIR}/{OPENVINO_FILE}"]["size_mb"]
    assert int8["min_cosine"] >= 0.95  # rounded, not broken
    quality = int8["quality"]
    # topic_beir has dev judgements: the check scores them, never train.
    assert (quality["split"], quality["queries"], quality["min_ratio"]) == ("dev", 8, INT8_MIN_NDCG_RATIO)
    assert quality["ratio"] == pytest.approx(quality["ndcg@10"] / quality["fp32_ndcg@10"], abs=1e-3)
    assert quality["passed"] == (quality["ratio"] >= INT8_MIN_NDCG_RATIO)


def test_the_int8_graph_is_quantized_and_the_fp32_one_is_not(int8_model):
    out, _ = int8_model
    assert "FakeQuantize" in _op_types(out / OPENVINO_DIR / OPENVINO_INT8_FILE)
    assert "FakeQuantize" not in _op_types(out / OPENVINO_DIR / OPENVINO_FILE)


def test_int8_embeddings_round_the_torch_ones(int8_model):
    out, _ = int8_model
    expected = SentenceTransformer(str(out), device="cpu").encode(TEXTS)  # torch fp32, (n, 32)
    model = load_encoder(out, backend="openvino", onnx_file=OPENVINO_INT8_FILE)
    assert model.embedray_precision == "int8" and model.embedray_onnx_file == INT8_KEY
    got = model.encode(TEXTS)
    assert got.shape == expected.shape
    assert (got * expected).sum(axis=1).min() >= 0.95
    assert not np.allclose(got, expected, atol=1e-4)  # it did run the int8 graph


def test_the_quality_check_matches_embedray_eval(int8_model, topic_beir, tmp_path):
    out, record = int8_model
    report = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out), "--data", str(topic_beir), "--split", "dev", "--backend", "openvino",
                 "--onnx-file", OPENVINO_INT8_FILE, "--no-progress", "--output", str(report)]) == 0
    (result,) = json.loads(report.read_text())["results"].values()
    assert result["settings"]["precision"] == "int8"
    assert result["metrics"]["ndcg@10"] == pytest.approx(record["files"][INT8_KEY]["quality"]["ndcg@10"], abs=1e-4)


def _with_quality(out, folder, quality):
    """A copy of the exported folder whose int8 file records ``quality`` as its check."""
    shutil.copytree(out, folder)
    meta = json.loads((folder / "embedray.json").read_text())
    meta["export"]["openvino"]["files"][INT8_KEY]["quality"] = quality
    (folder / "embedray.json").write_text(json.dumps(meta))
    return folder


def test_auto_serves_int8_only_where_its_check_passed(int8_model, tmp_path, make_client):
    out, record = int8_model
    measured = record["files"][INT8_KEY]["quality"]
    # The tiny random model's own verdict may go either way: each case gets a record that says it.
    passed = _with_quality(out, tmp_path / "passed", {**measured, "passed": True})
    assert openvino_int8_passed(passed)
    assert auto_backend(passed) == ("openvino", OPENVINO_INT8_FILE)
    assert auto_backend(passed, precision="fp32") == ("torch", ONNX_FILE)  # a forced precision keeps torch
    cfg = ServeConfig(str(passed))
    assert (cfg.backend, cfg.onnx_file) == ("openvino", OPENVINO_INT8_FILE)
    info = make_client(passed, precision="auto", backend="auto").get("/info").json()
    assert (info["backend"], info["precision"], info["onnx_file"]) == ("openvino", "int8", INT8_KEY)
    # A failed check, or none recorded: auto falls back to what it served before.
    for quality in ({**measured, "passed": False}, None):
        folder = _with_quality(out, tmp_path / f"q-{quality is None}", quality)
        assert not openvino_int8_passed(folder)
        assert auto_backend(folder)[1] != OPENVINO_INT8_FILE
        assert ServeConfig(str(folder)).onnx_file != OPENVINO_INT8_FILE


def test_a_check_below_the_gate_fails_and_keeps_the_file(matryoshka_model, topic_beir, tmp_path, monkeypatch,
                                                         caplog):
    monkeypatch.setattr(export_check, "INT8_MIN_NDCG_RATIO", 1.5)  # no int8 model reaches 150% of fp32
    out = tmp_path / "strict"
    record = export_model(matryoshka_model, out, fmt="openvino", quantize="int8", calibration=topic_beir,
                          check_split="test", calibration_samples=8, quality_check=check_int8_quality)
    quality = record["files"][INT8_KEY]["quality"]
    assert quality["split"] == "test" and quality["passed"] is False and quality["min_ratio"] == 1.5
    assert (out / OPENVINO_DIR / OPENVINO_INT8_FILE).is_file()
    assert not openvino_int8_passed(out) and auto_backend(out)[1] != OPENVINO_INT8_FILE
    assert "backend auto does not serve it" in caplog.text


def test_a_corpus_file_calibrates_without_a_check(matryoshka_model, topic_beir, tmp_path, capsys, caplog):
    out = tmp_path / "corpus-only"
    assert main(["export", str(matryoshka_model), "--out", str(out), "--format", "openvino", "--quantize", "int8",
                 "--calibration", str(topic_beir / "corpus.jsonl"), "--calibration-samples", "8"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"] == str(out) and printed["files"][INT8_KEY]["quality"] is None
    assert "no quality check" in caplog.text
    assert not openvino_int8_passed(out)
    # Served on request: the file is there, only auto leaves it alone.
    assert ServeConfig(str(out), backend="openvino", onnx_file=OPENVINO_INT8_FILE).onnx_file == OPENVINO_INT8_FILE


def test_without_a_check_function_nothing_is_scored(matryoshka_model, topic_beir, tmp_path, caplog):
    record = export_model(matryoshka_model, tmp_path / "unchecked", fmt="openvino", quantize="int8",
                          calibration=topic_beir, calibration_samples=8)
    assert record["files"][INT8_KEY]["quality"] is None and "none was asked for" in caplog.text
    assert not openvino_int8_passed(tmp_path / "unchecked")


def test_bad_requests_say_what_to_pass(matryoshka_model, topic_beir, tmp_path):
    with pytest.raises(ValueError, match="pass --calibration DATA"):
        export_model(matryoshka_model, tmp_path / "x", fmt="openvino", quantize="int8")
    with pytest.raises(ValueError, match="--calibration applies to --format openvino --quantize int8"):
        export_model(matryoshka_model, tmp_path / "x", quantize="int8", calibration=topic_beir)
    with pytest.raises(ValueError, match="--check-split train: .*held-out"):
        export_model(matryoshka_model, tmp_path / "x", fmt="openvino", quantize="int8", calibration=topic_beir,
                     check_split="train")
    with pytest.raises(ValueError, match=r"--check-split val: .*val.tsv does not exist"):
        export_model(matryoshka_model, tmp_path / "x", fmt="openvino", quantize="int8", calibration=topic_beir,
                     check_split="val")
    with pytest.raises(ValueError, match="expected a BEIR folder or a corpus .jsonl / .parquet"):
        export_model(matryoshka_model, tmp_path / "x", fmt="openvino", quantize="int8",
                     calibration=topic_beir / "qrels" / "dev.tsv")
    with pytest.raises(ValueError, match="no such file or folder"):
        export_model(matryoshka_model, tmp_path / "x", fmt="openvino", quantize="int8", calibration=tmp_path / "nope")
    assert not (tmp_path / "x").exists()
    # A folder with only the bf16 export: the int8 file is named with the command that writes it.
    with pytest.raises(FileNotFoundError, match="--format openvino --quantize int8 --calibration DATA"):
        openvino_path(matryoshka_model, OPENVINO_INT8_FILE)


def test_calibration_texts_are_a_seeded_bounded_sample_in_corpus_order(tmp_path):
    from embedray.data.beir import Document, write_beir

    docs = [Document(f"d{i}", f"text {i}", f"title {i}") for i in range(50)]
    beir = write_beir(tmp_path / "b", docs, [("q", "query")], {"test": {"q": {"d0": 1}}})
    first = calibration_texts(beir / "corpus.jsonl", 10)
    assert len(first) == 10 == len(set(first))
    assert first == calibration_texts(beir / "corpus.jsonl", 10)  # seeded
    assert first != calibration_texts(beir / "corpus.jsonl", 10, seed=1)
    order = [int(t.split()[-1]) for t in first]
    assert order == sorted(order) and order[-1] >= 10  # drawn from the whole corpus, kept in order
    assert first[0].startswith("title ")  # title + text, as the model encodes documents
    assert len(calibration_texts(beir / "corpus.jsonl", 500)) == 50
