"""The offline mining pipeline on tiny-bert: encode → index → search → select (→ rescore)."""
from __future__ import annotations

import numpy as np
import pytest

from embedray.mining.config import CrossEncoderConfig, MiningConfig
from embedray.mining.index import VectorIndex
from embedray.mining.pipeline import mine, mine_negatives, st_encode_fn


def _mine(data, model, **kw):
    cfg = MiningConfig(**{"k": 20, "num_negatives": 3, **kw.pop("cfg", {})})
    return mine(data.corpus, data.queries, data.qrels, model, cfg, **kw)


def test_pool_excludes_positives_and_reports_phases(tiny_data, tiny_st):
    res = _mine(tiny_data, tiny_st)
    pool = res.pool
    assert set(pool.negatives) == set(tiny_data.qrels)
    for qid, negs in pool.negatives.items():
        ids = [d for d, _ in negs]
        assert len(ids) == 3 and len(set(ids)) == 3
        assert not set(ids) & set(tiny_data.qrels[qid])
        assert all(s is None for _, s in negs)  # no cross-encoder, no teacher scores
    assert set(res.timings) >= {"encode_s", "index_s", "search_s", "select_s", "rescore_s", "total_s"}
    assert res.counts["queries_mined"] == 8 and res.counts["negatives_kept"] == 24
    assert res.counts["negatives_removed"] == 0 and res.counts["docs_encoded"] == 32


def test_negatives_are_the_exact_top_k(tiny_data, tiny_st):
    """With top sampling the pool is the brute-force top-3 non-positive documents."""
    res = _mine(tiny_data, tiny_st)
    ids = list(tiny_data.corpus)
    enc = st_encode_fn(tiny_st)
    d = enc([tiny_data.corpus[i].text_for_model for i in ids], "doc")
    for qid, negs in res.pool.negatives.items():
        q = enc([tiny_data.queries[qid]], "query")[0]
        sims = d @ q
        ranked = [ids[i] for i in np.argsort(-sims, kind="stable") if ids[i] not in tiny_data.qrels[qid]]
        got = [x for x, _ in negs]
        # ties in float32 may swap neighbours; compare as sets of the top-3 scores
        assert sorted(sims[[ids.index(x) for x in got]]) == pytest.approx(
            sorted(sims[[ids.index(x) for x in ranked[:3]]]), abs=1e-6)


def test_same_seed_same_fingerprint_different_seed_differs(tiny_data, tiny_bert_dir):
    """Determinism: same seed → identical mined negatives (hash); another seed → another sample."""
    cfg = {"sampling_strategy": "random", "seed": 7}
    a = _mine(tiny_data, str(tiny_bert_dir), cfg=cfg).pool  # each run loads the model afresh
    b = _mine(tiny_data, str(tiny_bert_dir), cfg=cfg).pool
    c = _mine(tiny_data, str(tiny_bert_dir), cfg={**cfg, "seed": 8}).pool
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


def test_cache_second_run_encodes_nothing_and_gives_same_pool(tiny_data, tiny_bert_dir, tmp_path):
    first = _mine(tiny_data, str(tiny_bert_dir), cache_dir=tmp_path)
    second = _mine(tiny_data, str(tiny_bert_dir), cache_dir=tmp_path)
    assert first.counts["docs_encoded"] == 32 and first.counts["queries_encoded"] == 8
    assert second.counts["docs_encoded"] == 0 and second.counts["queries_encoded"] == 0
    assert second.counts["docs_cached"] == 32
    assert first.pool.fingerprint() == second.pool.fingerprint()


def test_mine_negatives_from_a_prebuilt_index(tiny_data, tiny_st):
    enc = st_encode_fn(tiny_st)
    ids = list(tiny_data.corpus)
    d = enc([tiny_data.corpus[i].text_for_model for i in ids], "doc")
    qids = list(tiny_data.queries)
    q = enc([tiny_data.queries[i] for i in qids], "query")
    index = VectorIndex.build(d, ids)
    cfg = MiningConfig(k=20, num_negatives=2, relative_margin=0.0)
    from_index = mine_negatives(qids, q, tiny_data.qrels, cfg, index=index)
    from_emb = mine_negatives(qids, q, tiny_data.qrels, cfg, doc_ids=ids, doc_emb=d)
    assert from_index.negatives.keys() == from_emb.negatives.keys()
    assert all(len(negs) == 2 for negs in from_emb.negatives.values())  # num_negatives: no cross-encoder here
    for qid in qids:
        assert [x for x, _ in from_index.negatives[qid]] == [x for x, _ in from_emb.negatives[qid]]
        pos = min(from_emb.pos_scores[qid].values())
        assert all(s <= pos + 1e-6 for _, s in from_emb.negatives[qid])


def test_cross_encoder_rescoring_carries_scores(tiny_data, tiny_st, tmp_path):
    from embedray.models.cross_encoder import load_cross_encoder

    ce = load_cross_encoder("tiny-bert", num_labels=1, max_length=64)
    ce_cfg = CrossEncoderConfig(denoise_margin=0.0)
    res = _mine(tiny_data, tiny_st, cfg={"rescore_candidates": 5}, cross_encoder=ce, ce_cfg=ce_cfg,
                cache_dir=tmp_path)
    pool = res.pool
    assert set(pool.positive_scores) == set(pool.negatives)
    for qid, negs in pool.negatives.items():
        assert len(negs) <= 3 and all(isinstance(s, float) for _, s in negs)
        pos = min(pool.positive_scores[qid].values())
        assert all(s < pos for _, s in negs)  # survivors score below the positive
    c = res.counts
    assert c["pairs_total"] == 8 * (5 + 1) and c["pairs_scored"] == 48
    assert c["negatives_removed"] + c["negatives_kept"] <= 8 * 5
    again = _mine(tiny_data, tiny_st, cfg={"rescore_candidates": 5}, cross_encoder=ce,
                  ce_cfg=ce_cfg, cache_dir=tmp_path)
    assert again.counts["pairs_scored"] == 0  # every pair came from the score cache
    assert again.pool.fingerprint() == pool.fingerprint()


def test_dropped_negatives_are_replaced_by_default(tiny_data, tiny_st):
    """A denoising cross-encoder scores 3 x num_negatives candidates by default, so the ones it drops
    are replaced by the next it keeps; rescore_candidates = num_negatives replaces none."""
    import torch

    from embedray.mining.config import REFILL
    from embedray.models.cross_encoder import load_cross_encoder

    torch.manual_seed(0)
    ce = load_cross_encoder("tiny-bert", num_labels=1, max_length=64)
    ce_cfg = CrossEncoderConfig(denoise_margin=0.0)
    assert MiningConfig(k=20, num_negatives=3).candidates_per_query == REFILL * 3
    assert MiningConfig(k=5, num_negatives=3, range_min=1).candidates_per_query == 4  # the rank window's size
    refilled = _mine(tiny_data, tiny_st, cross_encoder=ce, ce_cfg=ce_cfg)
    plain = _mine(tiny_data, tiny_st, cfg={"rescore_candidates": 3}, cross_encoder=ce, ce_cfg=ce_cfg)
    assert refilled.counts["pairs_total"] == 8 * (REFILL * 3 + 1) and plain.counts["pairs_total"] == 8 * (3 + 1)
    assert plain.counts["negatives_removed"] > 0  # the random head drops some of the top 3
    assert refilled.counts["negatives_kept"] > plain.counts["negatives_kept"]
    for qid, negs in plain.pool.negatives.items():
        kept = [d for d, _ in refilled.pool.negatives[qid]]
        assert [d for d, _ in negs] == kept[:len(negs)]  # the same survivors first, then replacements
        assert len(kept) <= 3
    # Scoring without denoising (distillation targets) takes num_negatives candidates only.
    scored = _mine(tiny_data, tiny_st, cross_encoder=ce, ce_cfg=ce_cfg, denoise=False)
    assert scored.counts["pairs_total"] == 8 * (3 + 1) and scored.counts["negatives_removed"] == 0


def test_nothing_to_mine_is_an_error(tiny_data, tiny_st):
    with pytest.raises(ValueError, match="nothing to mine"):
        mine(tiny_data.corpus, tiny_data.queries, {}, tiny_st, MiningConfig(k=5, num_negatives=2))


def test_encode_corpus_hook_gets_only_cache_misses(tiny_data, tiny_st, tmp_path):
    """The refresher plugs Ray Data in here: it must see only documents the cache lacks."""
    enc = st_encode_fn(tiny_st)
    seen: list[int] = []

    def encode_corpus(texts):
        seen.append(len(texts))
        return enc(texts, "doc")

    _mine(tiny_data, tiny_st, cache_dir=tmp_path, encode_corpus=encode_corpus)
    corpus = dict(tiny_data.corpus)
    corpus["new"] = type(corpus["d0"])("new", "A brand new package description.", "")
    res = mine(corpus, tiny_data.queries, tiny_data.qrels, tiny_st, MiningConfig(k=20, num_negatives=3),
               cache_dir=tmp_path, encode_corpus=encode_corpus)
    assert seen == [32, 1] and res.counts["docs_encoded"] == 1
