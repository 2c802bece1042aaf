"""VectorIndex (exact and approximate FAISS search over string ids) and IndexStore publishing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from embedray.mining import index as index_mod
from embedray.mining.index import IndexConfig, IndexStore, VectorIndex


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def corpus():
    rng = np.random.default_rng(0)
    x = _unit(rng, 2000, 32)
    ids = [f"doc-{i}" for i in range(len(x))]
    return x, ids, _unit(rng, 40, 32)


def _brute_force(x, q, k, ids):
    sims = q @ x.T  # (m, n)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), [[ids[j] for j in row] for row in order]


def test_flat_equals_brute_force(corpus):
    x, ids, q = corpus
    index = VectorIndex.build(x, ids)
    scores, found = index.search(q, 10)
    want_scores, want_ids = _brute_force(x, q, 10, ids)
    assert scores.shape == (40, 10)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert found == want_ids


def test_l2_metric_ranks_by_distance_higher_is_better(corpus):
    x, ids, q = corpus
    scores, found = VectorIndex.build(x, ids, metric="l2").search(q, 5)
    dist = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # (m, n)
    order = np.argsort(dist, axis=1)[:, :5]
    assert found == [[ids[j] for j in row] for row in order]
    np.testing.assert_allclose(scores, -np.take_along_axis(dist, order, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("factory,kwargs", [("IVF32,Flat", {"nprobe": 8}),
                                            ("HNSW16", {"hnsw_ef_search": 64})])
def test_approximate_indexes_have_high_recall(factory, kwargs):
    # clustered random data, like real embeddings (uniform noise in 32-d is IVF's worst case)
    rng = np.random.default_rng(1)
    centers = _unit(rng, 64, 32)
    x = centers[rng.integers(0, 64, 3000)] + 0.15 * rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = centers[rng.integers(0, 64, 50)] + 0.15 * rng.standard_normal((50, 32)).astype(np.float32)
    ids = [f"doc-{i}" for i in range(len(x))]
    _, want = _brute_force(x, q, 10, ids)
    _, found = VectorIndex.build(x, ids, factory, **kwargs).search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, want)])
    assert recall >= 0.9, f"{factory} recall@10 {recall:.3f}"


def test_ivf_nlist_larger_than_corpus_is_clamped_with_warning(corpus, caplog):
    x, ids, q = corpus
    index = VectorIndex.build(x[:100], ids[:100], "IVF256,Flat", nprobe=64)
    assert index.meta["factory"] == "IVF2,Flat" and index.meta["requested_factory"] == "IVF256,Flat"
    assert "only 100 vectors" in caplog.text
    _, found = index.search(q[:3], 5)
    assert all(len(row) == 5 for row in found)


def test_k_above_count_and_unfilled_slots(corpus):
    x, ids, q = corpus
    scores, found = VectorIndex.build(x[:4], ids[:4]).search(q[:2], 10)
    assert scores.shape == (2, 4) and all(sorted(r) == sorted(ids[:4]) for r in found)
    # IVF visiting 1 of 8 lists cannot fill 1000 slots: the rest are dropped, scores -inf at the end
    index = VectorIndex.build(x, ids, "IVF8,Flat", nprobe=1)
    scores, found = index.search(q[:2], 1000)
    for row_scores, row_ids in zip(scores, found):
        assert 0 < len(row_ids) < 1000 and len(set(row_ids)) == len(row_ids)
        assert np.isfinite(row_scores[:len(row_ids)]).all() and np.isneginf(row_scores[len(row_ids):]).all()


def test_bad_inputs_are_clear_errors(corpus):
    x, ids, q = corpus
    with pytest.raises(ValueError, match="ids"):
        VectorIndex.build(x[:3], ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        VectorIndex.build(x[:2], ["a", "a"])
    with pytest.raises(ValueError, match="factory"):
        VectorIndex.build(x, ids, "NotAnIndex")
    with pytest.raises(ValueError, match="training"):
        VectorIndex.build(x[:50], ids[:50], "IVF1,PQ8")  # PQ needs >= 256 training vectors
    with pytest.raises(ValueError, match=r"\(m, 32\)"):
        VectorIndex.build(x, ids).search(q[:, :16], 3)
    with pytest.raises(ValueError, match="metric"):
        IndexConfig(metric="cosine")
    if index_mod._faiss().get_num_gpus() == 0:
        with pytest.raises(RuntimeError, match="no GPU"):
            VectorIndex.build(x, ids, use_gpu=True)


def test_save_load_roundtrip(corpus, tmp_path):
    x, ids, q = corpus
    index = VectorIndex.build(x, ids, "IVF16,Flat", nprobe=4, version=3)
    path = index.save(tmp_path / "idx")
    assert sorted(p.name for p in path.iterdir()) == ["ids.json", "index.faiss", "meta.json"]
    meta = json.loads((path / "meta.json").read_text())
    assert {meta[k] for k in ("version", "dim", "count")} == {3, 32, 2000} and meta["created"]
    loaded = VectorIndex.load(path)
    assert loaded.version == 3 and loaded.ids == ids and loaded.meta["nprobe"] == 4
    a, b = index.search(q, 7), loaded.search(q, 7)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_save_never_overwrites_in_place(corpus, tmp_path):
    x, ids, _ = corpus
    VectorIndex.build(x[:10], ids[:10], version=1).save(tmp_path / "idx")
    with pytest.raises(FileExistsError, match="never overwritten"):
        VectorIndex.build(x[:20], ids[:20], version=2).save(tmp_path / "idx")
    assert VectorIndex.load(tmp_path / "idx").version == 1
    VectorIndex.build(x[:20], ids[:20], version=2).save(tmp_path / "idx", overwrite=True)
    assert len(VectorIndex.load(tmp_path / "idx")) == 20


def test_load_rejects_incomplete_folder(corpus, tmp_path):
    x, ids, _ = corpus
    path = VectorIndex.build(x[:10], ids[:10]).save(tmp_path / "idx")
    (path / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        VectorIndex.load(path)


def test_store_publishes_monotonic_versions(corpus, tmp_path):
    x, ids, q = corpus
    store = IndexStore(tmp_path / "store")
    assert store.latest() is None and store.next_version() == 1
    store.publish(VectorIndex.build(x[:100], ids[:100], version=store.next_version()))
    store.publish(VectorIndex.build(x[:200], ids[:200], version=store.next_version()))
    assert store.latest_version() == 2 and len(store.latest()) == 200
    with pytest.raises(ValueError, match="increase"):
        store.publish(VectorIndex.build(x[:50], ids[:50], version=2))
    store.publish(VectorIndex.build(x[:300], ids[:300]), version=3)
    assert store.prune(keep=2) == [1] and store.versions() == [2, 3]


@pytest.mark.parametrize("crash_at", ["write_index", "pointer"])
def test_crash_during_publish_leaves_previous_version(corpus, tmp_path, monkeypatch, crash_at):
    x, ids, _ = corpus
    store = IndexStore(tmp_path / "store")
    store.publish(VectorIndex.build(x[:100], ids[:100], version=1))
    new = VectorIndex.build(x[:500], ids[:500], version=2)

    def boom(*a, **k):
        raise OSError("simulated crash")

    if crash_at == "write_index":  # dies while writing the new version's files
        monkeypatch.setattr(index_mod._faiss(), "write_index", boom)
    else:  # v2/ is complete on disk, but the process dies before LATEST moves
        monkeypatch.setattr(index_mod.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        store.publish(new)
    monkeypatch.undo()
    assert store.latest_version() == 1 and len(store.latest()) == 100
    # a complete but unpublished v2/ (pointer crash) is never reused: the next version skips it
    assert store.next_version() == (3 if crash_at == "pointer" else 2)
    store.publish(VectorIndex.build(x[:500], ids[:500]), version=store.next_version())
    assert len(store.latest()) == 500


class FakeGpuFaiss:
    """faiss with a pretend GPU: 'moving' an index clones it (HNSW refuses, as in faiss-gpu)."""

    def __init__(self, real):
        self._real, self.moved, self.devices = real, [], []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def get_num_gpus(self):
        return 1

    def StandardGpuResources(self):  # noqa: N802 (faiss's name)
        return object()

    def index_cpu_to_gpu(self, res, device, index):
        self.devices.append(device)
        if "HNSW" in type(index).__name__:
            raise RuntimeError("HNSW has no GPU implementation")
        clone = self._real.clone_index(index)
        self.moved.append(clone)
        return clone

    def index_gpu_to_cpu(self, index):
        assert index in self.moved
        return self._real.clone_index(index)

    def GpuParameterSpace(self):  # noqa: N802
        return self._real.ParameterSpace()


def test_gpu_path_is_used_when_a_gpu_is_seen(corpus, tmp_path, monkeypatch):
    x, ids, q = corpus
    fake = FakeGpuFaiss(index_mod._faiss())
    monkeypatch.setattr(index_mod, "_faiss", lambda: fake)
    ivf = VectorIndex.build(x, ids, "IVF16,Flat", nprobe=16)
    assert ivf._index is not ivf._cpu_index and ivf._index in fake.moved  # searched "on GPU"
    assert len(fake.moved) == 2  # once to train, once to search
    want = VectorIndex.build(x, ids, "IVF16,Flat", nprobe=16, use_gpu=False)
    assert ivf.search(q, 5)[1] == want.search(q, 5)[1]
    hnsw = VectorIndex.build(x, ids, "HNSW16")  # auto: falls back to CPU with a warning
    assert hnsw._index is hnsw._cpu_index
    with pytest.raises(RuntimeError, match="HNSW"):
        VectorIndex.build(x, ids, "HNSW16", use_gpu=True)
    cpu = VectorIndex.build(x, ids, use_gpu=False)
    assert cpu._index is cpu._cpu_index
    assert VectorIndex.load(ivf.save(tmp_path / "g"), use_gpu=False).search(q, 5)[1] == want.search(q, 5)[1]


def test_an_index_goes_to_torchs_current_gpu(corpus, monkeypatch):
    # In a Ray Train worker the node's GPUs are all visible; the worker's own is torch's current one.
    import torch

    x, ids, _ = corpus
    fake = FakeGpuFaiss(index_mod._faiss())
    monkeypatch.setattr(index_mod, "_faiss", lambda: fake)
    VectorIndex.build(x, ids)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    VectorIndex.build(x, ids)
    assert fake.devices == [0, 2]


def test_a_search_deeper_than_faiss_gpu_selects_runs_on_the_cpu_index(corpus, monkeypatch, caplog):
    # faiss-gpu raises for k above its selection limit (2048); the CPU index, with the same nprobe, answers.
    x, ids, q = corpus
    fake = FakeGpuFaiss(index_mod._faiss())
    monkeypatch.setattr(index_mod, "_faiss", lambda: fake)
    monkeypatch.setattr(index_mod, "GPU_MAX_K", 8)
    ivf = VectorIndex.build(x, ids, "IVF16,Flat", nprobe=3)
    want = VectorIndex.build(x, ids, "IVF16,Flat", nprobe=3, use_gpu=False)
    on_gpu, real = [], ivf._index.search

    def gpu_search(queries, k):
        if k > 8:
            raise RuntimeError("Error: 'k > 0 && k <= GPU_MAX_SELECTION_K' failed")
        on_gpu.append(k)
        return real(queries, k)

    ivf._index.search = gpu_search
    assert ivf.search(q, 8)[1] == want.search(q, 8)[1] and on_gpu == [8]
    with caplog.at_level("INFO", logger=index_mod.__name__):
        for _ in range(2):
            got, exp = ivf.search(q, 50), want.search(q, 50)
            assert got[1] == exp[1] and np.array_equal(got[0], exp[0])
    assert on_gpu == [8]
    assert sum("deeper than faiss-gpu" in r.message for r in caplog.records) == 1
    # the CPU index searches with the configured nprobe, not faiss's default of 1
    assert ivf._cpu_index.nprobe == 3
