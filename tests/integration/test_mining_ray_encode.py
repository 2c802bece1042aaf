"""Ray Data corpus encoding (actor pool, local Ray) equals local encoding; the cache is honoured."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from embedray.data.beir import Document

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from embedray.cluster.runtime import init_local_ray

    init_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def _docs(n: int = 200) -> list[Document]:
    words = "package library daemon python gtk font kernel module music image viewer mail".split()
    rng = np.random.default_rng(0)
    return [Document(f"doc{i}", " ".join(rng.choice(words, size=int(rng.integers(3, 60)))),
                     title="T" if i % 3 == 0 else "") for i in range(n)]


def test_ray_encoding_equals_local_and_uses_the_cache(local_ray, tmp_path):
    from sentence_transformers import SentenceTransformer

    from embedray.cluster.encode import encode_corpus_ray
    from embedray.mining.cache import embedding_cache, folder_fingerprint
    from embedray.models.bundled import resolve_model

    model_dir = resolve_model("tiny-bert")
    docs = _docs()
    # fp32: compared with sentence-transformers' fp32 output
    ids, emb = encode_corpus_ray(docs, "tiny-bert", batch_size=16, num_actors=2,
                                 num_cpus_per_actor=0.5, cache_dir=tmp_path / "cache",
                                 output_dir=tmp_path / "parquet", precision="fp32")
    local = SentenceTransformer(str(model_dir), device="cpu").encode_document(
        [d.text_for_model for d in docs], batch_size=16, normalize_embeddings=True)
    assert ids == [d.id for d in docs]
    np.testing.assert_allclose(emb, local, atol=1e-5)
    assert list((tmp_path / "parquet").glob("*.parquet"))  # Ray Data wrote Parquet shards
    cache = embedding_cache(tmp_path / "cache", folder_fingerprint(model_dir))
    assert len(cache) == 200

    # second run: nothing to encode (no actor pool is even started); one changed doc: one encoded
    ids2, emb2 = encode_corpus_ray(docs, "tiny-bert", cache_dir=tmp_path / "cache",
                                   output_dir=tmp_path / "none", precision="fp32")
    np.testing.assert_array_equal(emb2, emb)
    assert not (tmp_path / "none").exists()
    docs[5] = Document("doc5", "an edited description", "")
    _, emb3 = encode_corpus_ray(docs, "tiny-bert", cache_dir=tmp_path / "cache", precision="fp32")
    assert len(cache) == 201
    np.testing.assert_allclose(emb3[5], SentenceTransformer(str(model_dir), device="cpu").encode_document(
        ["an edited description"], normalize_embeddings=True)[0], atol=1e-5)


def test_ray_encoding_reads_a_beir_corpus_file(local_ray, tmp_path):
    from embedray.cluster.encode import encode_corpus_ray
    from embedray.data.beir import write_beir

    docs = _docs(20)
    write_beir(tmp_path / "beir", docs, [("q", "x")], {"test": {"q": {"doc0": 1}}})
    ids, emb = encode_corpus_ray(tmp_path / "beir" / "corpus.jsonl", "tiny-bert", num_actors=1,
                                 precision="fp32")
    by_id = dict(zip(ids, emb))
    from sentence_transformers import SentenceTransformer

    from embedray.models.bundled import resolve_model

    want = SentenceTransformer(str(resolve_model("tiny-bert")), device="cpu").encode_document(
        [d.text_for_model for d in docs], normalize_embeddings=True)
    assert sorted(ids) == sorted(d.id for d in docs)
    np.testing.assert_allclose(np.stack([by_id[d.id] for d in docs]), want, atol=1e-5)


def test_ray_encoding_with_a_weights_snapshot_from_the_object_store(local_ray, tmp_path):
    """The refresher's path: base folder + a state_dict snapshot put in the object store."""
    from sentence_transformers import SentenceTransformer

    from embedray.cluster.encode import encode_corpus_ray
    from embedray.mining.cache import state_dict_fingerprint
    from embedray.models.bundled import resolve_model

    other = SentenceTransformer(str(resolve_model("tiny-bert@1")), device="cpu")
    snapshot = {k: v.clone() for k, v in other.state_dict().items()}
    docs = _docs(24)
    _, emb = encode_corpus_ray(docs, "tiny-bert", num_actors=1, state_dict=local_ray.put(snapshot),
                               cache_dir=tmp_path, precision="fp32")
    want = other.encode_document([d.text_for_model for d in docs], normalize_embeddings=True)
    np.testing.assert_allclose(emb, want, atol=1e-5)
    # cached under the snapshot's fingerprint, not the base folder's
    assert (tmp_path / "emb" / state_dict_fingerprint(snapshot)).is_dir()
