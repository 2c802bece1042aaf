"""``direct_port``: Ray Serve's direct ingress, the replicas answering on their own ports beside
the proxy. Its own local Ray: the Serve processes read the direct-ingress environment at start."""
from __future__ import annotations

import os

import httpx
import numpy as np
import pytest

from .conftest import free_port

pytestmark = pytest.mark.integration

API_KEY = "direct-key-42"
TEXTS = ["How do I compress a file?", "web server", "ok"]


@pytest.fixture(scope="module")
def direct(serve_assets):
    import ray
    from ray import serve

    from embedray.cluster.runtime import init_local_ray
    from embedray.cluster.serve_app import direct_ingress_env, start_serve
    from embedray.serve.config import ServeConfig

    port = free_port()
    direct_port = next(p for p in iter(free_port, None) if p not in (port, port - 1))
    cfg = ServeConfig(str(serve_assets.minilm_mrl), corpus=str(serve_assets.corpus), model_name="minilm",
                      api_key=API_KEY, port=port, direct_port=direct_port, replicas=1, cpus_per_replica=1.0,
                      precision="fp32")  # compared with sentence-transformers' fp32 output
    saved = dict(os.environ)
    os.environ.update(direct_ingress_env(cfg))
    init_local_ray(num_cpus=2, log_to_driver=False)
    try:
        urls = start_serve(cfg)
        yield urls
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            os.environ.clear()
            os.environ.update(saved)


def test_replica_port_serves_the_same_embeddings_as_the_proxy(direct, serve_assets):
    from sentence_transformers import SentenceTransformer

    assert len(direct["direct"]) == 1 and direct["direct"][0] != direct["api"]
    got = {}
    for name, url in [("proxy", direct["api"]), ("direct", direct["direct"][0])]:
        r = httpx.post(url + "/v1/embeddings", json={"input": TEXTS, "model": "minilm"},
                       headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
        assert r.status_code == 200, r.text
        got[name] = np.array([d["embedding"] for d in r.json()["data"]])
    want = SentenceTransformer(str(serve_assets.minilm_mrl), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(got["direct"], got["proxy"], atol=1e-6)
    np.testing.assert_allclose(got["direct"], want, atol=1e-5)


def test_replica_port_keeps_auth_errors_and_search(direct):
    url = direct["direct"][0]
    assert httpx.get(url + "/health").status_code == 200
    r = httpx.post(url + "/v1/embeddings", json={"input": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = httpx.post(url + "/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    ok = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.post(url + "/v1/embeddings", content=b'{"input": ', headers={**ok, "Content-Type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "code"}
    r = httpx.post(url + "/search", json={"query": "compress files quickly", "top_k": 3}, headers=ok, timeout=60)
    assert r.status_code == 200 and r.json()["results"][0]["id"] == "zstd"


def test_direct_port_config_errors(serve_assets, tmp_path):
    from embedray.cluster.serve_app import start_serve
    from embedray.serve.config import ServeConfig

    with pytest.raises(ValueError, match="include the proxy's port 8001"):
        ServeConfig(str(serve_assets.tiny), port=8001, direct_port=8000, replicas=2)
    with pytest.raises(ValueError, match="direct_port: 70000 is not a TCP port"):
        ServeConfig(str(serve_assets.tiny), direct_port=70000)
    cfg = ServeConfig(str(serve_assets.tiny), direct_port=9100, replicas=3)
    assert cfg.direct_urls == ["http://127.0.0.1:9100", "http://127.0.0.1:9101", "http://127.0.0.1:9102"]
    assert ServeConfig(str(serve_assets.tiny), direct_port=9100, replicas=3, colocate=False).direct_urls == \
        ["http://127.0.0.1:9100"]
    with pytest.raises(ValueError, match="serves one app"):
        start_serve(cfg, base=ServeConfig(str(serve_assets.tiny)))
