"""Configuration of the serving stage: what is served, where, and the limits it enforces."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

API_KEY_ENV = "EMBEDRAY_API_KEY"
#: Who answers on ``ServeConfig.port`` (``auto`` is resolved when the server starts).
INGRESS = ("auto", "replica", "proxy")


@dataclass
class ServeConfig:
    """Settings for ``embedray serve`` (the Ray Serve app) and its HTTP limits.

    Attributes:
        model_dir: sentence-transformers folder to serve (``embedray.json`` beside it gives the
            Matryoshka dims and training metrics shown by ``/info``).
        corpus: BEIR folder (its ``corpus.jsonl`` is read) or a JSONL file of ``{_id,title,text}``;
            indexed with FAISS at start-up for ``/search``. ``None``: ``/search`` answers 404.
            ``embedray serve --corpus`` also takes an ``s3://`` (``gs://``, ``hdfs://``) URI of
            either, mirrored once into ``$EMBEDRAY_CACHE/.data``.
        index: a folder for the index over ``corpus``: when it holds one (a ``VectorIndex`` folder
            or an ``IndexStore`` root with ``LATEST``) built with this model's weights and document
            prompt, it is loaded instead of encoding the corpus (an index from other weights is
            refused); else the corpus is encoded at start-up and its index saved there.
        index_type: how the corpus index built at start-up stores vectors: ``flat`` (exact fp32),
            ``int8`` (FAISS scalar quantizer, 4x smaller) or ``binary`` (sign bits, 32x smaller,
            top candidates rescored with the fp32 vectors). A saved ``index`` keeps the type it
            was built with; ``/info`` shows the type served.
        cross_encoder: folder that ``sentence_transformers.CrossEncoder`` loads; enables
            ``/rerank`` and ``/search``'s ``rerank`` option. ``None``: those answer 404.
        model_name: name reported in responses and accepted in the ``model`` field; defaults to
            the model folder's name.
        host: HTTP bind address. Loopback by default; binding elsewhere without an API key warns.
        port: HTTP port: the URL clients use, whichever ``ingress`` answers on it.
        ingress: who answers on ``port``. ``replica``: the model replica itself (Ray Serve's
            direct ingress: no proxy hop, the fastest layout on one node); with more HTTP
            replicas they answer on ``port``+1, … (put a load balancer over them), and Ray
            Serve's proxy listens on ``proxy_port``. ``proxy``: Ray Serve's HTTP proxy, which
            spreads the requests over every replica. ``auto`` (default): ``replica`` when
            ``embedray serve`` starts its own local Ray for one HTTP replica and one model,
            ``proxy`` otherwise (a running cluster, several replicas, a ``--base-model``).
        proxy_port: Ray Serve's proxy port with ``ingress`` replica; 0 (default): a free port
            of ``host`` chosen at start.
        api_key: if set, every route but ``/health`` needs ``Authorization: Bearer <key>``.
            Falls back to ``api_key_file``, then to the ``EMBEDRAY_API_KEY`` environment variable.
            (The command line takes only the file or the variable: a key in argv is visible to
            every user of the machine.)
        api_key_file: a file whose content (stripped) is the API key, e.g. one readable only by
            the server's user.
        replicas: embedding-model replicas (each holds the model and the corpus index); one per
            core to use, e.g. 2 with ``cpus_per_replica`` 0.9 on a 2-core machine.
        cpus_per_replica: Ray CPUs reserved per model replica (fractional on small machines).
            0 (default): with the local Ray ``embedray serve`` starts, the machine's cores left
            by the reranker (and the split layout's ingress) shared among the replicas (whole
            CPUs above one, as Ray requires); on a running cluster, 1.
        gpus_per_replica: Ray GPUs per model replica (``1``, ``0.5``, …; the torch backend then
            runs the model on the GPU Ray assigns). ``auto`` (default): 1 when the Ray cluster has
            a GPU for every model replica and the backend is torch, else 0. The cross-encoder
            replica stays on the CPU.
        torch_threads: intra-op threads per model replica; 0 follows the replica's Ray CPU
            reservation (at least 1), Ray's own OMP_NUM_THREADS convention. More threads than
            reserved cores thrash badly when the machine is busy.
        precision: compute precision of the served transformers (model, base model,
            cross-encoder): ``auto`` = bf16 where the hardware runs it fast (CUDA bf16, a CPU with
            AMX-BF16 or AVX512-BF16), ``fp32`` or ``bf16``; pooling and scores stay fp32.
        backend: what runs the embedding model's transformer: ``torch``, ``onnx`` (onnxruntime
            on the folder's ``onnx/`` export from ``embedray export MODEL --format onnx``, in that
            file's precision), ``openvino`` (the OpenVINO runtime on the folder's ``openvino/``
            export from ``embedray export MODEL --format openvino``, in ``precision``) or
            ``auto`` (the default): with ``precision`` ``auto``, ``openvino`` on the int8 file
            where the folder has one whose quality check passed (``--quantize int8 --calibration
            BEIR_DIR``), else ``openvino`` where the folder
            has that export, the runtime is installed and the CPU has bf16 units, else ``onnx``
            on the int8 file where the folder has one (``--quantize int8``) and onnxruntime is
            installed, else (with ``convert``) ``openvino`` on a converted copy where the CPU has
            bf16 units, no GPU is in sight and the folder converts, else ``torch``; resolved here,
            so ``backend`` and ``onnx_file`` name what runs. The base model resolves its own; the
            cross-encoder stays on torch.
        onnx_file: the file under ``MODEL/onnx/`` the ``onnx`` backend runs: ``model.onnx`` (fp32)
            or ``model_qint8_avx512_vnni.onnx`` (int8, from ``--quantize int8``); for the
            ``openvino`` backend, ``openvino_model_qint8_quantized.xml`` runs its int8 file
            (any name not ending in ``.xml`` runs ``openvino/openvino_model.xml``).
        convert: the ``openvino`` backend on a folder without an ``openvino/`` export (``auto``
            picks it where it is the fastest backend) converts the folder once into
            ``$EMBEDRAY_CACHE/openvino/`` (``embedray export --format openvino`` of a copy, keyed
            by the folder's content, on each machine that runs a replica) and serves the copy;
            ``--no-convert`` keeps ``auto`` on torch and makes ``--backend openvino`` need the export.
        max_ongoing_requests: batch parts one model replica accepts at once (they form batches).
        max_queued_requests: batch parts waiting for a replica before new ones get a 503.
            -1 means unlimited.
        max_batch_tokens: token budget of one forward pass; larger requests are split into
            parts that fit, never refused.
        batch_wait_timeout_s: how long a batch waits to fill up before it runs.
        max_items: most texts in one ``/v1/embeddings`` request.
        max_chars: most characters in one text (inputs, queries, rerank texts).
        max_rerank_texts: most texts in one ``/rerank`` request (TEI's default client batch
            is 32; every text is a cross-encoder forward over the query and the text).
        max_rerank_queued: cross-encoder requests that may wait for the reranker replica; beyond
            them a 503 ``queue_full``.
        body_timeout_s: longest a client may take to send its request body; a half-sent body is
            dropped with a 408.
        queue_timeout_s: longest a batch waits for the model before a 503 ``queue_timeout``
            (with ``Retry-After``).
        request_timeout_s: longest the model side may work on one request (all its parts,
            search and rerank included) before a 504 ``timeout``.
        max_body_bytes: largest request body accepted (larger ones get a 413).
        max_top_k: largest ``top_k`` / ``rerank_top_n`` of ``/search``.
        snippet_chars: length of the text snippets ``/search`` returns.
        ingress_cpus: Ray CPUs reserved for the HTTP ingress replica (split layout only; colocated
            replicas reserve ``cpus_per_replica``).
        reranker_cpus: Ray CPUs reserved for the cross-encoder replica.
        access_log: log every request in the replicas' logs (costs CPU under load).
        colocate: run the model inside the HTTP replicas (one hop less per request: the fastest
            layout on a few cores); ``replicas`` then counts HTTP+model replicas. Off: a separate
            ``Embedder`` deployment behind one ingress replica (scale the model on its own).
        direct_port: 0 (default): no extra ports. N (with ``ingress`` proxy): each HTTP replica
            also serves the whole app itself on N, N+1, … beside the proxy on ``port`` (Ray
            Serve's direct ingress; put a load balancer over the ports for several replicas).
    """

    model_dir: str
    corpus: str | None = None
    index: str | None = None
    index_type: str = "flat"
    cross_encoder: str | None = None
    model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    ingress: str = "auto"
    proxy_port: int = 0
    api_key: str | None = None
    api_key_file: str | None = None
    replicas: int = 1
    cpus_per_replica: float = 0.0
    gpus_per_replica: str = "auto"
    torch_threads: int = 0
    precision: str = "auto"
    backend: str = "auto"
    onnx_file: str = "model.onnx"
    convert: bool = True
    max_ongoing_requests: int = 64
    max_queued_requests: int = 256
    max_batch_tokens: int = 8192
    batch_wait_timeout_s: float = 0.005
    max_items: int = 2048
    max_chars: int = 32_768
    max_rerank_texts: int = 64
    max_rerank_queued: int = 32
    body_timeout_s: float = 10.0
    queue_timeout_s: float = 30.0
    request_timeout_s: float = 60.0
    max_body_bytes: int = 8 * 1024 * 1024
    max_top_k: int = 100
    snippet_chars: int = 240
    ingress_cpus: float = 0.1
    reranker_cpus: float = 0.5
    access_log: bool = False
    colocate: bool = True
    direct_port: int = 0

    def __post_init__(self) -> None:
        model = Path(self.model_dir).expanduser()
        if not model.is_dir():
            raise ValueError(f"model_dir: {model} is not a folder (expected a sentence-transformers "
                             "folder, e.g. the export of a pipeline run)")
        self.model_dir = str(model.resolve())
        if self.corpus is not None:
            corpus = Path(self.corpus).expanduser()
            if not corpus.exists():
                raise ValueError(f"corpus: {corpus} does not exist (a BEIR folder or a JSONL file)")
            self.corpus = str(corpus.resolve())
        if self.index is not None:
            if self.corpus is None:
                raise ValueError("index: needs a corpus (--corpus) whose documents it indexes")
            index = Path(self.index).expanduser()
            if index.exists() and not index.is_dir():
                raise ValueError(f"index: {index} is not a folder (a saved VectorIndex or an IndexStore)")
            if not index.exists() and not index.parent.is_dir():
                raise ValueError(f"index: {index.parent} does not exist (the index is saved in {index.name}/ "
                                 "at the first start)")
            self.index = str(index.resolve())
        from embedray.mining.index import INDEX_TYPES

        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index_type: must be one of {', '.join(INDEX_TYPES)}, got {self.index_type!r}")
        if self.cross_encoder is not None:
            ce = Path(self.cross_encoder).expanduser()
            if not (ce / "config.json").is_file():
                raise ValueError(f"cross_encoder: {ce} is not a model folder (no config.json)")
            self.cross_encoder = str(ce.resolve())
        if self.model_name is None:
            self.model_name = Path(self.model_dir).name
        if self.api_key is None and self.api_key_file is not None:
            self.api_key = read_api_key_file(self.api_key_file)
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        if not 0 < self.port < 65536:
            raise ValueError(f"port: {self.port} is not a TCP port (1..65535)")
        self._check_ingress()
        if self.direct_port and not (0 < self.direct_port and self.direct_port + self.http_replicas <= 65536):
            raise ValueError(f"direct_port: {self.direct_port} is not a TCP port (1..65535) with room for "
                             f"{self.http_replicas} replica port(s)")
        if self.direct_port and self.direct_port <= self.port < self.direct_port + self.http_replicas:
            raise ValueError(f"direct_port: the replica ports {self.direct_port}..."
                             f"{self.direct_port + self.http_replicas - 1} include the proxy's port {self.port}")
        positive = ("replicas", "max_ongoing_requests", "max_batch_tokens", "max_items", "max_chars",
                    "max_body_bytes", "max_top_k", "snippet_chars", "max_rerank_texts", "max_rerank_queued")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_queued_requests < -1 or self.max_queued_requests == 0:
            raise ValueError("max_queued_requests: must be >= 1, or -1 for unlimited, "
                             f"got {self.max_queued_requests}")
        for name in ("body_timeout_s", "queue_timeout_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0 seconds, got {getattr(self, name)}")
        for name in ("cpus_per_replica", "ingress_cpus", "reranker_cpus", "batch_wait_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.gpus_per_replica != "auto":
            try:
                gpus = float(self.gpus_per_replica)
            except (TypeError, ValueError):
                gpus = -1.0
            if not gpus >= 0:
                raise ValueError(f"gpus_per_replica: must be 'auto' or a number >= 0, got {self.gpus_per_replica!r}")
            self.gpus_per_replica = f"{gpus:g}"
        from embedray.models.config import check_precision

        check_precision(self.precision)
        self._check_backend()
        if self.torch_threads < 0:
            raise ValueError(f"torch_threads: must be >= 0 (0 = the Ray CPU reservation), got {self.torch_threads}")

    def _check_ingress(self) -> None:
        """``ingress`` is known and its ports do not collide."""
        if self.ingress not in INGRESS:
            raise ValueError(f"ingress: must be one of {', '.join(INGRESS)}, got {self.ingress!r}")
        if not 0 <= self.proxy_port < 65536:
            raise ValueError(f"proxy_port: {self.proxy_port} is not a TCP port (1..65535, or 0 for a free one)")
        if self.ingress != "replica":
            return
        if self.direct_port:
            raise ValueError(f"direct_port: with ingress replica the replica itself answers on port {self.port} "
                             "(and the next ports for more replicas); drop --direct-port")
        if self.port + self.http_replicas > 65536:
            raise ValueError(f"port: {self.port} leaves no room for {self.http_replicas} replica ports")
        if self.port <= self.proxy_port < self.port + self.http_replicas:
            raise ValueError(f"proxy_port: {self.proxy_port} is one of the replica ports "
                             f"{self.port}..{self.port + self.http_replicas - 1}")

    def _check_backend(self) -> None:
        """``backend`` is known (``auto`` resolved), its packages are installed, the ONNX file exists."""
        from embedray.models.backends import (OPENVINO_FILE, auto_backend, onnx_path, openvino_path, require_onnx,
                                              require_openvino)
        from embedray.models.config import check_backend
        from embedray.models.export import openvino_conversion_blocker

        if self.backend == "auto":
            self.backend, self.onnx_file = auto_backend(self.model_dir, self.precision, self.onnx_file)
            if self.backend == "torch" and self._converts_to_openvino():
                self.backend = "openvino"
        check_backend(self.backend, allow_auto=True)
        if self.backend == "onnx":
            if self.precision == "bf16":
                raise ValueError("precision: bf16 applies to the torch backend; the onnx backend runs "
                                 f"{self.onnx_file} in its own precision (leave precision at auto)")
            require_onnx()
            try:
                onnx_path(self.model_dir, self.onnx_file)
            except FileNotFoundError as e:
                raise ValueError(f"onnx_file: {e}") from None
        if self.backend == "openvino":
            require_openvino()
            try:
                openvino_path(self.model_dir, self.onnx_file)
            except FileNotFoundError as e:
                if self.onnx_file.endswith(".xml") and self.onnx_file != OPENVINO_FILE:
                    raise ValueError(f"onnx_file: {e}") from None  # a conversion writes no int8 file
                why = openvino_conversion_blocker(self.model_dir) if self.convert else "--no-convert"
                if why is not None:
                    raise ValueError(f"backend: {e} (and it is not converted on load: {why})") from None

    def _converts_to_openvino(self) -> bool:
        """Whether ``auto`` serves a converted OpenVINO copy: conversion on, precision ``auto`` on a
        CPU with bf16 units, no GPU asked for or visible here, and the folder converts."""
        import torch

        from embedray.models.export import openvino_conversion_blocker
        from embedray.models.precision import cpu_bf16_is_fast

        if not self.convert or self.precision != "auto" or not cpu_bf16_is_fast():
            return False
        if self.gpus_per_replica not in ("auto", "0") or torch.cuda.is_available():
            return False
        return openvino_conversion_blocker(self.model_dir) is None

    def limits(self) -> dict[str, float | int]:
        """The limits and timeouts clients see in ``/info``."""
        names = ("max_items", "max_chars", "max_body_bytes", "max_top_k", "max_rerank_texts", "max_rerank_queued",
                 "body_timeout_s", "queue_timeout_s", "request_timeout_s")
        return {n: getattr(self, n) for n in names}

    @property
    def http_replicas(self) -> int:
        """Replicas that answer HTTP: every model replica colocated, the one ingress when split."""
        return self.replicas if self.colocate else 1

    @property
    def replica_port(self) -> int:
        """The first HTTP replica's own port (Ray Serve's direct ingress), 0 when it has none."""
        return self.port if self.ingress == "replica" else self.direct_port

    @property
    def serve_proxy_port(self) -> int:
        """The port Ray Serve's proxy listens on."""
        return self.proxy_port if self.ingress == "replica" else self.port

    def url(self, port: int) -> str:
        """``http://host:port`` (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    @property
    def direct_urls(self) -> list[str]:
        """The replicas' own URLs (``ingress`` replica or ``direct_port``; none without)."""
        first = self.replica_port
        return [self.url(first + i) for i in range(self.http_replicas)] if first else []

    @property
    def binds_loopback(self) -> bool:
        """Whether ``host`` is a loopback address (``localhost`` counts)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def exposure_warning(self) -> str | None:
        """A warning when the server is reachable from other machines without an API key."""
        if self.binds_loopback or self.api_key:
            return None
        return (f"serving on {self.host}:{self.port} without an API key: anyone who can reach this "
                f"address can use the server. Pass --api-key or set {API_KEY_ENV}.")


def read_api_key_file(path: str | Path) -> str:
    """The API key in ``path`` (surrounding whitespace stripped).

    Raises:
        ValueError: the file is missing, unreadable or empty.
    """
    file = Path(path).expanduser()
    try:
        key = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"api_key_file: cannot read {file} ({e})") from None
    if not key:
        raise ValueError(f"api_key_file: {file} is empty; put the API key in it")
    return key
