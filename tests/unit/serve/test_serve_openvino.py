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
    if cpu_bf16_is_fast():
        bf16 = load_encoder(out, backend="openvino", precision="bf16")
        got = bf16.encode(TEXTS)
        assert bf16.embedray_precision == "bf16"
        assert (got * expected).sum(axis=1).min() >= 0.99  # bf16 rounding, not a broken graph
        assert not np.allclose(got, expected, atol=1e-6)  # and it did compute in bf16
    else:  # OpenVINO ignores a bf16 hint without bf16 units: the loader says it runs fp32
        with pytest.warns(UserWarning, match="no bf16 units"):
            bf16 = load_encoder(out, backend="openvino", precision="bf16")
        assert bf16.embedray_precision == "fp32"
        np.testing.assert_allclose(bf16.encode(TEXTS), expected, atol=1e-5)


@pytest.mark.parametrize("pooling,include_prompt,in_graph", [
    ("mean", True, "mean"), ("cls", True, "cls"), ("max", True, None), ("mean", False, None)])
def test_the_graph_pools_what_sentence_transformers_would(ov_model, tmp_path, pooling, include_prompt, in_graph):
    """Mean and CLS pooling over all tokens run inside the OpenVINO graph, with the embeddings
    sentence-transformers computes (padded batches of different lengths, with a prompt); other
    poolings stay in sentence-transformers."""
    out, _ = ov_model
    folder = tmp_path / f"tiny-ov-{pooling}"
    shutil.copytree(out, folder)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"embedding_dimension": 32, "pooling_mode": pooling, "include_prompt": include_prompt}))
    prompt = "query: "
    expected = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, prompt=prompt, batch_size=3)
    model = load_sentence_model(folder, "openvino", precision="fp32")
    assert model.embedray_graph_pooling == in_graph
    assert (type(model[1]).__name__ == "_PooledInGraph") == (in_graph is not None)
    assert model.get_sentence_embedding_dimension() == 32
    got = model.encode(TEXTS, prompt=prompt, batch_size=3)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # Normalize still runs after it
    if in_graph is not None:
        assert model[0].auto_model.output.get_any_name() == "sentence_embedding"


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_static_shape_copies_give_the_dynamic_graphs_embeddings(ov_model, tmp_path, monkeypatch, pooling):
    """Batches whose shape earned a static-shape copy run it, padded to a multiple of 8 tokens,
    with the embeddings sentence-transformers computes (pooled in the graph, or hidden states cut
    back to the batch's length for a pooling outside it); at most ``static_shapes`` copies."""
    from embedray.models import backends

    out, _ = ov_model
    folder = tmp_path / f"tiny-ov-{pooling}"
    shutil.copytree(out, folder)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": pooling}))
    texts = TEXTS * 3
    expected = SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=4)

    model = load_sentence_model(folder, "openvino", precision="fp32", static_shapes=8)
    runner = model[0].auto_model
    model.encode(texts, batch_size=4)
    assert not runner._static  # a tiny model's few batches are not worth a compile
    monkeypatch.setattr(backends, "STATIC_AFTER_S", 0.0)  # now every shape is
    for _ in range(2):
        np.testing.assert_allclose(model.encode(texts, batch_size=4), expected, atol=1e-5)
    shapes = set(runner._static)
    assert shapes and all(rows <= 4 and length % backends.STATIC_LENGTH_MULTIPLE == 0 for rows, length in shapes)
    assert any(length > 8 for _, length in shapes)

    capped = load_sentence_model(folder, "openvino", precision="fp32", static_shapes=1)
    np.testing.assert_allclose(capped.encode(texts, batch_size=4), expected, atol=1e-5)
    assert len(capped[0].auto_model._static) == 1  # the most recent shape's copy

    assert load_sentence_model(folder, "openvino", precision="fp32")[0].auto_model.static_shapes == 0  # serving
    assert load_encoder(folder, backend="openvino")[0].auto_model.static_shapes == backends.ENCODE_STATIC_SHAPES
    with pytest.raises(ValueError, match="static_shapes must be >= 0"):
        load_sentence_model(folder, "openvino", static_shapes=-1)


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
    assert (info["backend"], info["precision"]) == ("openvino", "bf16" if cpu_bf16_is_fast() else "fp32")
    assert info["onnx_file"] == f"{OPENVINO_DIR}/{OPENVINO_FILE}"


def test_openvino_requests_are_checked(ov_model, matryoshka_model, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"backend: .*openvino_model.xml.*embedray export .* --format openvino"
                                         r".*not converted on load: --no-convert"):
        ServeConfig(str(matryoshka_model), backend="openvino", convert=False)
    with pytest.raises(FileNotFoundError, match="--format openvino"):
        openvino_path(matryoshka_model)
    from embedray.models.export import export_model

    with pytest.raises(ValueError, match="--format openvino --quantize int8 calibrates on your own texts"):
        export_model(matryoshka_model, tmp_path / "x", fmt="openvino", quantize="int8")
    # A later ONNX export keeps the OpenVINO files.
    folder = tmp_path / "again"
    shutil.copytree(ov_model[0], folder)
    assert main(["export", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "onnx"
    assert (folder / OPENVINO_DIR / OPENVINO_FILE).is_file()
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == [ONNX_FILE]
    assert set(json.loads((folder / "embedray.json").read_text())["export"]) == {"onnx", "openvino"}


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    """An empty ``$EMBEDRAY_CACHE`` for this test (bundled models are resolved before it is set)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMBEDRAY_CACHE", str(cache))
    return cache


@pytest.fixture
def export_calls(monkeypatch):
    """Counts :func:`embedray.models.export.export_model` calls (the conversions that ran)."""
    import embedray.models.export as export

    calls = []
    real = export.export_model

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(export, "export_model", counting)
    return calls


@pytest.mark.skipif(not cpu_bf16_is_fast(), reason="auto converts only on a CPU with bf16 units")
def test_auto_serves_a_folder_without_an_export_from_a_converted_copy(make_client, matryoshka_model, tmp_path,
                                                                     model_cache, export_calls):
    folder = tmp_path / "user-model"
    shutil.copytree(matryoshka_model, folder)
    cfg = ServeConfig(str(folder))
    assert (cfg.backend, cfg.model_dir) == ("openvino", str(folder))  # the user's folder, converted on load
    client = make_client(folder, precision="auto")
    info = client.get("/info").json()
    assert (info["backend"], info["precision"], info["converted"]) == ("openvino", "bf16", True)
    assert info["dimensions"] == [32, 16, 8] and info["metrics"] == {"ndcg@10": 0.4321}  # the card travels
    expected = SentenceTransformer(str(folder), device="cpu").encode(TEXTS)  # torch fp32
    assert (_embed(client, TEXTS) * expected).sum(axis=1).min() >= 0.99
    assert not (folder / OPENVINO_DIR).exists()  # the user's folder is left as it was
    (copy,) = [p for p in (model_cache / "openvino").iterdir() if p.is_dir()]
    assert (copy / OPENVINO_DIR / OPENVINO_FILE).is_file() and export_calls == [folder]
    # Once per content: a second replica finds the copy; a changed folder is converted again.
    from embedray.serve.embedder import EmbedderCore

    assert EmbedderCore(folder, backend="openvino").describe()["converted"] and len(export_calls) == 1
    (folder / "embedray.json").write_text(json.dumps({"matryoshka_dims": [32, 16], "metrics": {}}))
    EmbedderCore(folder, backend="openvino")
    assert len(export_calls) == 2 and len([p for p in (model_cache / "openvino").iterdir() if p.is_dir()]) == 2


def test_auto_keeps_torch_where_conversion_is_off_or_does_not_apply(matryoshka_model, tmp_path, model_cache):
    assert ServeConfig(str(matryoshka_model), convert=False).backend == "torch"
    assert ServeConfig(str(matryoshka_model), precision="fp32").backend == "torch"
    assert ServeConfig(str(matryoshka_model), precision="bf16").backend == "torch"
    assert ServeConfig(str(matryoshka_model), gpus_per_replica="1").backend == "torch"
    # A folder the exporter can't take (its weights are not safetensors) stays on torch under auto,
    # and --backend openvino says why it is not converted.
    folder = tmp_path / "bin-weights"
    shutil.copytree(matryoshka_model, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    assert ServeConfig(str(folder)).backend == "torch"
    with pytest.raises(ValueError, match="not converted on load: no safetensors weights"):
        ServeConfig(str(folder), backend="openvino")
    assert not (model_cache / "openvino").exists()


def test_concurrent_conversions_of_one_folder_convert_it_once(matryoshka_model, tmp_path, model_cache, export_calls):
    from concurrent.futures import ThreadPoolExecutor

    from embedray.models.export import converted_openvino, folder_digest

    with ThreadPoolExecutor(3) as pool:
        copies = list(pool.map(converted_openvino, [matryoshka_model] * 3))
    assert len(set(copies)) == 1 and len(export_calls) == 1
    assert copies[0].name.startswith(folder_digest(matryoshka_model))
