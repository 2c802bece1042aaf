"""The HTTP API (FastAPI): validation, limits, auth, metrics, and the routes.

Routes: ``POST /v1/embeddings`` (OpenAI schema), ``POST /search``, ``POST /rerank``,
``GET /health``, ``GET /info``, ``GET /metrics``. The model side is a
:class:`~embedray.serve.backend.Backend`; on Ray Serve this app is the ingress deployment
(``embedray/cluster/serve_app.py``), and it runs as is in-process for tests.

Limits (all from :class:`~embedray.serve.config.ServeConfig`): request body size
(``max_body_bytes`` → 413), texts per request (``max_items``, ``max_rerank_texts`` → 413),
characters per text (``max_chars`` → 413), tokens per text (the model's max sequence length →
413 unless ``truncate`` is true). Empty texts are a 422. Timeouts: a body not sent within
``body_timeout_s`` → 408, a batch not taken by the model within ``queue_timeout_s`` → 503, a
request the model side has not finished within ``request_timeout_s`` → 504.

Nothing that grows with the request runs on the event loop: token counting, highlighting and
response encoding run in worker threads, so ``/health`` answers while requests are worked on.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from collections.abc import Awaitable
from pathlib import Path, PurePath
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

import embedray
from embedray.models.prompts import INPUT_TYPES, role_prompt
from embedray.serve.backend import Backend, Encoded
from embedray.serve.batching import Part, QueueTimeout, reassemble, split_by_token_budget
from embedray.serve.config import ServeConfig
from embedray.serve.corpus import find_highlights, make_snippet, query_terms
from embedray.serve.embedder import TokenCounter, load_tokenizer
from embedray.serve.errors import ApiError, error_body, install_error_handlers
from embedray.serve.metrics import ServeMetrics
from embedray.serve.model_card import ModelCard, read_model_card
from embedray.serve.schemas import (EmbeddingRequest, EmbeddingResponse, ErrorResponse, ModelEntry, ModelList,
                                    RerankRequest, RerankResponse, SearchRequest, SearchResponse)

log = logging.getLogger(__name__)

ROUTES = {"/v1/embeddings", "/v1/models", "/search", "/rerank", "/health", "/info", "/metrics"}
PUBLIC_ROUTES = {"/health"}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 413, 415, 422, 503, 504)}
T = TypeVar("T")


class _Guard:
    """Pure ASGI middleware run before routing: API key, body size, content type, metrics.

    Written as raw ASGI (not ``BaseHTTPMiddleware``) because the body limit must stop reading
    a large body early, before FastAPI buffers it.
    """

    def __init__(self, app, api_key: str | None, max_body_bytes: int, metrics: ServeMetrics,
                 body_timeout_s: float = 10.0):
        self.app, self.api_key, self.max_body, self.metrics = app, api_key, max_body_bytes, metrics
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = _route_path(scope)
        start = time.perf_counter()
        status_holder = {"status": 500}

        async def send_tracking(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        self.metrics.inflight.inc()
        try:
            rejection = self._check_headers(scope, path)
            if rejection is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body, rejection = await self._read_body(scope, receive)
                if rejection is None and not body.strip():
                    rejection = _error(400, "request body is empty: send a JSON object", "empty_body")
                if rejection is None and not _is_utf8(body):
                    rejection = _error(400, "request body is not valid UTF-8 (JSON must be UTF-8)", "invalid_utf8")
                if rejection is None:
                    receive = _replay(body)
            if rejection is not None:
                await rejection(scope, receive, send_tracking)
            else:
                await self.app(scope, receive, send_tracking)
        finally:
            self.metrics.inflight.dec()
            self.metrics.observe_request(path, status_holder["status"], time.perf_counter() - start)

    def _check_headers(self, scope, path: str):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key and path not in PUBLIC_ROUTES:
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return _error(401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key",
                              {"WWW-Authenticate": "Bearer"})
            if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return _error(401, "invalid API key", "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        if scope["method"] in ("POST", "PUT", "PATCH"):
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json" and not ctype.endswith("+json"):
                return _error(415, f"unsupported content type {ctype or '(none)'!r}: send a JSON body "
                                   "with 'Content-Type: application/json'", "unsupported_media_type")
            length = headers.get("content-length")
            if length is not None:
                if not length.strip().isdigit():
                    return _error(400, "invalid Content-Length header", "invalid_content_length")
                if int(length) > self.max_body:
                    return self._too_large()
        return None

    def _too_large(self):
        return _error(413, f"request body is larger than the limit of {self.max_body} bytes; send fewer "
                           "or shorter texts per request", "body_too_large")

    async def _read_body(self, scope, receive):
        chunks, size = [], 0
        deadline = time.monotonic() + self.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return b"", _error(408, f"the request body did not arrive within {self.body_timeout_s:g} s; "
                                        "send it whole, at once", "body_timeout", {"Connection": "close"})
            if message["type"] == "http.disconnect":
                return b"", _error(400, "client disconnected while sending the body", "disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _is_utf8(body: bytes) -> bool:
    # Strict: json.loads(bytes) would let UTF-8-encoded surrogates through ('surrogatepass').
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # nothing more will come; wait for cancellation
        return {"type": "http.disconnect"}

    return receive


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None):
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


def _route_path(scope) -> str:
    path, root = scope.get("path", "/"), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


class _Service:
    """The request handling behind the routes (kept out of the route functions to stay readable)."""

    def __init__(self, config: ServeConfig, backend: Backend, info: dict[str, Any],
                 counter: TokenCounter, card: ModelCard, metrics: ServeMetrics):
        self.cfg, self.backend, self.info, self.counter, self.card = config, backend, info, counter, card
        self.metrics = metrics
        self.dim = int(info["dim"])
        self.allowed_dims = card.allowed_dims(self.dim)
        self.budget = max(int(info.get("max_batch_tokens") or config.max_batch_tokens),
                          int(info["max_seq_length"]))
        self.prompts: dict[str, str] = dict(info.get("prompts") or {})
        self.default_prompt_name: str | None = info.get("default_prompt_name")
        try:  # when the model folder was written (the models API's ``created``, Unix seconds)
            self.created = int(Path(config.model_dir).expanduser().stat().st_mtime)
        except OSError:
            self.created = 0

    def model_entry(self) -> dict[str, Any]:
        """The served model as the OpenAI models API lists one (``client.models.list()``)."""
        return {"id": self.cfg.model_name, "object": "model", "created": self.created, "owned_by": "embedray"}

    async def bounded(self, work: Awaitable[T]) -> T:
        """``await work`` within ``request_timeout_s``, else a 504 (the work is cancelled)."""
        try:
            return await asyncio.wait_for(work, self.cfg.request_timeout_s)
        except TimeoutError:
            raise ApiError(504, f"the request was not finished within request_timeout_s="
                                f"{self.cfg.request_timeout_s:g} s; send fewer or shorter texts, or retry later",
                           "timeout", {"Retry-After": "5"}) from None

    # -- input checks ---------------------------------------------------------------------------
    def check_texts(self, texts: list[str], field: str, max_items: int | None = None) -> None:
        limit = max_items or self.cfg.max_items
        if not texts:
            raise ApiError(422, f"{field}: must not be empty", "empty_input")
        if len(texts) > limit:
            raise ApiError(413, f"{field}: {len(texts)} texts is more than the limit of {limit} "
                                "per request; split the request", "too_many_inputs")
        for i, t in enumerate(texts):
            if not t.strip():
                raise ApiError(422, f"{field}[{i}]: empty text", "empty_input")
            if len(t) > self.cfg.max_chars:
                raise ApiError(413, f"{field}[{i}]: {len(t)} characters is more than the limit of "
                                    f"{self.cfg.max_chars}", "input_too_long")
            if not t.isascii():
                try:
                    t.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate escaped in the JSON (\ud800)
                    raise ApiError(422, f"{field}[{i}]: contains a lone surrogate; send valid Unicode text",
                                   "invalid_text") from None

    async def token_lengths(self, texts: list[str], truncate: bool, field: str) -> list[int]:
        limit = self.counter.max_seq_length
        lengths = await asyncio.to_thread(self.counter.count, texts)
        if not truncate:
            for i, n in enumerate(lengths):
                if n > limit:
                    raise ApiError(413, f"{field}[{i}]: {n} tokens is more than the model's maximum of "
                                        f"{limit}; shorten it or pass \"truncate\": true", "too_many_tokens")
        return [min(n, limit) for n in lengths]

    def prompt(self, input_type: str | None, prompt_name: str | None, field: str = "prompt_name",
               default_role: str | None = None) -> str:
        """The text put before each input: the named prompt, the ``input_type``'s role prompt, or
        (neither given) ``default_role``'s prompt / the model's default prompt."""
        if prompt_name is not None and input_type is not None:
            raise ApiError(422, "give input_type or prompt_name, not both: input_type picks the model's "
                                "query or document prompt, prompt_name any prompt by its name", "conflicting_prompt")
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                known = ", ".join(repr(n) for n in self.prompts) or "none: this model has no prompts"
                raise ApiError(422, f"{field}: {prompt_name!r} is not a prompt of this model; its prompts: "
                                    f"{known} (GET /info)", "unknown_prompt")
            return self.prompts[prompt_name]
        role = INPUT_TYPES[input_type] if input_type is not None else default_role
        if role is not None:
            return role_prompt(self.prompts, self.default_prompt_name, role)
        return self.prompts.get(self.default_prompt_name, "") if self.default_prompt_name else ""

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.cfg.model_name:
            raise ApiError(404, f"model {model!r} is not served here; this server serves "
                                f"{self.cfg.model_name!r}", "model_not_found")

    # -- embedding ------------------------------------------------------------------------------
    def queue_timeout(self) -> ApiError:
        return ApiError(503, f"server busy: the model did not take this request within queue_timeout_s="
                             f"{self.cfg.queue_timeout_s:g} s; retry later", "queue_timeout", {"Retry-After": "2"})

    async def _encode_part(self, part: Part) -> Encoded:
        self.metrics.queue_depth.inc()
        try:
            enc = await self.backend.embed_part(part)
        except QueueTimeout:
            raise self.queue_timeout() from None
        finally:
            self.metrics.queue_depth.dec()
        if enc.batch is not None:
            self.metrics.observe_batch(enc.batch["texts"], enc.batch["tokens"])
        return enc

    async def embed(self, texts: list[str], lengths: list[int]) -> np.ndarray:
        """Split into budget-sized parts, embed them concurrently, reassemble: ``(n, dim)``."""
        parts = split_by_token_budget(texts, lengths, self.budget)
        tasks = [asyncio.ensure_future(self._encode_part(p)) for p in parts]
        try:
            encoded = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        self.metrics.texts.inc(len(texts))
        self.metrics.tokens.inc(sum(lengths))
        return reassemble(parts, [e.rows for e in encoded], len(texts))

    def truncate_dims(self, emb: np.ndarray, dimensions: int | None) -> np.ndarray:
        if dimensions is None or dimensions == self.dim:
            return emb
        if dimensions not in self.allowed_dims:
            raise ApiError(422, f"dimensions: {dimensions} is not supported by this model; choose one of "
                                f"{self.allowed_dims} (the Matryoshka dimensions it was trained for)",
                           "unsupported_dimensions")
        out = emb[:, :dimensions]  # (n, dimensions)
        if self.info.get("normalized"):
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(out, dtype=np.float32)

    async def embeddings(self, req: EmbeddingRequest) -> bytes:
        """The JSON body of a ``/v1/embeddings`` answer (serialized off the event loop)."""
        self.check_model(req.model)
        if req.dimensions is not None and req.dimensions not in self.allowed_dims:
            self.truncate_dims(np.zeros((0, self.dim), np.float32), req.dimensions)  # raises the 422
        prompt = self.prompt(req.input_type, req.prompt_name)
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        self.check_texts(texts, "input")
        if prompt:
            texts = [prompt + t for t in texts]
        lengths = await self.token_lengths(texts, req.truncate, "input")
        emb = await self.embed(texts, lengths)
        return await asyncio.to_thread(self._embedding_body, emb, req, sum(lengths))

    def _embedding_body(self, emb: np.ndarray, req: EmbeddingRequest, tokens: int) -> bytes:
        emb = self.truncate_dims(emb, req.dimensions)
        if req.encoding_format == "base64":
            vectors: list[Any] = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in emb]
        else:
            vectors = emb.tolist()
        return orjson.dumps({"object": "list", "model": self.cfg.model_name,
                             "data": [{"object": "embedding", "index": i, "embedding": v}
                                      for i, v in enumerate(vectors)],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    # -- search and rerank ----------------------------------------------------------------------
    def require_corpus(self) -> None:
        if not self.info.get("corpus_size"):
            raise ApiError(404, "no corpus is served: start the server with --corpus (a BEIR folder or "
                                "a JSONL of {_id, title, text}) to use /search", "no_corpus")

    def require_reranker(self, what: str) -> None:
        if not self.info.get("reranker"):
            raise ApiError(404, f"no cross-encoder is served: start the server with --cross-encoder DIR "
                                f"to use {what}", "no_reranker")

    async def search(self, req: SearchRequest) -> dict[str, Any]:
        self.require_corpus()
        if req.rerank:
            self.require_reranker("rerank on /search")
        for name in ("top_k", "rerank_top_n"):
            value = getattr(req, name)
            if value is not None and value > self.cfg.max_top_k:
                raise ApiError(422, f"{name}: {value} is more than the limit of {self.cfg.max_top_k}",
                               "top_k_too_large")
        prompt = self.prompt(req.input_type, req.prompt_name, default_role="query")
        self.check_texts([req.query], "query")
        lengths = await self.token_lengths([prompt + req.query], req.truncate, "query")
        top_k = req.top_k or min(10, self.cfg.max_top_k)
        n_candidates = (req.rerank_top_n or max(top_k, 20)) if req.rerank else top_k
        n_candidates = min(max(n_candidates, top_k), self.cfg.max_top_k)
        self.metrics.queue_depth.inc()
        try:
            hits, enc = await self.backend.search(Part([prompt + req.query], lengths, [0]), n_candidates)
        except QueueTimeout:
            raise self.queue_timeout() from None
        finally:
            self.metrics.queue_depth.dec()
        if enc.batch is not None:
            self.metrics.observe_batch(enc.batch["texts"], enc.batch["tokens"])
        rerank_scores: list[float | None] = [None] * len(hits)
        if req.rerank and hits:
            texts = [f"{h.title} {h.text}".strip() if h.title else h.text for h in hits]
            out = await self.backend.rerank(req.query, texts, True)
            rerank_scores = list(out["scores"])
        order = sorted(range(len(hits)), key=lambda i: -(rerank_scores[i] if req.rerank else hits[i].score))
        results = await asyncio.to_thread(self._search_results, req.query, hits, order[:top_k], rerank_scores,
                                          req.rerank)
        return {"object": "search_results", "query": req.query, "model": self.cfg.model_name,
                "reranked": bool(req.rerank), "results": results,
                "usage": {"prompt_tokens": sum(lengths), "total_tokens": sum(lengths)}}

    def _search_results(self, query: str, hits: list, order: list[int], rerank_scores: list,
                        reranked: bool) -> list[dict[str, Any]]:
        """Ranked results with snippets and highlights (linear in query and texts)."""
        terms = query_terms(query)
        results = []
        for rank, i in enumerate(order, start=1):
            h = hits[i]
            snippet, spans = make_snippet(h.text, terms, self.cfg.snippet_chars)
            final = rerank_scores[i] if reranked else h.score
            results.append({"rank": rank, "id": h.id, "title": h.title, "snippet": snippet,
                            "highlights": spans, "title_highlights": find_highlights(h.title, terms),
                            "score": final, "retrieval_score": h.score, "rerank_score": rerank_scores[i]})
        return results

    async def rerank(self, req: RerankRequest) -> dict[str, Any]:
        self.require_reranker("/rerank")
        self.check_texts([req.query], "query")
        self.check_texts(req.texts, "texts", self.cfg.max_rerank_texts)
        out = await self.backend.rerank(req.query, list(req.texts), req.truncate)
        if "too_long" in out:
            i = out["too_long"][0]
            raise ApiError(413, f"texts[{i}]: the (query, text) pair is longer than the cross-encoder's "
                                f"maximum of {out['max_length']} tokens ({len(out['too_long'])} such "
                                "texts); shorten them or pass \"truncate\": true", "too_many_tokens")
        scores = out["scores"]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[:req.top_n or len(scores)]
        return {"object": "rerank_results", "model": self.info["reranker"],
                "results": [{"index": i, "score": scores[i], "text": req.texts[i] if req.return_text else None}
                            for i in order]}

    def describe(self) -> dict[str, Any]:
        cfg = self.cfg
        return without_paths({
            "model": cfg.model_name, "version": embedray.__version__, "dim": self.dim,
            "dimensions": self.allowed_dims, "max_tokens": self.counter.max_seq_length,
            "normalized": bool(self.info.get("normalized")), "precision": self.info.get("precision"),
            "backend": self.info.get("backend", "torch"), "onnx_file": self.info.get("onnx_file"),
            "converted": bool(self.info.get("converted")),
            "device": self.info.get("device", "cpu"), "gpu_ids": self.info.get("gpu_ids", []),
            "base_model": self.card.base_model,
            "prompts": self.prompts, "default_prompt_name": self.default_prompt_name,
            "metrics": self.card.metrics, "training": self.card.training,
            "corpus": {"documents": int(self.info.get("corpus_size") or 0),
                       "index_type": self.info.get("index_type")} if self.info.get("corpus_size")
            else None,
            "reranker": self.info.get("reranker"),
            "auth": bool(cfg.api_key), "ingress": cfg.ingress,
            "limits": {**cfg.limits(), "max_batch_tokens": self.budget}})


def without_paths(value: Any) -> Any:
    """``value`` with every absolute filesystem path replaced by its last component: a public
    route shows what a model is, not where the server keeps its files."""
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_paths(v) for v in value]
    if isinstance(value, str) and (value.startswith(("/", "~", "\\\\")) or value[1:3] in (":\\", ":/")):
        return PurePath(value).name or value
    return value


def create_app(config: ServeConfig, backend: Backend, info: dict[str, Any], counter: TokenCounter,
               card: ModelCard | None = None) -> FastAPI:
    """Build the FastAPI app.

    Args:
        config: limits, names and the API key.
        backend: the model side (``RayBackend`` on Ray Serve, :class:`LocalBackend` in-process).
        info: ``backend.describe()``.
        counter: token counter of the served model.
        card: the model folder's ``embedray.json`` (read from ``config.model_dir`` when ``None``).

    Returns:
        The app, with the error handlers and the guard middleware installed.
    """
    card = card if card is not None else read_model_card(config.model_dir)
    metrics = ServeMetrics(ROUTES)
    svc = _Service(config, backend, info, counter, card, metrics)
    app = FastAPI(title="embedray", version=embedray.__version__, debug=False,
                  description="Embeddings (OpenAI-compatible), search and rerank for an embedray model.")
    install_error_handlers(app)
    app.state.service = svc

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
    async def embeddings(req: EmbeddingRequest) -> Response:
        # Serialized with orjson by the service: the body is built from numpy rows and needs no
        # second validation pass through the response model (which stays for the OpenAPI schema).
        return Response(await svc.bounded(svc.embeddings(req)), media_type="application/json")

    @app.post("/search", response_model=SearchResponse, responses=ERROR_RESPONSES)
    async def search(req: SearchRequest) -> dict[str, Any]:
        return await svc.bounded(svc.search(req))

    @app.post("/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES)
    async def rerank(req: RerankRequest) -> dict[str, Any]:
        return await svc.bounded(svc.rerank(req))

    @app.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [svc.model_entry()]}

    @app.get("/v1/models/{model_id:path}", response_model=ModelEntry, responses=ERROR_RESPONSES)
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != config.model_name:
            raise ApiError(404, f"model {model_id!r} is not served here; this server serves "
                                f"{config.model_name!r} (GET /v1/models)", "model_not_found")
        return svc.model_entry()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def info_route() -> dict[str, Any]:
        return svc.describe()

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    app.add_middleware(_Guard, api_key=config.api_key, max_body_bytes=config.max_body_bytes, metrics=metrics,
                       body_timeout_s=config.body_timeout_s)
    return app


async def build_app(config: ServeConfig, backend: Backend) -> FastAPI:
    """Ask ``backend`` what it serves, load the tokenizer and the model card, and build the app."""
    info = await backend.describe()
    counter = TokenCounter(load_tokenizer(config.model_dir), int(info["max_seq_length"]))
    return create_app(config, backend, info, counter, read_model_card(config.model_dir))
