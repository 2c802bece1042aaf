"""Ray Serve wiring of the embedding server: deployments, ``@serve.batch``, ``serve.run``.

Two layouts (``ServeConfig.colocate``):

* colocated (default): ``Ingress`` replicas (FastAPI app of :mod:`embedray.serve.app`:
  validation, auth, metrics) each hold the model and the corpus index, so a request makes no
  hop after the proxy. ``@serve.batch`` with ``batch_size_fn=batch_tokens`` turns
  ``max_batch_size`` into a token budget; the app splits oversized requests into parts that
  fit. The queue limit (``max_ongoing_requests + max_queued_requests`` parts per replica) is
  counted in the replica, and a part beyond it gets a 503 in the JSON error shape.
* split: one ``Ingress`` replica calls an ``Embedder`` deployment (N replicas, the same
  ``@serve.batch``) through a handle; the Embedder's ``max_queued_requests`` is the queue
  limit, whose ``BackPressureError`` the ingress answers with the JSON 503 (the proxy's own
  503 would be plain text).

``Reranker`` (optional) is the cross-encoder, a deployment of its own in both layouts.

Everything that is not wiring lives in ``embedray/serve/`` and runs without Ray.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from embedray.serve.app import build_app
from embedray.serve.backend import Encoded, rerank_or_report
from embedray.serve.batching import ModelRunQueue, Part, QueueTimeout, batch_tokens
from embedray.serve.config import ServeConfig
from embedray.serve.corpus import Hit
from embedray.serve.errors import ApiError

log = logging.getLogger(__name__)
APP_NAME = "embedray"
#: Longest a health check may take; Ray Serve restarts a replica whose checks keep failing.
HEALTH_TIMEOUT_S = 20.0


class _DropBatchSizeWarning(logging.Filter):
    """``@serve.batch`` warns when max_batch_size > max_ongoing_requests; with a token budget
    as the batch size (``batch_size_fn``) that comparison is meaningless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is larger than `max_ongoing_requests`" not in record.getMessage()


def replica_gpus(cfg: ServeConfig, have: float, replicas: int | None = None) -> float:
    """``gpus_per_replica`` as a number: as set, or (``auto``) 1 when ``have`` GPUs give one to each
    of the ``replicas`` (default: the config's) and the backend is torch, else 0."""
    if cfg.gpus_per_replica != "auto":
        return float(cfg.gpus_per_replica)
    return 1.0 if cfg.backend == "torch" and have >= (cfg.replicas if replicas is None else replicas) else 0.0


def _gpus(cfg: ServeConfig) -> float:
    """The GPUs a model replica asks for: ``auto`` not resolved against a cluster (an app built
    without :func:`start_serve`) asks for none."""
    return 0.0 if cfg.gpus_per_replica == "auto" else float(cfg.gpus_per_replica)


def _threads(cfg: ServeConfig, cpus: float) -> int:
    """Torch threads of a replica: as configured, else its Ray CPU reservation (at least 1)."""
    return cfg.torch_threads or max(1, round(cpus))


class _BatchedModel:
    """The model in a replica: ``@serve.batch`` batches of parts → :class:`ModelRunQueue`."""

    def _load_model(self, cfg: ServeConfig) -> None:
        from embedray.serve.embedder import EmbedderCore

        import ray
        import torch

        logging.getLogger("ray.serve").addFilter(_DropBatchSizeWarning())
        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        device = "cuda" if gpu_ids and cfg.backend == "torch" and torch.cuda.is_available() else "cpu"
        self.core = EmbedderCore(cfg.model_dir, corpus=cfg.corpus, index=cfg.index, index_type=cfg.index_type,
                                 max_batch_tokens=cfg.max_batch_tokens,
                                 torch_threads=_threads(cfg, cfg.cpus_per_replica), precision=cfg.precision,
                                 backend=cfg.backend, onnx_file=cfg.onnx_file, device=device, gpu_ids=gpu_ids)
        self.encode_batch.set_max_batch_size(self.core.max_batch_tokens)
        self.encode_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.runs = ModelRunQueue(self.core.encode_parts, self.core.max_batch_tokens, cfg.queue_timeout_s)

    async def check_health(self) -> None:
        """Ray Serve's health check: the model must encode a text (after the run in progress)."""
        await asyncio.wait_for(asyncio.to_thread(self.core.check), HEALTH_TIMEOUT_S)

    # Batches are handed to a ModelRunQueue, which runs the model one merged batch at a time
    # in a worker thread; hence many concurrent batches here (see ModelRunQueue for why).
    @serve.batch(max_batch_size=8192, batch_wait_timeout_s=0.005, batch_size_fn=batch_tokens,
                 max_concurrent_batches=64)
    async def encode_batch(self, parts: list[Part]) -> list[Encoded]:
        rows, stats = await self.runs.submit(parts)
        return [Encoded(r, stats if i == 0 else None) for i, r in enumerate(rows)]

    async def embed_part(self, part: Part) -> Encoded:
        return await self.encode_batch(part)

    async def search(self, part: Part, k: int) -> tuple[list[Hit], Encoded]:
        enc = await self.encode_batch(part)
        return self.core.search(enc.rows[0], k), enc

    def describe(self) -> dict[str, Any]:
        return self.core.describe()


@serve.deployment
class Embedder(_BatchedModel):
    """One model replica of the split layout: encodes batches of parts, searches the corpus."""

    def __init__(self, cfg: ServeConfig):
        self._load_model(cfg)


@serve.deployment
class Reranker:
    """The cross-encoder replica."""

    def __init__(self, cfg: ServeConfig):
        from embedray.serve.embedder import RerankerCore

        self.core = RerankerCore(cfg.cross_encoder, torch_threads=_threads(cfg, cfg.reranker_cpus),
                                 precision=cfg.precision)

    async def rerank(self, query: str, texts: list[str], truncate: bool) -> dict[str, Any]:
        return await asyncio.to_thread(rerank_or_report, self.core, query, texts, truncate)

    def max_length(self) -> int:
        return self.core.max_length

    async def check_health(self) -> None:
        """Ray Serve's health check: the cross-encoder must score a pair."""
        await asyncio.wait_for(asyncio.to_thread(self.core.check), HEALTH_TIMEOUT_S)


class RayBackend:
    """:class:`~embedray.serve.backend.Backend` over deployment handles; maps Serve's
    back-pressure and unavailability to 503 :class:`ApiError` s."""

    def __init__(self, embedder: DeploymentHandle, reranker: DeploymentHandle | None,
                 reranker_name: str | None, max_queued_requests: int, max_rerank_queued: int | None = None):
        self.embedder, self.reranker, self.reranker_name = embedder, reranker, reranker_name
        self.max_queued, self.max_rerank_queued = max_queued_requests, max_rerank_queued

    async def _call(self, response, what: str = "model", max_queued: int | None = None):
        try:
            return await response
        except BackPressureError:
            raise ApiError(503, f"server busy: the {what} queue is full (max_queued_requests="
                                f"{max_queued or self.max_queued}); retry later", "queue_full",
                           {"Retry-After": "1"}) from None
        except QueueTimeout as e:
            raise ApiError(503, f"server busy: the {what} did not take this request in time ({e}); retry later",
                           "queue_timeout", {"Retry-After": "2"}) from None
        except (DeploymentUnavailableError, RayActorError, ActorUnavailableError):
            # A replica that died mid-request (Serve starts a new one) or none up yet.
            raise ApiError(503, f"the {what} replica is unavailable; retry later", "unavailable",
                           {"Retry-After": "5"}) from None

    async def _describe_model(self) -> dict[str, Any]:
        return await self._call(self.embedder.describe.remote())

    async def describe(self) -> dict[str, Any]:
        info = await self._describe_model()
        info["reranker"] = self.reranker_name if self.reranker is not None else None
        info["reranker_max_length"] = (await self._call(self.reranker.max_length.remote(), "cross-encoder")
                                       if self.reranker is not None else None)
        return info

    async def embed_part(self, part: Part) -> Encoded:
        return await self._call(self.embedder.embed_part.remote(part))

    async def search(self, part: Part, k: int) -> tuple[list[Hit], Encoded]:
        return await self._call(self.embedder.search.remote(part, k))

    async def rerank(self, query: str, texts: list[str], truncate: bool) -> dict[str, Any]:
        if self.reranker is None:
            raise ApiError(404, "no cross-encoder is served", "no_reranker")
        return await self._call(self.reranker.rerank.remote(query, texts, truncate), "cross-encoder",
                                self.max_rerank_queued)


class ColocatedBackend(RayBackend):
    """The model in this replica (:class:`_BatchedModel`), the cross-encoder through a handle.
    Counts the parts in the replica and answers the JSON 503 beyond ``limit``."""

    def __init__(self, model: _BatchedModel, reranker: DeploymentHandle | None, reranker_name: str | None,
                 limit: int | None, max_queued_requests: int, max_rerank_queued: int | None = None):
        super().__init__(None, reranker, reranker_name, max_queued_requests, max_rerank_queued)
        self.model, self.limit, self.inflight = model, limit, 0

    async def _describe_model(self) -> dict[str, Any]:
        return self.model.describe()

    async def embed_part(self, part: Part) -> Encoded:
        if self.limit is not None and self.inflight >= self.limit:
            raise ApiError(503, f"server busy: the model queue is full (max_queued_requests="
                                f"{self.max_queued}); retry later", "queue_full", {"Retry-After": "1"})
        self.inflight += 1
        try:
            return await self.model.embed_part(part)
        finally:
            self.inflight -= 1

    async def search(self, part: Part, k: int) -> tuple[list[Hit], Encoded]:
        enc = await self.embed_part(part)
        return self.model.core.search(enc.rows[0], k), enc


@serve.deployment
@serve.ingress()
class Ingress(_BatchedModel):
    """The HTTP entry: the FastAPI app of :mod:`embedray.serve.app`, over the model in this
    replica (colocated) or over an ``Embedder`` deployment (split)."""

    def __init__(self, cfg: ServeConfig, embedder: DeploymentHandle | None, reranker: DeploymentHandle | None):
        from pathlib import Path

        name = Path(cfg.cross_encoder).name if cfg.cross_encoder else None
        self.cfg = cfg
        if embedder is None:
            self._load_model(cfg)
            limit = None if cfg.max_queued_requests == -1 else cfg.max_ongoing_requests + cfg.max_queued_requests
            self.backend = ColocatedBackend(self, reranker, name, limit, cfg.max_queued_requests,
                                            cfg.max_rerank_queued)
        else:
            self.backend = RayBackend(embedder, reranker, name, cfg.max_queued_requests, cfg.max_rerank_queued)

    async def check_health(self) -> None:
        """Colocated: the model in this replica must answer; split: the Embedder has its own check."""
        if hasattr(self, "core"):
            await super().check_health()

    async def __serve_build_asgi_app__(self):
        return await build_app(self.cfg, self.backend)


def build_serve_app(cfg: ServeConfig):
    """The Ray Serve application for ``cfg`` (pass it to ``serve.run``)."""
    env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}
    reranker = None
    if cfg.cross_encoder:
        # One pair scoring at a time is all a replica does (RerankerCore takes turns); a bounded
        # queue beyond it answers 503 instead of letting cheap requests pile up.
        reranker = Reranker.options(num_replicas=1, max_ongoing_requests=2,
                                    max_queued_requests=cfg.max_rerank_queued,
                                    ray_actor_options={"num_cpus": cfg.reranker_cpus, "runtime_env": env}
                                    ).bind(cfg)
    if cfg.colocate:
        # The replicas count their own queue (ColocatedBackend); the proxy passes everything on.
        return Ingress.options(num_replicas=cfg.replicas, max_ongoing_requests=4096, max_queued_requests=-1,
                               ray_actor_options={"num_cpus": cfg.cpus_per_replica,
                                                  "num_gpus": _gpus(cfg), "runtime_env": env}
                               ).bind(cfg, None, reranker)
    embedder = Embedder.options(
        num_replicas=cfg.replicas, max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        ray_actor_options={"num_cpus": cfg.cpus_per_replica,
                                                  "num_gpus": _gpus(cfg), "runtime_env": env}).bind(cfg)
    # The ingress takes everything the proxy sends and lets the Embedder's queue decide: its
    # BackPressureError is what becomes our JSON 503.
    return Ingress.options(num_replicas=1, max_ongoing_requests=4096, max_queued_requests=-1,
                           ray_actor_options={"num_cpus": cfg.ingress_cpus, "runtime_env": env}
                           ).bind(cfg, embedder, reranker)


BASE_APP_NAME = "embedray-base"
BASE_PREFIX = "/base"


def direct_ingress_env(cfg: ServeConfig) -> dict[str, str]:
    """The environment that turns on Ray Serve's direct ingress on ``cfg``'s replica ports.

    The Serve controller and the replicas read it when they start, so it must be in the
    environment of the process that starts Ray (``serve_forever`` sets it before a local
    ``ray.init``; for a cluster, export it before ``ray start``). The port range holds exactly one
    port per HTTP replica, so replica i answers on the first replica port + i.
    """
    first = cfg.replica_port
    if not first:
        return {}
    return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(first),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(first + cfg.http_replicas),
            # A stopped replica drains for this long (Ray's default, 30 s, is for cloud load balancers).
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


def _free_port(host: str, avoid: range) -> int:
    """A TCP port of ``host`` that is free now and outside ``avoid``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def check_ports_free(cfg: ServeConfig) -> None:
    """Raise, naming the port and the flag, when a port this server would bind is taken."""
    ports = {cfg.serve_proxy_port: "--proxy-port" if cfg.ingress == "replica" else "--port"}
    for i, url in enumerate(cfg.direct_urls):
        ports[int(url.rsplit(":", 1)[1])] = "--port" if cfg.ingress == "replica" and i == 0 else "the replica ports"
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    for port, flag in ports.items():
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((cfg.host, port))
            except OSError as e:
                raise ValueError(f"{flag}: {cfg.host}:{port} is not free ({e.strerror}); "
                                 "stop what listens there or pick another port") from None


def replica_cpus(cfg: ServeConfig, own_ray: bool, base: ServeConfig | None = None) -> float:
    """``cpus_per_replica`` as set, or (0) what the replicas can share: with a local Ray this
    process starts, the machine's cores less the reranker's and the split ingress's, split
    evenly over the replicas of ``cfg`` and ``base`` (a whole number above one CPU, as Ray
    requires); on a running cluster, 1."""
    if cfg.cpus_per_replica or not own_ray:
        return cfg.cpus_per_replica or 1.0
    left = (os.cpu_count() or 1) - (cfg.reranker_cpus if cfg.cross_encoder else 0) \
        - (0 if cfg.colocate else cfg.ingress_cpus)
    share = max(left, 0.1) / (cfg.replicas + (base.replicas if base is not None else 0))
    return float(int(share)) if share >= 1 else round(share, 2)


def resolve_layout(cfg: ServeConfig, own_ray: bool, base: ServeConfig | None = None) -> ServeConfig:
    """``cfg`` with ``ingress`` decided (and, for ``replica``, the proxy's port chosen) and the
    replicas' CPUs set (:func:`replica_cpus`).

    ``auto`` is ``replica`` only where that is both faster and complete: a local Ray this process
    starts (so the Serve processes inherit the direct-ingress environment), one HTTP replica
    (one port answers for all of it) and no second app (its replicas would take ports from the
    same range). Everywhere else it is ``proxy``.
    """
    ingress = cfg.ingress
    if ingress == "auto":
        alone = base is None and cfg.http_replicas == 1 and not cfg.direct_port
        ingress = "replica" if own_ray and alone else "proxy"
    if ingress == "replica" and base is not None:
        raise ValueError("ingress: replica serves one app; the second model (--base-model) would take "
                         "replica ports too. Use --ingress proxy, or serve it separately")
    proxy_port = cfg.proxy_port
    if ingress == "replica" and not proxy_port:
        proxy_port = _free_port(cfg.host, range(cfg.port, cfg.port + cfg.http_replicas))
    cpus = replica_cpus(cfg, own_ray, base)
    if (ingress, proxy_port, cpus) == (cfg.ingress, cfg.proxy_port, cfg.cpus_per_replica):
        return cfg
    return dataclasses.replace(cfg, ingress=ingress, proxy_port=proxy_port, cpus_per_replica=cpus)


def _wait_direct(cfg: ServeConfig, timeout_s: float = 60) -> None:
    """Raise, naming the fix, when a replica's own port does not answer ``/health``."""
    import httpx

    for url in cfg.direct_urls:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                env = " ".join(f"{k}={v}" for k, v in direct_ingress_env(cfg).items())
                raise RuntimeError(f"{url} does not answer: Ray Serve's direct ingress is off in this Ray "
                                   f"cluster (start it with {env}), or the port is taken. "
                                   "--ingress proxy serves through Ray Serve's proxy instead")
            time.sleep(0.5)


def start_serve(cfg: ServeConfig, base: ServeConfig | None = None) -> dict[str, Any]:
    """``serve.start`` and run the app at ``/``; with ``base``, a second model (e.g. the base
    model, for the UI's comparison) at ``/base`` behind the proxy. ``ingress`` ``auto`` means the
    proxy here (a caller that started Ray with :func:`direct_ingress_env` passes ``replica``).

    Returns:
        ``{"api": the URL on cfg.port, "proxy": Ray Serve's proxy, "base_api": url or None,
        "direct": [the replicas' own URLs]}``.
    """
    import ray

    cfg = resolve_layout(cfg, own_ray=False, base=base)
    have = ray.cluster_resources().get("GPU", 0.0)
    cfg = dataclasses.replace(cfg, gpus_per_replica=f"{replica_gpus(cfg, have):g}")
    if base is not None and not base.cpus_per_replica:
        base = dataclasses.replace(base, cpus_per_replica=cfg.cpus_per_replica)
    if base is not None:
        left = have - float(cfg.gpus_per_replica) * cfg.replicas
        base = dataclasses.replace(base, gpus_per_replica=f"{replica_gpus(base, left):g}")
    warning = cfg.exposure_warning()
    if warning:
        log.warning(warning)
    if cfg.direct_port and base is not None:
        raise ValueError("direct_port: serves one app; the second model (--base-model) would take "
                         "replica ports too. Serve it separately, or drop --direct-port")
    serve.start(http_options={"host": cfg.host, "port": cfg.serve_proxy_port})
    targets = [serve.RunTarget(build_serve_app(cfg), name=APP_NAME, route_prefix="/",
                               logging_config={"enable_access_log": cfg.access_log})]
    if base is not None:
        targets.append(serve.RunTarget(build_serve_app(base), name=BASE_APP_NAME, route_prefix=BASE_PREFIX,
                                       logging_config={"enable_access_log": base.access_log}))
    serve.run_many(targets)
    _wait_direct(cfg)
    proxy = cfg.url(cfg.serve_proxy_port)
    return {"api": cfg.url(cfg.port), "proxy": proxy, "base_api": proxy + BASE_PREFIX if base is not None else None,
            "direct": cfg.direct_urls, "gpus_per_replica": float(cfg.gpus_per_replica)}


def serve_forever(cfg: ServeConfig, base: ServeConfig | None = None,
                  on_ready: Callable[[dict[str, str]], Callable[[], None] | None] | None = None) -> int:
    """Start Ray (``RAY_ADDRESS`` or a local 127.0.0.1 instance), serve ``cfg`` (and ``base`` at
    ``/base``), block until Ctrl-C / SIGTERM, then shut down what was started.

    Args:
        cfg: the model to serve at ``/``.
        base: optional second model served at ``/base``.
        on_ready: called with the URLs once serving (e.g. to launch the UI); may return a
            function that stops what it started.

    Returns:
        The exit code, 0.
    """
    import ray

    from embedray.cluster.runtime import ensure_ray

    own_ray = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    cfg = resolve_layout(cfg, own_ray, base)
    if own_ray:
        check_ports_free(cfg)
        os.environ.update(direct_ingress_env(cfg))  # read by the Serve processes Ray starts
    ensure_ray()
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    cleanup = None
    try:
        urls = start_serve(cfg, base)
        print(f"embedray serving {cfg.model_name} at {urls['api']}  (OpenAPI docs: {urls['api']}/docs)", flush=True)
        if base is not None:
            print(f"embedray serving {base.model_name} at {urls['base_api']}", flush=True)
        print(f"replicas: {cfg.replicas} x {cfg.cpus_per_replica:g} CPU, {urls['gpus_per_replica']:g} GPU, "
              f"{_threads(cfg, cfg.cpus_per_replica)} torch thread(s) each", flush=True)
        if cfg.ingress == "replica":
            more = f"; the other replicas on {', '.join(urls['direct'][1:])}" if len(urls["direct"]) > 1 else ""
            print(f"ingress: the replica answers on {urls['api']} itself (no proxy hop){more}; "
                  f"Ray Serve's proxy on {urls['proxy']}", flush=True)
        elif urls["direct"]:
            print(f"ingress: Ray Serve's proxy on {urls['api']}; replica ports (no proxy hop): "
                  f"{', '.join(urls['direct'])}", flush=True)
        if cfg.api_key:
            print("API key required: send 'Authorization: Bearer <key>' (all routes but /health)", flush=True)
        if on_ready is not None:
            cleanup = on_ready(urls)
        print("Press Ctrl-C to stop.", flush=True)
        stop.wait()
        print("stopping…", flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        try:
            if cleanup is not None:
                cleanup()
        finally:
            try:
                if own_ray:
                    serve.shutdown()
                else:
                    for name in [APP_NAME] + ([BASE_APP_NAME] if base is not None else []):
                        serve.delete(name)
            finally:
                if own_ray:
                    ray.shutdown()
    return 0
