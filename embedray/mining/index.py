"""A FAISS vector index over string ids, saved atomically, and a store of published versions.

``VectorIndex`` wraps any FAISS ``index_factory`` string: exact inner product (``"Flat"``, the
default, right for corpora up to a few million vectors on CPU) or approximate ones such as
``"IVF1024,Flat"``, ``"IVF4096,PQ64"`` or ``"HNSW32"`` for large corpora. FAISS only knows int64
positions, so the index keeps the list of string ids beside it.

``index_type`` picks how the vectors are stored (``IndexConfig`` documents each choice):

- ``"flat"``: the ``factory`` string as given (``"Flat"`` = exact fp32 inner product);
- ``"int8"``: FAISS's scalar quantizer (``"SQ8"``): one byte per dimension, a per-dimension
  range trained on the vectors; scores come from the codes, no fp32 copy is kept (4x smaller);
- ``"binary"``: one sign bit per dimension in a ``faiss.IndexBinaryFlat`` (Hamming distance,
  32x smaller), whose ``k * rescore_factor`` nearest codes are rescored by the exact fp32 inner
  product. The fp32 vectors live beside the codes: in RAM after :meth:`VectorIndex.build`,
  memory-mapped from ``vectors.npy`` after :meth:`VectorIndex.load`, so a loaded index reads only
  the rows it rescores and the OS may evict the rest.

int8 and binary indexes always search on CPU: FAISS has GPU versions of neither exhaustive
``IndexScalarQuantizer`` nor of this rescoring (``use_gpu=True`` is refused for them).

``IndexStore`` is how a refresher hands an index to readers while they keep working: it builds
each version aside (``v7.tmp-*``), renames it to ``v7/`` and only then moves the ``LATEST``
pointer (temp file + ``os.replace``). A reader that follows ``LATEST`` never sees a half-written
index, and a crash anywhere before the pointer moves leaves the previous version in place.

faiss-gpu is optional: with ``use_gpu="auto"`` an index moves to the current GPU when the installed faiss
reports a GPU (``faiss.get_num_gpus() > 0``) and stays on CPU otherwise; nothing changes on CPU.
The CPU index stays beside a GPU copy and answers the searches deeper than faiss-gpu's k limit.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from embedray.atomic import atomic_dir, write_text_atomic

log = logging.getLogger(__name__)

Metric = Literal["ip", "l2"]
UseGpu = bool | Literal["auto"]
IndexType = Literal["flat", "int8", "binary"]
#: The largest k faiss-gpu's k-selection takes; a deeper search of a GPU index runs on its CPU copy.
GPU_MAX_K = 2048

#: The accepted ``index_type`` values (for configs that validate them).
INDEX_TYPES: tuple[str, ...] = ("flat", "int8", "binary")
#: Newest ``meta.json`` format read here. Format 2 adds binary indexes (``vectors.npy``); flat and
#: int8 indexes are still written as format 1, which older embedray versions read.
FORMAT_VERSION = 2
_FILES = ("index.faiss", "ids.json", "meta.json")
_VECTORS = "vectors.npy"
_INT8_FACTORY = "SQ8"
#: Default binary candidate pool per result (the README has the measurements behind it).
DEFAULT_RESCORE_FACTOR = 10
_BINARY_FACTORY = "BFlat"  # faiss.index_binary_factory's name for IndexBinaryFlat
#: Floats materialised at once while rescoring binary candidates (bounds the temporary memory).
_RESCORE_CHUNK_FLOATS = 1 << 22


@dataclass
class IndexConfig:
    """How to build a :class:`VectorIndex` (the ``index`` section of a mining config).

    Attributes:
        factory: a FAISS ``index_factory`` string. ``"Flat"`` is exact search; ``"IVF<nlist>,Flat"``
            (nlist about 4·sqrt(n)), ``"IVF<nlist>,PQ<m>"`` or ``"HNSW<M>"`` trade recall for speed
            on large corpora. IVF and PQ are trained on the vectors being indexed.
        metric: ``"ip"`` (inner product; cosine for normalized vectors) or ``"l2"``.
        nprobe: IVF lists visited per query (more = higher recall, slower).
        hnsw_ef_search: HNSW candidate-list size at query time (more = higher recall, slower).
        use_gpu: ``"auto"`` uses faiss-gpu when a GPU is visible, ``True`` requires it,
            ``False`` never uses it. int8 and binary indexes search on CPU (``True`` is
            refused for them).
        index_type: ``"flat"`` builds ``factory`` as given; ``"int8"`` (FAISS ``SQ8``, 4x smaller,
            scored from the codes) and ``"binary"`` (sign bits, 32x smaller, top candidates
            rescored with the fp32 vectors) are exhaustive quantized indexes that need
            ``factory`` left at ``"Flat"``.
        rescore_factor: a binary index rescores the ``k * rescore_factor`` nearest codes (by
            Hamming distance) with the exact fp32 scores; larger = closer to flat, slower.
            Ignored by the other types.
    """

    factory: str = "Flat"
    metric: Metric = "ip"
    nprobe: int = 32
    hnsw_ef_search: int = 128
    use_gpu: UseGpu = "auto"
    index_type: IndexType = "flat"
    rescore_factor: int = DEFAULT_RESCORE_FACTOR

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise ValueError("index.factory must be a FAISS index_factory string such as 'Flat' "
                             "or 'IVF256,Flat'")
        if self.metric not in ("ip", "l2"):
            raise ValueError(f"index.metric must be 'ip' or 'l2', got {self.metric!r}")
        for name in ("nprobe", "hnsw_ef_search", "rescore_factor"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"index.{name} must be a positive integer, got {value!r}")
        if self.use_gpu not in (True, False, "auto"):
            raise ValueError(f"index.use_gpu must be true, false or 'auto', got {self.use_gpu!r}")
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index.index_type must be one of {', '.join(INDEX_TYPES)}, "
                             f"got {self.index_type!r}")
        if self.index_type != "flat" and self.factory.strip() != "Flat":
            raise ValueError(f"index.index_type {self.index_type!r} is an exhaustive quantized index "
                             f"and cannot be combined with factory {self.factory!r}; leave factory "
                             "at 'Flat', or keep index_type 'flat' and give a factory such as "
                             "'IVF1024,SQ8'")
        if self.index_type != "flat" and self.use_gpu is True:
            raise ValueError(f"index.use_gpu=True: {self.index_type} indexes search on CPU (FAISS "
                             "has no GPU version of them); set use_gpu to 'auto' or false, or keep "
                             "index_type 'flat' with a GPU factory such as 'Flat' or 'IVF1024,SQ8'")


def _faiss():
    import faiss  # imported lazily: faiss-cpu or faiss-gpu, whichever is installed

    return faiss


def _gpu_ordinal() -> int:
    """The GPU to put an index on: torch's current device where torch has picked one (a Ray Train
    worker's own GPU, while its node's other GPUs stay visible to it), else the first visible one."""
    import torch

    return torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else 0


def _want_gpu(use_gpu: UseGpu) -> bool:
    if use_gpu is False:
        return False
    has = hasattr(_faiss(), "StandardGpuResources") and _faiss().get_num_gpus() > 0
    if use_gpu is True and not has:
        raise RuntimeError("use_gpu=True but the installed faiss sees no GPU; install the "
                           "'gpu' extra (faiss-gpu-cu12) on a CUDA machine or set use_gpu='auto'")
    return has


_IVF = re.compile(r"IVF(\d+)")


def _clamp_nlist(factory: str, n: int) -> str:
    """Shrink IVF's nlist when there are fewer training vectors than lists (FAISS would fail)."""
    m = _IVF.search(factory)
    if not m or int(m.group(1)) <= n:
        return factory
    nlist = max(1, n // 39)  # FAISS wants >= 39 training points per centroid
    log.warning("index factory %r asks for %s IVF lists but only %d vectors were given; "
                "using IVF%d (set a smaller nlist, about 4*sqrt(n), to silence this)",
                factory, m.group(1), n, nlist)
    return factory[:m.start(1)] + str(nlist) + factory[m.end(1):]


def _check_vectors(x: np.ndarray, ids: list[str]) -> None:
    """Raise ``ValueError`` unless ``x`` is a finite non-empty ``(n, d)`` array with ``n`` unique ids."""
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be a non-empty (n, d) array, got shape {x.shape}")
    if len(ids) != x.shape[0]:
        raise ValueError(f"{x.shape[0]} embeddings but {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")


def _binary_bits(dim: int) -> int:
    """Bits per binary code: ``dim`` rounded up to a whole byte (the pad bits are always 0)."""
    return (dim + 7) // 8 * 8


def binarize(x: np.ndarray) -> np.ndarray:
    """Sign-binarise ``(n, d)`` float vectors into ``(n, ceil(d / 8))`` uint8 codes (bit = ``x > 0``).

    This is the code a binary :class:`VectorIndex` stores and compares by Hamming distance.
    """
    return np.packbits(np.asarray(x) > 0, axis=1)  # (n, ceil(d/8))


class VectorIndex:
    """Vectors with string ids in a FAISS index; build with :meth:`build`, or :meth:`load`.

    Attributes:
        ids: the string id of each row, in insertion order.
        meta: ``version``, ``index_type``, ``factory``, ``metric``, ``dim``, ``count``, ``created``
            and search parameters; written to ``meta.json`` by :meth:`save`.
    """

    def __init__(self, index, ids: list[str], meta: dict, use_gpu: UseGpu = "auto",
                 vectors: np.ndarray | None = None):
        if index.ntotal != len(ids):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(ids)} ids were given")
        self.ids = list(ids)
        self.meta = dict(meta)
        self.meta.setdefault("index_type", "flat")
        if self.index_type == "binary":
            if vectors is None or vectors.shape != (len(self.ids), self.dim):
                got = None if vectors is None else vectors.shape
                raise ValueError(f"a binary index needs its fp32 vectors ({len(self.ids)}, {self.dim}) "
                                 f"for rescoring, got {got}")
        self._vectors = vectors  # fp32 rows for rescoring (binary only): an array or a memmap
        self._cpu_index = index
        self._index = self._to_device(index, use_gpu) if self.index_type == "flat" else index
        self._deep_k_said = False
        self._apply_search_params()

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def build(cls, embeddings: np.ndarray, ids: list[str], factory: str = "Flat",
              metric: Metric = "ip", nprobe: int = 32, hnsw_ef_search: int = 128,
              use_gpu: UseGpu = "auto", version: int = 0, index_type: IndexType = "flat",
              rescore_factor: int = DEFAULT_RESCORE_FACTOR) -> "VectorIndex":
        """Build an index over ``embeddings`` (training IVF/PQ/SQ on them first).

        Args:
            embeddings: float32 ``(n, d)``; normalize them beforehand for cosine with ``"ip"``.
            ids: ``n`` unique string ids, row ``i`` → ``ids[i]``.
            factory: FAISS ``index_factory`` string (see :class:`IndexConfig`). An IVF nlist larger
                than ``n`` is clamped to ``n // 39`` with a warning.
            metric: ``"ip"`` or ``"l2"``.
            nprobe: IVF lists searched per query.
            hnsw_ef_search: HNSW ``efSearch``.
            use_gpu: ``"auto"``, ``True`` or ``False`` (see module docstring).
            version: the caller's monotonically increasing version number, kept in ``meta``.
            index_type: ``"flat"`` (``factory`` as given), ``"int8"`` or ``"binary"``.
            rescore_factor: binary only: candidates rescored per result (``k * rescore_factor``).

        Returns:
            The built index.

        Raises:
            ValueError: bad shapes, duplicate ids, an unknown factory string, a quantized
                ``index_type`` combined with a non-``Flat`` factory, or too few vectors to train
                the requested index.
        """
        cfg = IndexConfig(factory, metric, nprobe, hnsw_ef_search, use_gpu, index_type, rescore_factor)
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        _check_vectors(x, ids)
        faiss = _faiss()
        n, dim = x.shape
        if index_type == "binary":
            index, used, vectors = faiss.IndexBinaryFlat(_binary_bits(dim)), _BINARY_FACTORY, x
            index.add(binarize(x))
        else:
            used = _INT8_FACTORY if index_type == "int8" else _clamp_nlist(cfg.factory, n)
            device = use_gpu if index_type == "flat" else False  # SQ8 trains in one pass on CPU
            index, vectors = cls._build_float(x, used, metric, device), None
        meta = {"format": 2 if index_type == "binary" else 1, "version": int(version),
                "index_type": index_type, "factory": used, "requested_factory": cfg.factory,
                "metric": metric, "dim": dim, "count": n, "nprobe": nprobe,
                "hnsw_ef_search": hnsw_ef_search, "rescore_factor": rescore_factor,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "faiss_version": getattr(faiss, "__version__", "unknown")}
        return cls(index, ids, meta, use_gpu, vectors)

    @classmethod
    def _build_float(cls, x: np.ndarray, factory: str, metric: Metric, use_gpu: UseGpu):
        """A trained CPU ``faiss.Index`` from ``factory`` holding ``x``."""
        faiss = _faiss()
        n, dim = x.shape
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        try:
            index = faiss.index_factory(dim, factory, faiss_metric)
        except RuntimeError as e:
            raise ValueError(f"FAISS cannot build index factory {factory!r}: {e}") from None
        if not index.is_trained:
            try:  # train on GPU when we have one (k-means is the slow part), then keep the CPU copy
                trainer = cls._to_device(index, use_gpu)
                trainer.train(x)
                index = faiss.index_gpu_to_cpu(trainer) if trainer is not index else index
            except RuntimeError as e:
                raise ValueError(f"training {factory!r} on {n} vectors failed: {e}") from None
        index.add(x)
        return index

    @staticmethod
    def _to_device(index, use_gpu: UseGpu):
        if not _want_gpu(use_gpu):
            return index
        faiss = _faiss()
        try:
            return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), _gpu_ordinal(), index)
        except RuntimeError as e:  # e.g. HNSW has no GPU implementation
            if use_gpu is True:
                raise
            log.warning("keeping this index on CPU: faiss-gpu cannot hold it (%s)", e)
            return index

    def _apply_search_params(self) -> None:
        """Set nprobe / efSearch on the searched index and, where that is a GPU copy, on the CPU
        index too (it answers the searches deeper than the GPU's :data:`GPU_MAX_K`)."""
        factory = self.meta.get("factory", "")
        if self.index_type == "binary" or not ("IVF" in factory or "HNSW" in factory):
            return
        faiss = _faiss()
        targets = [(self._cpu_index, faiss.ParameterSpace())]
        if self._index is not self._cpu_index:
            targets.append((self._index, faiss.GpuParameterSpace()))
        for index, params in targets:
            if "IVF" in factory:
                params.set_index_parameter(index, "nprobe", int(self.meta.get("nprobe", 32)))
            if "HNSW" in factory and index is self._cpu_index:
                params.set_index_parameter(index, "efSearch", int(self.meta.get("hnsw_ef_search", 128)))

    # -- querying -----------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(self.meta.get("version", 0))

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def index_type(self) -> str:
        """``"flat"``, ``"int8"`` or ``"binary"`` (indexes saved before these types: ``"flat"``)."""
        return str(self.meta.get("index_type", "flat"))

    @property
    def rescore_factor(self) -> int:
        """Binary candidates rescored per result (``k * rescore_factor`` per query)."""
        return int(self.meta.get("rescore_factor", DEFAULT_RESCORE_FACTOR))

    @property
    def memory_bytes(self) -> int:
        """Bytes of the searched FAISS structure: the codes (4d per vector for flat, d for int8,
        d/8 for binary) plus trained parameters. For factories that are not flat codes (IVF,
        HNSW, ...) this is the serialized size, which includes their lists or graph."""
        faiss, index = _faiss(), self._cpu_index
        if isinstance(index, faiss.IndexBinaryFlat | faiss.IndexFlatCodes):
            extra = index.sq.trained.size() * 4 if isinstance(index, faiss.IndexScalarQuantizer) else 0
            return int(index.code_size * index.ntotal + extra)
        return int(faiss.serialize_index(index).nbytes)

    @property
    def rescore_bytes(self) -> int:
        """Bytes of the fp32 vectors kept for rescoring (binary only; 0 otherwise). After
        :meth:`load` they are memory-mapped (see :attr:`rescore_mapped`), not resident."""
        return 0 if self._vectors is None else int(self._vectors.nbytes)

    @property
    def rescore_mapped(self) -> bool:
        """Whether the rescoring vectors are memory-mapped from ``vectors.npy`` (a loaded binary index)."""
        return isinstance(self._vectors, np.memmap)

    @property
    def total_bytes(self) -> int:
        """:attr:`memory_bytes` plus :attr:`rescore_bytes` (ids not counted)."""
        return self.memory_bytes + self.rescore_bytes

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` neighbours of each query, best first.

        Args:
            queries: float32 ``(m, d)`` (or one ``(d,)`` vector).
            k: neighbours per query; more than the index holds returns all of them.

        Returns:
            ``(scores, ids)``: ``scores`` is ``(m, min(k, len(self)))``, higher is better (inner
            product for ``"ip"``, the negated squared distance for ``"l2"``; int8 scores come
            from the codes, binary ones are exact fp32 scores of the rescored candidates);
            ``ids[i]`` lists the found ids. Slots FAISS could not fill (approximate indexes with
            few probes) are dropped from ``ids[i]`` and hold ``-inf`` in ``scores``, always at
            the end of a row.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be (m, {self.dim}), got shape {q.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, len(self.ids))
        if self.index_type == "binary":
            scores, pos = self._search_binary(q, k)
        else:
            dist, pos = self._searcher(k).search(q, k)  # (m, k) each
            scores = -dist if self.meta["metric"] == "l2" else dist.copy()
        scores[pos < 0] = -np.inf
        ids = [[self.ids[p] for p in row if p >= 0] for row in pos]
        return scores, ids

    def _searcher(self, k: int):
        """The index that answers a top-``k`` search: the GPU copy, or the CPU index where ``k``
        is beyond what faiss-gpu selects (it raises there)."""
        if self._index is self._cpu_index or k <= GPU_MAX_K:
            return self._index
        if not self._deep_k_said:
            log.info("top-%d is deeper than faiss-gpu searches (%d): such searches run on the CPU index",
                     k, GPU_MAX_K)
            self._deep_k_said = True
        return self._cpu_index

    def _search_binary(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Hamming top ``k * rescore_factor`` candidates, reranked by exact fp32 score; top ``k``."""
        pool = min(len(self.ids), k * self.rescore_factor)
        _, pos = self._index.search(binarize(q), pool)  # (m, pool) nearest codes
        exact = self._rescore(q, pos)  # (m, pool)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]  # (m, k)
        return np.take_along_axis(exact, order, 1), np.take_along_axis(pos, order, 1)

    def _rescore(self, q: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Exact scores of candidates ``pos`` ``(m, p)`` (``-inf`` where ``pos < 0``), in query
        chunks so the gathered ``(chunk, p, d)`` rows stay a few MB."""
        m, p = pos.shape
        out = np.full((m, p), -np.inf, dtype=np.float32)
        step = max(1, _RESCORE_CHUNK_FLOATS // max(1, p * self.dim))
        for a in range(0, m, step):
            rows = np.asarray(self._vectors[np.maximum(pos[a:a + step], 0)])  # (c, p, d)
            qa = q[a:a + step, None, :]  # (c, 1, d)
            if self.meta["metric"] == "l2":
                scores = -((rows - qa) ** 2).sum(-1)
            else:
                scores = np.einsum("cpd,cd->cp", rows, q[a:a + step])
            out[a:a + step] = np.where(pos[a:a + step] >= 0, scores, -np.inf)
        return out

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write ``index.faiss``, ``ids.json`` and ``meta.json`` (and a binary index's fp32
        ``vectors.npy``) into folder ``path`` atomically.

        The files are written into a temporary sibling folder which is then renamed to ``path``,
        so ``path`` is either absent or complete. An existing complete index is never overwritten
        in place: it raises ``FileExistsError`` unless ``overwrite=True``, which swaps folders.
        """
        path = Path(path).expanduser().resolve()
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: already exists; an index is never overwritten in "
                                  "place (pass overwrite=True to replace it, or use IndexStore)")
        with atomic_dir(path, overwrite=True) as tmp:
            self._write_files(tmp)
        return path

    def _write_files(self, folder: Path) -> None:
        faiss = _faiss()
        if self.index_type == "binary":
            faiss.write_index_binary(self._cpu_index, str(folder / "index.faiss"))
            np.save(folder / _VECTORS, np.asarray(self._vectors, dtype=np.float32))
        else:
            faiss.write_index(self._cpu_index, str(folder / "index.faiss"))
        (folder / "ids.json").write_text(json.dumps(self.ids), encoding="utf-8")
        # meta.json last: its presence marks a folder whose other files are complete
        (folder / "meta.json").write_text(json.dumps(self.meta, indent=2), encoding="utf-8")
        _fsync_files(folder)

    @classmethod
    def load(cls, path: str | Path, use_gpu: UseGpu = "auto") -> "VectorIndex":
        """Read an index written by :meth:`save` (a binary index's fp32 vectors memory-mapped)."""
        path = Path(path).expanduser().resolve()
        missing = [f for f in _FILES if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{path}: not a saved index (missing {', '.join(missing)})")
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format", 1) > FORMAT_VERSION:
            raise ValueError(f"{path}: index format {meta['format']} is newer than this embedray "
                             f"reads ({FORMAT_VERSION}); upgrade embedray")
        ids = json.loads((path / "ids.json").read_text(encoding="utf-8"))
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{path / 'ids.json'}: expected a JSON list of strings")
        binary = meta.get("index_type") == "binary"
        faiss = _faiss()
        index = faiss.read_index_binary(str(path / "index.faiss")) if binary \
            else faiss.read_index(str(path / "index.faiss"))
        want_d = _binary_bits(meta.get("dim", 0)) if binary else meta.get("dim")
        if index.d != want_d or index.ntotal != meta.get("count"):
            raise ValueError(f"{path}: meta.json says dim={meta.get('dim')} count={meta.get('count')} "
                             f"but index.faiss holds dim={index.d} count={index.ntotal}")
        vectors = _load_vectors(path, meta) if binary else None
        return cls(index, ids, meta, use_gpu, vectors)


def _load_vectors(path: Path, meta: dict) -> np.ndarray:
    """Memory-map a binary index's fp32 rescoring vectors and check their shape."""
    file = path / _VECTORS
    if not file.is_file():
        raise FileNotFoundError(f"{path}: a binary index needs {_VECTORS} (its fp32 vectors for "
                                "rescoring); the folder is incomplete, rebuild or republish it")
    vectors = np.load(file, mmap_mode="r")
    want = (meta.get("count"), meta.get("dim"))
    if vectors.shape != want or vectors.dtype != np.float32:
        raise ValueError(f"{file}: holds {vectors.dtype} {vectors.shape}, expected float32 {want}")
    return vectors


def _fsync_files(folder: Path) -> None:
    """Flush the folder's files to disk so a rename after a power cut never publishes garbage."""
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


class IndexStore:
    """Versioned indexes under ``root``: ``root/v{N}/`` folders and a ``LATEST`` pointer file.

    One writer publishes; any number of readers (other processes, other nodes on a shared
    filesystem) call :meth:`latest`. Versions only increase.

    Example:
        >>> store = IndexStore("runs/x/index")
        >>> store.publish(VectorIndex.build(emb, ids, version=store.next_version()))
        >>> index = store.latest()          # None before the first publish
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, version: int) -> Path:
        return self.root / f"v{int(version)}"

    def latest_version(self) -> int | None:
        """The newest complete published version, or ``None`` before the first publish."""
        try:
            text = (self.root / "LATEST").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if not re.fullmatch(r"\d+", text):
            raise ValueError(f"{self.root / 'LATEST'}: expected a version number, got {text!r}")
        return int(text)

    def latest(self, use_gpu: UseGpu = "auto") -> VectorIndex | None:
        """Load the newest complete published index, or ``None`` before the first publish."""
        version = self.latest_version()
        return None if version is None else VectorIndex.load(self.path(version), use_gpu)

    def versions(self) -> list[int]:
        """Version numbers with a folder under ``root`` (published or orphaned by a crash)."""
        return sorted(int(p.name[1:]) for p in self.root.glob("v*")
                      if p.is_dir() and re.fullmatch(r"v\d+", p.name))

    def next_version(self) -> int:
        """One more than any version seen here (never reuses a number a crash left behind)."""
        seen = self.versions() + [self.latest_version() or 0]
        return max(seen) + 1

    def publish(self, index: VectorIndex, version: int | None = None) -> int:
        """Save ``index`` as ``v{version}`` (default: ``index.version``) and point ``LATEST`` at it.

        Raises:
            ValueError: ``version`` is not greater than the latest published one.
            FileExistsError: ``v{version}`` already exists (e.g. left by a crash): take
                :meth:`next_version`.
        """
        version = index.version if version is None else int(version)
        current = self.latest_version()
        if current is not None and version <= current:
            raise ValueError(f"{self.root}: cannot publish version {version}; versions must "
                             f"increase and v{current} is already published")
        index.meta["version"] = version
        index.save(self.path(version))  # temp folder + rename: v{N}/ is complete or absent
        write_text_atomic(f"{version}\n", self.root / "LATEST")
        log.info("published index v%d (%d vectors) at %s", version, len(index), self.path(version))
        return version

    def prune(self, keep: int = 2) -> list[int]:
        """Delete all but the newest ``keep`` published versions, crash leftovers and temp folders.

        Readers hold a loaded index in memory, so deleting its folder does not disturb them (a
        binary index's memory-mapped ``vectors.npy`` stays readable: on POSIX filesystems the
        mapping keeps the deleted file's data alive).
        Returns the removed version numbers.
        """
        latest = self.latest_version()
        if latest is None:
            return []
        kept = sorted((v for v in self.versions() if v <= latest), reverse=True)[:max(1, keep)]
        removed = [v for v in self.versions() if v not in kept and v != latest]
        for v in removed:
            shutil.rmtree(self.path(v), ignore_errors=True)
        for tmp in self.root.glob(".v*.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        return removed
