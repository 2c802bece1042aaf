"""Quantized VectorIndex types: int8 (FAISS SQ8) and binary (Hamming + fp32 rescoring) vs flat."""
from __future__ import annotations

import json

import numpy as np
import pytest

from embedray.mining import index as index_mod
from embedray.mining.config import MiningConfig
from embedray.mining.index import DEFAULT_RESCORE_FACTOR, IndexConfig, IndexStore, VectorIndex, binarize

TYPES = ("flat", "int8", "binary")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered():
    """Clustered unit vectors, like real embeddings (uniform noise on the sphere is the worst
    case for sign bits), with queries drawn near the same centres."""
    rng = np.random.default_rng(1)
    centers = _unit(rng.standard_normal((64, 128)))
    x = _unit(centers[rng.integers(0, 64, 4000)] + 0.1 * rng.standard_normal((4000, 128)))
    q = _unit(centers[rng.integers(0, 64, 50)] + 0.1 * rng.standard_normal((50, 128)))
    return x, [f"doc-{i}" for i in range(len(x))], q


def _overlap(found: list[list[str]], want: list[list[str]]) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, want)]))


@pytest.mark.parametrize("index_type", TYPES)
def test_each_type_builds_searches_and_round_trips(clustered, tmp_path, index_type):
    x, ids, q = clustered
    index = VectorIndex.build(x, ids, index_type=index_type, version=2, use_gpu=False)
    assert index.index_type == index_type and len(index) == len(ids)
    scores, found = index.search(q, 10)
    assert scores.shape == (50, 10) and all(len(row) == len(set(row)) == 10 for row in found)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    path = index.save(tmp_path / index_type)
    files = {p.name for p in path.iterdir()}
    assert files == {"index.faiss", "ids.json", "meta.json"} | ({"vectors.npy"} if index_type == "binary" else set())
    meta = json.loads((path / "meta.json").read_text())
    assert meta["index_type"] == index_type and meta["format"] == (2 if index_type == "binary" else 1)
    loaded = VectorIndex.load(path)
    assert loaded.index_type == index_type and loaded.version == 2 and loaded.ids == ids
    again = loaded.search(q, 10)
    np.testing.assert_array_equal(again[0], scores)
    assert again[1] == found
    assert loaded.rescore_mapped == (index_type == "binary")  # fp32 rows read from disk on demand


def test_int8_top10_agrees_with_flat(clustered):
    x, ids, q = clustered
    _, want = VectorIndex.build(x, ids, use_gpu=False).search(q, 10)
    _, found = VectorIndex.build(x, ids, index_type="int8", use_gpu=False).search(q, 10)
    assert _overlap(found, want) >= 0.95
    rng = np.random.default_rng(0)  # uniform random unit vectors too: SQ8 does not depend on structure
    u, uq = _unit(rng.standard_normal((2000, 128))), _unit(rng.standard_normal((40, 128)))
    _, want = VectorIndex.build(u, ids[:2000], use_gpu=False).search(uq, 10)
    _, found = VectorIndex.build(u, ids[:2000], index_type="int8", use_gpu=False).search(uq, 10)
    assert _overlap(found, want) >= 0.95


def test_binary_rescoring_recovers_flat_top10_and_scores_are_exact(clustered):
    x, ids, q = clustered
    _, want = VectorIndex.build(x, ids, use_gpu=False).search(q, 10)
    hamming_only = VectorIndex.build(x, ids, index_type="binary", rescore_factor=1, use_gpu=False)
    default = VectorIndex.build(x, ids, index_type="binary", use_gpu=False)
    assert default.rescore_factor == DEFAULT_RESCORE_FACTOR == 10
    low, high = _overlap(hamming_only.search(q, 10)[1], want), _overlap(default.search(q, 10)[1], want)
    assert low < 0.6 and high >= 0.95, (low, high)  # the pool of 10x candidates is what recovers it
    scores, found = default.search(q, 10)
    row = {d: i for i, d in enumerate(ids)}
    exact = np.array([[q[i] @ x[row[d]] for d in hits] for i, hits in enumerate(found)])
    np.testing.assert_allclose(scores, exact, rtol=1e-5, atol=1e-5)


def test_binary_l2_metric_rescores_with_exact_distances(clustered):
    x, ids, q = clustered
    scores, found = VectorIndex.build(x, ids, metric="l2", index_type="binary", use_gpu=False).search(q, 5)
    _, want = VectorIndex.build(x, ids, metric="l2", use_gpu=False).search(q, 5)
    assert _overlap(found, want) >= 0.9
    row = {d: i for i, d in enumerate(ids)}
    dist = np.array([[((q[i] - x[row[d]]) ** 2).sum() for d in hits] for i, hits in enumerate(found)])
    np.testing.assert_allclose(scores, -dist, rtol=1e-4, atol=1e-4)


def test_memory_bytes_ratios(clustered):
    x, ids, _ = clustered
    n, d = x.shape
    flat, int8, binary = (VectorIndex.build(x, ids, index_type=t, use_gpu=False) for t in TYPES)
    assert flat.memory_bytes == flat.total_bytes == n * d * 4
    assert int8.memory_bytes == int8.total_bytes == n * d + 2 * d * 4  # codes + per-dim min/range
    assert flat.memory_bytes / int8.memory_bytes == pytest.approx(4, rel=0.01)
    assert binary.memory_bytes == n * d // 8 and flat.memory_bytes / binary.memory_bytes == 32
    assert binary.rescore_bytes == n * d * 4 and binary.total_bytes == binary.memory_bytes + n * d * 4
    assert flat.rescore_bytes == int8.rescore_bytes == 0 and not binary.rescore_mapped
    assert VectorIndex.build(x, ids, "HNSW16", use_gpu=False).memory_bytes > flat.memory_bytes  # + graph


def test_binary_with_a_dimension_not_a_multiple_of_8(clustered, tmp_path):
    x, ids, q = clustered
    x36, q36 = _unit(x[:500, :36]), _unit(q[:, :36])
    assert binarize(x36).shape == (500, 5)  # 36 bits + 4 zero pad bits
    index = VectorIndex.build(x36, ids[:500], index_type="binary", rescore_factor=100, use_gpu=False)
    assert index.memory_bytes == 500 * 5
    _, want = VectorIndex.build(x36, ids[:500], use_gpu=False).search(q36, 5)
    assert index.search(q36, 5)[1] == want  # a pool of 5 * 100 rescores all 500: exact
    assert VectorIndex.load(index.save(tmp_path / "b36")).search(q36, 5)[1] == index.search(q36, 5)[1]


def test_binary_k_at_or_above_count(clustered):
    x, ids, q = clustered
    index = VectorIndex.build(x[:7], ids[:7], index_type="binary", use_gpu=False)
    scores, found = index.search(q[:2], 50)
    assert scores.shape == (2, 7) and all(sorted(r) == sorted(ids[:7]) for r in found)


def test_binary_index_in_a_store_and_incomplete_folders(clustered, tmp_path):
    x, ids, q = clustered
    store = IndexStore(tmp_path / "store")
    store.publish(VectorIndex.build(x, ids, index_type="binary", use_gpu=False, version=1))
    store.publish(VectorIndex.build(x[:100], ids[:100], index_type="int8", use_gpu=False, version=2))
    latest = store.latest()
    assert latest.index_type == "int8" and len(latest) == 100
    v1 = VectorIndex.load(store.path(1))
    want = v1.search(q, 5)
    store.prune(keep=1)  # v1 removed from disk while v1 is loaded: its memory map stays readable
    assert not store.path(1).exists() and v1.search(q, 5)[1] == want[1]
    path = VectorIndex.build(x[:50], ids[:50], index_type="binary", use_gpu=False).save(tmp_path / "b")
    (path / "vectors.npy").unlink()
    with pytest.raises(FileNotFoundError, match="vectors.npy"):
        VectorIndex.load(path)


def test_index_saved_before_index_types_loads_as_flat(clustered, tmp_path):
    x, ids, q = clustered
    path = VectorIndex.build(x[:100], ids[:100], use_gpu=False).save(tmp_path / "old")
    meta = json.loads((path / "meta.json").read_text())
    for key in ("index_type", "rescore_factor"):
        del meta[key]
    (path / "meta.json").write_text(json.dumps(meta))
    assert VectorIndex.load(path).index_type == "flat"


def test_quantized_types_stay_on_cpu_when_a_gpu_is_seen(clustered, monkeypatch):
    x, ids, q = clustered
    real, moved = index_mod._faiss(), []

    class OneGpu:  # faiss with a pretend GPU that records what would move there
        def __getattr__(self, name):
            return getattr(real, name)

        def get_num_gpus(self):
            return 1

        def StandardGpuResources(self):  # noqa: N802 (faiss's name)
            return object()

        def index_cpu_to_gpu(self, res, device, index):
            moved.append(index)
            return real.clone_index(index)

    monkeypatch.setattr(index_mod, "_faiss", lambda: OneGpu())
    for index_type in ("int8", "binary"):
        index = VectorIndex.build(x, ids, index_type=index_type)  # use_gpu="auto"
        assert index._index is index._cpu_index
    assert moved == []
    VectorIndex.build(x, ids)  # flat still moves
    assert len(moved) == 1


def test_config_validation_errors():
    with pytest.raises(ValueError, match="index_type must be one of flat, int8, binary, got 'pq'"):
        IndexConfig(index_type="pq")
    with pytest.raises(ValueError, match="cannot be combined with factory 'IVF16,Flat'; leave factory at 'Flat'"):
        IndexConfig(factory="IVF16,Flat", index_type="int8")
    with pytest.raises(ValueError, match="binary indexes search on CPU"):
        IndexConfig(index_type="binary", use_gpu=True)
    with pytest.raises(ValueError, match="rescore_factor must be a positive integer"):
        IndexConfig(index_type="binary", rescore_factor=0)
    with pytest.raises(ValueError, match="index_type.*cannot be combined"):
        VectorIndex.build(np.eye(4, dtype=np.float32), list("abcd"), "HNSW16", index_type="binary")
    assert MiningConfig().index_type == "flat" and MiningConfig(index_type="binary").index_type == "binary"
    with pytest.raises(ValueError, match="field 'index_type': must be one of flat, int8, binary, got 'fp16'"):
        MiningConfig(index_type="fp16")
    with pytest.raises(ValueError, match="field 'index_type'.*set index_factory to 'Flat'"):
        MiningConfig(index_type="int8", index_factory="HNSW32")


def test_mining_builds_the_configured_index_type(clustered):
    from embedray.mining.pipeline import mine_negatives

    x, ids, q = clustered
    positives = {f"q{i}": {ids[i]} for i in range(len(q))}
    flat = mine_negatives(list(positives), q, positives, MiningConfig(k=20), doc_ids=ids, doc_emb=x)
    binary = mine_negatives(list(positives), q, positives, MiningConfig(k=20, index_type="binary"),
                            doc_ids=ids, doc_emb=x)
    assert flat.index.index_type == "flat" and binary.index.index_type == "binary"
    def docs(c, qid):
        return {d for d, _ in c.negatives[qid]}

    same = [len(docs(binary, qid) & docs(flat, qid)) / len(docs(flat, qid)) for qid in positives]
    assert np.mean(same) >= 0.9


def test_mine_cli_index_type_flag():
    import argparse

    from embedray.cli.mine import _configs
    from embedray.cli.mine import add_arguments as add_mine_arguments

    parser = add_mine_arguments(argparse.ArgumentParser())
    base = ["--model", "tiny-bert", "--data", "x", "--output", "o.jsonl"]
    assert _configs(vars(parser.parse_args(base)))[0].index_type == "flat"
    assert _configs(vars(parser.parse_args(base + ["--index-type", "int8"])))[0].index_type == "int8"
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--index-type", "fp16"])
