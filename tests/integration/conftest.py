"""Fixtures shared by integration tests.

Serving (embedray/serve, embedray/cluster/serve_app.py): ``serve_ray`` starts one local Ray
with Ray Serve on a free 127.0.0.1 port for a test module and shuts both down afterwards;
``serve_assets`` builds the small models and corpus the serving tests deploy.
"""
from __future__ import annotations

import json
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# -- serving ----------------------------------------------------------------------------------

# A small real-text corpus: MiniLM must find the expected document for natural queries.
SERVE_DOCS = [
    ("zstd", "zstd", "Zstandard is a fast lossless compression algorithm; this command line tool "
                     "compresses and decompresses files at high speed."),
    ("nginx", "nginx", "A small, powerful and scalable web server and reverse proxy for HTTP traffic."),
    ("git", "git", "Fast, scalable, distributed revision control system for tracking changes in source code."),
    ("vlc", "vlc", "A multimedia player that plays most audio and video formats, DVDs and network streams."),
    ("gimp", "gimp", "The GNU Image Manipulation Program, an editor for photo retouching and image composition."),
    ("postgresql", "postgresql", "An object-relational SQL database server with transactions and indexes."),
    ("openssh-server", "openssh-server", "Secure shell (SSH) server for secure remote login to this machine."),
    ("python3", "python3", "An interactive high-level object-oriented programming language interpreter."),
    ("fonts-dejavu", "fonts-dejavu", "A font family with a wide character coverage based on Bitstream Vera."),
    ("cron", "cron", "A daemon that runs scheduled commands at given times, such as nightly backups."),
    ("thunderbird", "thunderbird", "An email, news and chat client with a calendar and an address book."),
    ("rsync", "rsync", "A fast and versatile remote file copying tool that transfers only the differences."),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServeAssets:
    """Paths of what the serving tests deploy."""

    minilm: Path
    minilm_mrl: Path      #: a copy of MiniLM with embedray.json (matryoshka_dims 384, 128, 64)
    tiny: Path
    cross_encoder: Path   #: tiny-bert with a fresh one-label head
    corpus: Path          #: JSONL of SERVE_DOCS


@pytest.fixture(scope="module")
def serve_assets(tmp_path_factory) -> ServeAssets:
    from sentence_transformers import CrossEncoder

    from embedray.models.bundled import resolve_model

    root = tmp_path_factory.mktemp("serve_assets")
    minilm, tiny = resolve_model("minilm-l6"), resolve_model("tiny-bert")
    mrl = root / "minilm-mrl"
    shutil.copytree(minilm, mrl)
    (mrl / "embedray.json").write_text(json.dumps({"matryoshka_dims": [384, 128, 64], "base_model": "minilm-l6",
                                                   "metrics": {"ndcg@10": 0.5}}))
    ce = root / "tiny-ce"
    CrossEncoder(str(tiny), num_labels=1).save(str(ce))
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in SERVE_DOCS))
    return ServeAssets(minilm, mrl, tiny, ce, corpus)


@dataclass
class ServeCluster:
    """A local Ray + Serve; ``deploy`` runs one embedray app under a route prefix."""

    port: int
    apps: list[str] = field(default_factory=list)
    free_port = staticmethod(free_port)

    def url(self, prefix: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{prefix}"

    def deploy(self, apps: dict) -> dict[str, str]:
        """Run ``{name: (ServeConfig, route_prefix)}`` together; returns ``{name: base URL}``."""
        from ray import serve

        from embedray.cluster.serve_app import build_serve_app

        serve.run_many([serve.RunTarget(build_serve_app(cfg), name=name, route_prefix=prefix,
                                        logging_config={"enable_access_log": False})
                        for name, (cfg, prefix) in apps.items()])
        self.apps.extend(apps)
        urls = {name: self.url("" if prefix == "/" else prefix) for name, (_, prefix) in apps.items()}
        for url in urls.values():
            self.wait_healthy(url)
        return urls

    def wait_healthy(self, url: str, timeout_s: float = 120) -> None:
        import httpx

        deadline = time.time() + timeout_s
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"{url}/health not ready after {timeout_s}s")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def serve_ray():
    """Local Ray (2 CPUs, no dashboard) with Serve's HTTP proxy on a free 127.0.0.1 port."""
    import ray
    from ray import serve

    from embedray.cluster.runtime import init_local_ray

    port = free_port()
    init_local_ray(num_cpus=2, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield ServeCluster(port)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


# -- training ---------------------------------------------------------------------------------

def sync_refresh_job(beir, storage, name, **sections):
    """A tiny-bert train job on Ray with a sync refresher (2 workers × 0.5 CPU, fp32), its
    sections deep-merged with ``sections``."""
    from embedray.config import build_config, merge
    from embedray.pipeline.config import TrainJobConfig

    return build_config(TrainJobConfig, merge({
        "data": {"path": str(beir)},
        "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "infonce", "temperature": 0.1},
        "train": {"max_steps": 10, "batch_size": 4, "num_negatives": 2, "lr": 1e-3, "checkpoint_every": 4,
                  "eval_every": 0, "max_doc_length": 48, "num_threads": 1, "precision": "fp32"},
        "cluster": {"num_workers": 2, "cpus_per_worker": 0.5, "storage_path": str(storage), "run_name": name,
                    "max_failures": 2},
        "mining": {"k": 10, "num_negatives": 4},
        "refresh": {"mode": "sync", "every": 3, "denoise": False, "num_cpus": 0.25},
    }, sections))


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray (2 CPUs, 127.0.0.1, offline models) for one test module."""
    import ray

    from embedray.cluster.runtime import init_local_ray

    init_local_ray(num_cpus=2)
    yield
    ray.shutdown()
