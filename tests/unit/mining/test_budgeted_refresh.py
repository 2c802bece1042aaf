"""``refresh.reencode`` < 1: a refresh re-encodes the documents near the training queries and a
rotating slice of the rest with the new weights, and keeps the others' last embeddings."""
import numpy as np
import torch

from embedray.config import build_config
from embedray.mining.cache import doc_key, embedding_cache, live_model_key, text_hash
from embedray.pipeline.config import TrainJobConfig
from embedray.pipeline.refresh import NegativeRefresher
from embedray.training.data import load_training_data
from embedray.training.loop import make_encode_fn


def _refresher(beir, run_dir, reencode):
    job = build_config(TrainJobConfig, {
        "data": {"path": str(beir)}, "model": {"name_or_path": "tiny-bert"},
        "train": {"negatives": "pool", "num_negatives": 1},
        "mining": {"k": 3, "num_negatives": 2, "precision": "fp32"},
        "refresh": {"mode": "async", "denoise": False, "reencode": reencode},
        "cluster": {"storage_path": str(run_dir.parent), "run_name": run_dir.name}})
    return NegativeRefresher(job, load_training_data(job.data), run_dir, None)


def _moved(model, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in model.state_dict().items()}


def test_budgeted_refresh_reencodes_the_neighbourhood_and_a_rotating_slice(topic_beir, tmp_path):
    r = _refresher(topic_beir, tmp_path / "run", reencode=0.25)
    doc_ids = list(r.targets[0].data.corpus)
    texts = [r.targets[0].data.corpus[d].text for d in doc_ids]
    first = r.refresh(0, None)
    assert first["docs_reused"] is None and first["docs_encoded"] + first["docs_cached"] == len(doc_ids)
    before = r._last[""].doc_emb.copy()
    near = r._last[""].near
    assert 0 < len(near) < len(doc_ids)  # the queries' candidates and positives: part of the corpus

    covered = set()
    for version, seed in [(2, 1), (3, 2), (4, 3), (5, 4)]:
        weights = _moved(r.model, seed)
        tel = r.refresh(version * 3, weights)
        assert tel["version"] == version
        slice_ = {d for i, d in enumerate(doc_ids) if i % 4 == version % 4}
        fresh = near | slice_
        assert (tel["docs_encoded"], tel["docs_reused"]) == (len(fresh), len(doc_ids) - len(fresh))
        now = r._last[""].doc_emb
        want = np.asarray(make_encode_fn(r.model, r.job.model)(texts, "doc"), dtype=np.float32)
        rows = [i for i, d in enumerate(doc_ids) if d in fresh]
        kept = [i for i, d in enumerate(doc_ids) if d not in fresh]
        np.testing.assert_allclose(now[rows], want[rows], atol=1e-5)  # the new weights' embeddings
        np.testing.assert_array_equal(now[kept], before[kept])  # the last refresh's, untouched
        assert not np.allclose(now[kept], want[kept], atol=1e-3)  # ... and really stale
        # the mixed matrix never enters the cache under the new weights' key
        cache = embedding_cache(tmp_path / "run" / "cache", live_model_key(r.model))
        assert cache.missing([text_hash(t, doc_key(r.job.mining.doc_prompt)) for t in texts])
        before, near = now.copy(), r._last[""].near
        covered |= fresh
    # four refreshes at reencode 0.25: the rotating slices reached every document
    assert covered == set(doc_ids)


def test_full_refresh_is_the_default(topic_beir, tmp_path):
    r = _refresher(topic_beir, tmp_path / "run", reencode=1.0)
    r.refresh(0, None)
    tel = r.refresh(3, _moved(r.model, 1))
    assert tel["docs_reused"] is None and tel["docs_encoded"] == len(r.targets[0].data.corpus)
    assert r._last == {}  # nothing kept in memory
