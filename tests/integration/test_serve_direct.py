"""``ingress: replica``: Ray Serve's direct ingress, the replica answering on ``port`` itself and
the proxy beside it. Its own local Ray: the Serve processes read the direct-ingress environment
at start."""
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
    from embedray.cluster.serve_app import direct_ingress_env, resolve_layout, start_serve
    from embedray.serve.config import ServeConfig

    port = free_port()
    cfg = ServeConfig(str(serve_assets.minilm_mrl), corpus=str(serve_assets.corpus), model_name="minilm",
                      api_key=API_KEY, port=port, replicas=1, cpus_per_replica=1.0,
                      precision="fp32")  # compared with sentence-transformers' fp32 output
    cfg = resolve_layout(cfg, own_ray=True)  # what `embedray serve` does with its own Ray
    assert cfg.ingress == "replica" and cfg.proxy_port not in (0, port)
    saved = dict(os.environ)
    os.environ.update(direct_ingress_env(cfg))
    # one declared GPU: Ray assigns it to the replica (gpus_per_replica auto); torch sees no CUDA
    # device on this machine, so the model still runs on the CPU
    init_local_ray(num_cpus=2, num_gpus=1, log_to_driver=False)
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

    # the proxy listens elsewhere, so only the replica itself can answer on the API's port
    assert direct["direct"] == [direct["api"]] and direct["proxy"] != direct["api"]
    got = {}
    for name, url in [("proxy", direct["proxy"]), ("direct", direct["api"])]:
        r = httpx.post(url + "/v1/embeddings", json={"input": TEXTS, "model": "minilm"},
                       headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
        assert r.status_code == 200, r.text
        got[name] = np.array([d["embedding"] for d in r.json()["data"]])
    want = SentenceTransformer(str(serve_assets.minilm_mrl), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(got["direct"], got["proxy"], atol=1e-6)
    np.testing.assert_allclose(got["direct"], want, atol=1e-5)


def test_replica_port_keeps_auth_errors_and_search(direct):
    url = direct["api"]
    assert httpx.get(url + "/health").status_code == 200
    info = httpx.get(url + "/info", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert info["ingress"] == "replica"
    assert (info["gpu_ids"], info["device"]) == (["0"], "cpu")
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
    with pytest.raises(ValueError, match="replica serves one app"):
        start_serve(ServeConfig(str(serve_assets.tiny), ingress="replica"), base=ServeConfig(str(serve_assets.tiny)))


def test_ingress_auto_picks_the_replica_only_where_it_serves_everything(serve_assets):
    from embedray.cluster.serve_app import resolve_layout
    from embedray.serve.config import ServeConfig

    tiny = str(serve_assets.tiny)
    one = ServeConfig(tiny, port=9200)
    mine = resolve_layout(one, own_ray=True)
    assert mine.ingress == "replica" and mine.port == 9200 and mine.proxy_port not in (0, 9200)
    assert mine.direct_urls == ["http://127.0.0.1:9200"] and mine.serve_proxy_port == mine.proxy_port
    assert resolve_layout(one, own_ray=False).ingress == "proxy"  # a running cluster: its env is not ours
    assert resolve_layout(ServeConfig(tiny, replicas=2), own_ray=True).ingress == "proxy"  # one URL for both
    assert resolve_layout(one, own_ray=True, base=ServeConfig(tiny)).ingress == "proxy"
    assert resolve_layout(ServeConfig(tiny, direct_port=9300), own_ray=True).ingress == "proxy"
    split = resolve_layout(ServeConfig(tiny, replicas=3, colocate=False), own_ray=True)
    assert split.ingress == "replica" and split.http_replicas == 1  # the one ingress replica answers
    forced = resolve_layout(ServeConfig(tiny, port=9200, replicas=2, ingress="replica", proxy_port=9000),
                             own_ray=False)
    assert forced.direct_urls == ["http://127.0.0.1:9200", "http://127.0.0.1:9201"]
    assert (forced.serve_proxy_port, resolve_layout(forced, own_ray=True)) == (9000, forced)
    proxy = ServeConfig(tiny, port=9200, direct_port=9300)
    assert (proxy.serve_proxy_port, proxy.replica_port) == (9200, 9300)


def test_replica_cpus_share_the_machine_when_ray_is_ours(serve_assets, monkeypatch):
    from embedray.cluster.serve_app import replica_cpus
    from embedray.serve.config import ServeConfig

    tiny, ce = str(serve_assets.tiny), str(serve_assets.cross_encoder)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert replica_cpus(ServeConfig(tiny), own_ray=True) == 8.0
    assert replica_cpus(ServeConfig(tiny), own_ray=False) == 1.0  # a cluster: one CPU, Ray's default
    assert replica_cpus(ServeConfig(tiny, cpus_per_replica=0.3), own_ray=True) == 0.3
    assert replica_cpus(ServeConfig(tiny, replicas=3), own_ray=True) == 2.0  # 2.67: whole CPUs above one
    assert replica_cpus(ServeConfig(tiny, cross_encoder=ce, reranker_cpus=0.5), own_ray=True) == 7.0
    assert replica_cpus(ServeConfig(tiny, replicas=2, colocate=False, ingress_cpus=0.2), own_ray=True) == 3.0
    assert replica_cpus(ServeConfig(tiny), own_ray=True, base=ServeConfig(tiny)) == 4.0
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert replica_cpus(ServeConfig(tiny, cross_encoder=ce, reranker_cpus=0.5, replicas=2), own_ray=True) == 0.25


def test_replica_gpus_follow_the_cluster(serve_assets):
    from embedray.cluster.serve_app import replica_gpus
    from embedray.serve.config import ServeConfig

    tiny = str(serve_assets.tiny)
    assert replica_gpus(ServeConfig(tiny, backend="torch"), have=0) == 0.0
    assert replica_gpus(ServeConfig(tiny, backend="torch", replicas=2), have=2) == 1.0
    assert replica_gpus(ServeConfig(tiny, backend="torch", replicas=3), have=2) == 0.0  # not one each
    assert replica_gpus(ServeConfig(tiny, backend="torch", gpus_per_replica="0.5"), have=0) == 0.5
    assert ServeConfig(tiny, gpus_per_replica="1.0").gpus_per_replica == "1"
    with pytest.raises(ValueError, match="gpus_per_replica: must be 'auto' or a number >= 0, got 'many'"):
        ServeConfig(tiny, gpus_per_replica="many")


def test_ingress_config_errors(serve_assets):
    from embedray.serve.config import ServeConfig

    tiny = str(serve_assets.tiny)
    with pytest.raises(ValueError, match="ingress: must be one of auto, replica, proxy"):
        ServeConfig(tiny, ingress="haproxy")
    with pytest.raises(ValueError, match="drop --direct-port"):
        ServeConfig(tiny, ingress="replica", direct_port=9300)
    with pytest.raises(ValueError, match="proxy_port: 9201 is one of the replica ports 9200..9201"):
        ServeConfig(tiny, ingress="replica", port=9200, replicas=2, proxy_port=9201)
    with pytest.raises(ValueError, match="proxy_port: 70000"):
        ServeConfig(tiny, proxy_port=70000)


def test_a_taken_port_is_named_before_ray_starts(serve_assets):
    import socket

    from embedray.cluster.serve_app import check_ports_free
    from embedray.serve.config import ServeConfig

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"--port: 127.0.0.1:{port} is not free"):
            check_ports_free(ServeConfig(str(serve_assets.tiny), port=port, ingress="replica", proxy_port=free_port()))
        with pytest.raises(ValueError, match=f"--proxy-port: 127.0.0.1:{port} is not free"):
            check_ports_free(ServeConfig(str(serve_assets.tiny), port=free_port(), ingress="replica", proxy_port=port))
    check_ports_free(ServeConfig(str(serve_assets.tiny), port=free_port()))
