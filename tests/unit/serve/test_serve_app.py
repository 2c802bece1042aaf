"""The HTTP app in-process (FastAPI TestClient + LocalBackend, tiny-bert): schemas, limits,
errors, auth, metrics, search and rerank. The same app runs as the Ray Serve ingress."""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from sentence_transformers import CrossEncoder, SentenceTransformer

TEXTS = ["A fast compression tool.", "Debian packages", "x", "The quick brown fox jumps over the lazy dog " * 3]


@pytest.fixture(scope="module")
def st_model(tiny_model):
    return SentenceTransformer(str(tiny_model), device="cpu")


def test_embeddings_equal_sentence_transformers(make_client, tiny_model, st_model):
    client = make_client(tiny_model)
    r = client.post("/v1/embeddings", json={"input": TEXTS, "model": tiny_model.name})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == tiny_model.name
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    assert all(d["object"] == "embedding" for d in body["data"])
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, st_model.encode(TEXTS), atol=1e-5)
    n_tokens = sum(len(ids) for ids in st_model.tokenizer(TEXTS)["input_ids"])
    assert body["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}


def test_single_string_and_base64(make_client, tiny_model, st_model):
    client = make_client(tiny_model)
    r = client.post("/v1/embeddings", json={"input": "hello world", "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    (item,) = r.json()["data"]
    vec = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, st_model.encode(["hello world"])[0], atol=1e-5)


def test_oversized_request_is_split_not_refused(make_client, tiny_model, st_model):
    # Budget 128 tokens (the model's max): 60 texts of ~12 tokens need several parts.
    client = make_client(tiny_model, max_batch_tokens=128)
    texts = [f"document number {i} talks about topic {i % 7} in some detail" for i in range(60)]
    r = client.post("/v1/embeddings", json={"input": texts})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, st_model.encode(texts), atol=1e-5)
    metrics = client.get("/metrics").text
    batches = float(re.search(r"^embedray_batch_texts_count (\S+)$", metrics, re.M).group(1))
    assert batches >= 5  # ~720 tokens in parts of <= 128
    assert float(re.search(r"^embedray_batch_texts_sum (\S+)$", metrics, re.M).group(1)) == 60


def test_matryoshka_dimensions(make_client, matryoshka_model):
    client = make_client(matryoshka_model)
    full = SentenceTransformer(str(matryoshka_model), device="cpu").encode(TEXTS)
    for dim in (16, 8):
        r = client.post("/v1/embeddings", json={"input": TEXTS, "dimensions": dim})
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        want = full[:, :dim] / np.linalg.norm(full[:, :dim], axis=1, keepdims=True)
        assert got.shape == (len(TEXTS), dim)
        np.testing.assert_allclose(got, want, atol=1e-5)
    info = client.get("/info").json()
    assert info["dimensions"] == [32, 16, 8]
    assert info["metrics"] == {"ndcg@10": 0.4321} and info["base_model"] == "tiny-bert"


def test_unsupported_dimensions_list_the_allowed_ones(make_client, matryoshka_model, tiny_model, error_shape):
    err = error_shape(make_client(matryoshka_model).post("/v1/embeddings", json={"input": "a", "dimensions": 12}),
                      422, "unsupported_dimensions")
    assert "[32, 16, 8]" in err["message"]
    # Without embedray.json only the full dimension is allowed.
    client = make_client(tiny_model)
    err = error_shape(client.post("/v1/embeddings", json={"input": "a", "dimensions": 16}), 422)
    assert "[32]" in err["message"]
    assert client.post("/v1/embeddings", json={"input": "a", "dimensions": 32}).status_code == 200


def test_model_name_is_checked(make_client, tiny_model, error_shape):
    client = make_client(tiny_model, model_name="student")
    assert client.post("/v1/embeddings", json={"input": "a", "model": "student"}).status_code == 200
    err = error_shape(client.post("/v1/embeddings", json={"input": "a", "model": "gpt"}), 404, "model_not_found")
    assert "'student'" in err["message"]


@pytest.mark.parametrize("body,status,code", [
    ({"input": ""}, 422, "empty_input"),
    ({"input": "   "}, 422, "empty_input"),
    ({"input": []}, 422, "empty_input"),
    ({"input": ["ok", ""]}, 422, "empty_input"),
    ({"input": 5}, 422, "validation_error"),
    ({"input": [1, 2, 3]}, 422, "validation_error"),
    ({"input": "a", "dimensions": "16"}, 422, "validation_error"),
    ({"input": "a", "encoding_format": "int8"}, 422, "validation_error"),
    ({"input": "a", "dimension": 16}, 422, "validation_error"),
    ({"inputs": "a"}, 422, "validation_error"),
    ({}, 422, "validation_error"),
])
def test_bad_bodies_get_the_error_shape(make_client, tiny_model, error_shape, body, status, code):
    error_shape(make_client(tiny_model).post("/v1/embeddings", json=body), status, code)


def test_unknown_field_is_named(make_client, tiny_model, error_shape):
    err = error_shape(make_client(tiny_model).post("/v1/embeddings", json={"input": "a", "dimension": 16}), 422)
    assert "dimension" in err["message"]


def test_malformed_requests(make_client, tiny_model, error_shape):
    client = make_client(tiny_model)
    json_headers = {"content-type": "application/json"}
    error_shape(client.post("/v1/embeddings", content=b'{"input": ', headers=json_headers), 400, "invalid_json")
    error_shape(client.post("/v1/embeddings", content=b'{"input": "\xff\xfe"}', headers=json_headers), 400)
    error_shape(client.post("/v1/embeddings", content=b'{"input": "a"}', headers={"content-type": "text/plain"}),
                415, "unsupported_media_type")
    error_shape(client.post("/v1/embeddings", content=b'{"input": "a"}'), 415)
    error_shape(client.get("/nowhere"), 404, "not_found")
    error_shape(client.get("/v1/embeddings"), 405, "method_not_allowed")


def test_limits_answer_413(make_client, tiny_model, error_shape):
    client = make_client(tiny_model, max_items=3, max_chars=40, max_body_bytes=300)
    error_shape(client.post("/v1/embeddings", json={"input": ["a", "b", "c", "d"]}), 413, "too_many_inputs")
    error_shape(client.post("/v1/embeddings", json={"input": "y" * 41}), 413, "input_too_long")
    error_shape(client.post("/v1/embeddings", json={"input": ["z" * 39] * 3, "user": "u" * 200}), 413,
                "body_too_large")
    assert client.post("/v1/embeddings", json={"input": ["a", "b", "c"]}).status_code == 200


def test_truncation_is_explicit(make_client, tiny_model, st_model, error_shape):
    client = make_client(tiny_model)
    long_text = " ".join(f"word{i}" for i in range(400))  # far more than 128 tokens
    err = error_shape(client.post("/v1/embeddings", json={"input": ["short", long_text]}), 413, "too_many_tokens")
    assert "input[1]" in err["message"] and "truncate" in err["message"]
    r = client.post("/v1/embeddings", json={"input": ["short", long_text], "truncate": True})
    assert r.status_code == 200
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, st_model.encode(["short", long_text]), atol=1e-5)  # ST truncates too
    assert r.json()["usage"]["prompt_tokens"] == 3 + 128


def test_search_finds_the_document_and_highlights(make_client, tiny_model, corpus_file):
    client = make_client(tiny_model, corpus=str(corpus_file))
    # A random tiny model still maps identical text (title + " " + text) to the same vector: cosine 1.
    query = "zstd Zstandard is a fast lossless compression algorithm with a command line tool for compressing files."
    r = client.post("/search", json={"query": query, "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [h["rank"] for h in body["results"]] == [1, 2, 3]
    top = body["results"][0]
    assert top["id"] == "zst" and top["title"] == "zstd"
    assert top["score"] == pytest.approx(1.0, abs=1e-4)
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    marked = {top["snippet"][a:b].lower() for a, b in top["highlights"]}
    assert {"compression", "lossless", "zstandard", "compressing"} <= marked
    assert top["rerank_score"] is None and body["reranked"] is False
    assert client.get("/info").json()["corpus"] == {"documents": 5, "index_type": "flat"}


def test_search_limits_and_missing_parts(make_client, tiny_model, corpus_file, error_shape):
    client = make_client(tiny_model, corpus=str(corpus_file), max_top_k=4)
    error_shape(client.post("/search", json={"query": "x", "top_k": 5}), 422, "top_k_too_large")
    error_shape(client.post("/search", json={"query": "x", "top_k": 0}), 422, "validation_error")
    error_shape(client.post("/search", json={"query": ""}), 422, "empty_input")
    error_shape(client.post("/search", json={"query": "x", "rerank": True}), 404, "no_reranker")
    error_shape(client.post("/rerank", json={"query": "x", "texts": ["a"]}), 404, "no_reranker")
    error_shape(make_client(tiny_model).post("/search", json={"query": "x"}), 404, "no_corpus")


def test_search_rerank_uses_the_cross_encoder(make_client, tiny_model, corpus_file, tiny_cross_encoder):
    client = make_client(tiny_model, corpus=str(corpus_file), cross_encoder=str(tiny_cross_encoder))
    r = client.post("/search", json={"query": "compression tool", "top_k": 3, "rerank": True, "rerank_top_n": 5})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert r.json()["reranked"] is True and len(hits) == 3
    docs = {d["_id"]: d for d in map(json.loads, corpus_file.read_text().splitlines())}
    pairs = [("compression tool", f'{docs[h["id"]]["title"]} {docs[h["id"]]["text"]}'.strip()) for h in hits]
    want = CrossEncoder(str(tiny_cross_encoder)).predict(pairs)
    for h, w in zip(hits, want):
        assert h["score"] == h["rerank_score"] == pytest.approx(float(w), abs=1e-5)
    assert [h["rerank_score"] for h in hits] == sorted((h["rerank_score"] for h in hits), reverse=True)
    # The reranked top 3 are the cross-encoder's best 3 of all 5 candidates.
    all_pairs = [("compression tool", f'{d["title"]} {d["text"]}'.strip()) for d in docs.values()]
    best = sorted(CrossEncoder(str(tiny_cross_encoder)).predict(all_pairs), reverse=True)[:3]
    assert [h["rerank_score"] for h in hits] == pytest.approx([float(b) for b in best], abs=1e-5)


def test_rerank_scores_equal_cross_encoder(make_client, tiny_model, tiny_cross_encoder, error_shape):
    client = make_client(tiny_model, cross_encoder=str(tiny_cross_encoder))
    texts = ["zstd compresses files", "coffee beans", "apt installs packages", "git tracks changes"]
    r = client.post("/rerank", json={"query": "compression", "texts": texts, "return_text": True})
    assert r.status_code == 200, r.text
    want = CrossEncoder(str(tiny_cross_encoder)).predict([("compression", t) for t in texts])
    results = r.json()["results"]
    assert sorted(x["index"] for x in results) == [0, 1, 2, 3]
    for x in results:
        assert x["score"] == pytest.approx(float(want[x["index"]]), abs=1e-5)
        assert x["text"] == texts[x["index"]]
    assert [x["index"] for x in results] == list(np.argsort(-want, kind="stable"))
    top = client.post("/rerank", json={"query": "compression", "texts": texts, "top_n": 2}).json()["results"]
    assert len(top) == 2 and top[0]["text"] is None
    long_text = " ".join(f"w{i}" for i in range(300))
    error_shape(client.post("/rerank", json={"query": "q", "texts": ["a", long_text]}), 413, "too_many_tokens")
    assert client.post("/rerank", json={"query": "q", "texts": ["a", long_text], "truncate": True}).status_code == 200


ROUTES = [("POST", "/v1/embeddings", {"input": "hello"}), ("POST", "/search", {"query": "coffee"}),
          ("POST", "/rerank", {"query": "coffee", "texts": ["a", "b"]}), ("GET", "/info", None),
          ("GET", "/metrics", None), ("GET", "/v1/models", None), ("GET", "/health", None)]


def test_auth_matrix(make_client, tiny_model, corpus_file, tiny_cross_encoder, error_shape):
    client = make_client(tiny_model, corpus=str(corpus_file), cross_encoder=str(tiny_cross_encoder),
                         api_key="s3cret")
    unauthorized = 0
    for method, path, body in ROUTES:
        for token, want in ((None, 401), ("wrong", 401), ("s3cret", 200)):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = client.request(method, path, json=body, headers=headers)
            expected = 200 if path == "/health" else want
            assert r.status_code == expected, (method, path, token, r.text)
            if r.status_code == 401:
                unauthorized += 1
                error_shape(r, 401)
                assert r.headers["www-authenticate"] == "Bearer"
    assert unauthorized == 2 * (len(ROUTES) - 1)
    assert client.get("/info", headers={"Authorization": "Basic s3cret"}).status_code == 401
    assert client.get("/info", headers={"Authorization": "Bearer s3cret"}).json()["auth"] is True


def test_metrics_are_prometheus_text(make_client, tiny_model):
    client = make_client(tiny_model)
    client.post("/v1/embeddings", json={"input": ["a", "b"]})
    client.post("/v1/embeddings", json={"input": ""})
    client.get("/some/random/path")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'embedray_requests_total{route="/v1/embeddings",status="200"} 1.0' in text
    assert 'embedray_requests_total{route="/v1/embeddings",status="422"} 1.0' in text
    assert 'embedray_requests_total{route="other",status="404"} 1.0' in text
    assert 'embedray_request_latency_seconds_bucket{le="0.005",route="/v1/embeddings"}' in text
    assert "embedray_queue_depth 0.0" in text
    assert "embedray_batch_tokens_count 1.0" in text
    assert "embedray_embedded_texts_total 2.0" in text


def test_unexpected_errors_become_500_without_trace(tiny_model, error_shape):
    from fastapi.testclient import TestClient

    from embedray.serve.app import create_app
    from embedray.serve.config import ServeConfig
    from embedray.serve.embedder import TokenCounter, load_tokenizer

    class Broken:
        async def embed_part(self, part):
            raise RuntimeError("secret internal detail")

    info = {"dim": 32, "max_seq_length": 128, "normalized": True, "corpus_size": 0, "max_batch_tokens": 8192}
    app = create_app(ServeConfig(str(tiny_model)), Broken(), info, TokenCounter(load_tokenizer(tiny_model), 128))
    client = TestClient(app, raise_server_exceptions=False)
    err = error_shape(client.post("/v1/embeddings", json={"input": "a"}), 500, "internal_error")
    assert "secret" not in err["message"]
    assert client.get("/health").status_code == 200


def test_bf16_serving_stays_close_to_fp32(make_client, tiny_model, st_model, tiny_cross_encoder):
    client = make_client(tiny_model, cross_encoder=str(tiny_cross_encoder), precision="bf16")
    r = client.post("/v1/embeddings", json={"input": TEXTS})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    want = st_model.encode(TEXTS)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.999 and not np.array_equal(got, want)
    assert client.get("/info").json()["precision"] == "bf16"
    fp32 = make_client(tiny_model).get("/info").json()
    assert fp32["precision"] == "fp32"
    scores = client.post("/rerank", json={"query": "compression", "texts": ["zstd", "gzip"]}).json()["results"]
    assert len(scores) == 2


def test_the_models_api_lists_the_served_model(make_client, tiny_model, error_shape):
    client = make_client(tiny_model)
    name = client.get("/info").json()["model"]
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == [name]
    entry = listed["data"][0]
    assert entry["object"] == "model" and entry["owned_by"] == "embedray" and entry["created"] > 1_600_000_000
    assert client.get(f"/v1/models/{name}").json() == entry
    error_shape(client.get("/v1/models/gpt-4"), 404, "model_not_found")


def test_prompts_travel_to_embeddings_search_and_info(make_client, prompted_model, corpus_file, error_shape):
    st = SentenceTransformer(str(prompted_model), device="cpu")
    client = make_client(prompted_model, corpus=str(corpus_file))
    texts = TEXTS[:2]

    def embed(**fields):
        r = client.post("/v1/embeddings", json={"input": texts, **fields})
        assert r.status_code == 200, r.text
        return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32), r.json()["usage"]

    # No field: the model's default prompt (document), as SentenceTransformer.encode applies it.
    default, usage = embed()
    np.testing.assert_allclose(default, st.encode(texts), atol=1e-5)
    np.testing.assert_allclose(default, st.encode_document(texts), atol=1e-5)
    assert usage["prompt_tokens"] == sum(len(ids) for ids in st.tokenizer(["passage: " + t for t in texts])["input_ids"])
    query, _ = embed(input_type="query")
    np.testing.assert_allclose(query, st.encode_query(texts), atol=1e-5)
    assert np.abs(query - default).max() > 1e-3  # the prompt changes the vector
    np.testing.assert_allclose(embed(input_type="search_document")[0], default, atol=1e-6)
    task, _ = embed(prompt_name="sections-query")
    np.testing.assert_allclose(task, st.encode(texts, prompt_name="sections-query"), atol=1e-5)

    err = error_shape(client.post("/v1/embeddings", json={"input": texts, "prompt_name": "classify"}),
                      422, "unknown_prompt")
    assert "'sections-query'" in err["message"] and "'query'" in err["message"]
    error_shape(client.post("/v1/embeddings", json={"input": texts, "prompt_name": "query", "input_type": "query"}),
                422, "conflicting_prompt")
    error_shape(client.post("/v1/embeddings", json={"input": texts, "input_type": "passage"}), 422, "validation_error")

    # /search: the query with the query prompt against documents indexed with the document prompt.
    doc = "zstd Zstandard is a fast lossless compression algorithm with a command line tool for compressing files."
    r = client.post("/search", json={"query": doc, "top_k": 5})
    assert r.status_code == 200, r.text
    by_id = {h["id"]: h["score"] for h in r.json()["results"]}
    expected = float(st.encode_query([doc])[0] @ st.encode_document([doc])[0])
    assert by_id["zst"] == pytest.approx(expected, abs=1e-5) and expected < 1 - 1e-4
    r = client.post("/search", json={"query": doc, "top_k": 5, "prompt_name": "document"})
    assert {h["id"]: h["score"] for h in r.json()["results"]}["zst"] == pytest.approx(1.0, abs=1e-5)
    error_shape(client.post("/search", json={"query": doc, "prompt_name": "nope"}), 422, "unknown_prompt")
    # input_type on /search: a document as the query finds the documents most like it
    for input_type, score in (("document", 1.0), ("search_document", 1.0), ("query", expected)):
        r = client.post("/search", json={"query": doc, "top_k": 5, "input_type": input_type})
        assert {h["id"]: h["score"] for h in r.json()["results"]}["zst"] == pytest.approx(score, abs=1e-5)
    error_shape(client.post("/search", json={"query": doc, "input_type": "document", "prompt_name": "query"}),
                422, "conflicting_prompt")
    # token ids (the OpenAI schema allows them) belong to another tokenizer: refused, saying what to send
    for ids in ([101, 2023, 102], [[101, 2023], [101]]):
        err = error_shape(client.post("/v1/embeddings", json={"input": ids}), 422, "validation_error")
        assert "token ids are not accepted, send the texts" in err["message"]

    info = client.get("/info").json()
    assert info["prompts"] == {"query": "query: ", "document": "passage: ",
                               "sections-query": "Classify the Debian section: "}
    assert info["default_prompt_name"] == "document"


def test_a_model_without_prompts_encodes_texts_as_given(make_client, tiny_model, st_model, error_shape):
    client = make_client(tiny_model)
    r = client.post("/v1/embeddings", json={"input": TEXTS[:2], "input_type": "query"})
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, st_model.encode(TEXTS[:2]), atol=1e-5)
    err = error_shape(client.post("/v1/embeddings", json={"input": "x", "prompt_name": "classify"}), 422,
                      "unknown_prompt")
    assert "'query', 'document'" in err["message"]  # tiny-bert's config has empty query/document prompts
