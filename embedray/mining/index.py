"""A FAISS vector index over string ids, saved atomically, and a store of published versions.

``VectorIndex`` wraps any FAISS ``index_factory`` string: exact inner product (``"Flat"``, the
default, right for corpora up to a few million vectors on CPU) or approximate ones such as
``"IVF1024,Flat"``, ``"IVF4096,PQ64"`` or ``"HNSW32"`` for large corpora. FAISS only knows int64
positions, so the index keeps the list of string ids beside it.

``IndexStore`` is how a refresher hands an index to readers while they keep working: it builds
each version aside (``v7.tmp-*``), renames it to ``v7/`` and only then moves the ``LATEST``
pointer (temp file + ``os.replace``). A reader that follows ``LATEST`` never sees a half-written
index, and a crash anywhere before the pointer moves leaves the previous version in place.

faiss-gpu is optional: with ``use_gpu="auto"`` an index moves to GPU 0 when the installed faiss
reports a GPU (``faiss.get_num_gpus() > 0``) and stays on CPU otherwise; nothing changes on CPU.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

Metric = Literal["ip", "l2"]
UseGpu = bool | Literal["auto"]
FORMAT_VERSION = 1
_FILES = ("index.faiss", "ids.json", "meta.json")


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
            ``False`` never uses it.
    """

    factory: str = "Flat"
    metric: Metric = "ip"
    nprobe: int = 32
    hnsw_ef_search: int = 128
    use_gpu: UseGpu = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise ValueError("index.factory must be a FAISS index_factory string such as 'Flat' "
                             "or 'IVF256,Flat'")
        if self.metric not in ("ip", "l2"):
            raise ValueError(f"index.metric must be 'ip' or 'l2', got {self.metric!r}")
        for name in ("nprobe", "hnsw_ef_search"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"index.{name} must be a positive integer, got {value!r}")
        if self.use_gpu not in (True, False, "auto"):
            raise ValueError(f"index.use_gpu must be true, false or 'auto', got {self.use_gpu!r}")


def _faiss():
    import faiss  # imported lazily: faiss-cpu or faiss-gpu, whichever is installed

    return faiss


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


class VectorIndex:
    """Vectors with string ids in a FAISS index; build with :meth:`build`, or :meth:`load`.

    Attributes:
        ids: the string id of each row, in insertion order.
        meta: ``version``, ``factory``, ``metric``, ``dim``, ``count``, ``created`` and search
            parameters; written to ``meta.json`` by :meth:`save`.
    """

    def __init__(self, index, ids: list[str], meta: dict, use_gpu: UseGpu = "auto"):
        if index.ntotal != len(ids):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(ids)} ids were given")
        self.ids = list(ids)
        self.meta = dict(meta)
        self._cpu_index = index
        self._index = self._to_device(index, use_gpu)
        self._apply_search_params()

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def build(cls, embeddings: np.ndarray, ids: list[str], factory: str = "Flat",
              metric: Metric = "ip", nprobe: int = 32, hnsw_ef_search: int = 128,
              use_gpu: UseGpu = "auto", version: int = 0) -> "VectorIndex":
        """Build an index over ``embeddings`` (training IVF/PQ on them first).

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

        Returns:
            The built index.

        Raises:
            ValueError: bad shapes, duplicate ids, an unknown factory string or too few vectors
                to train the requested index.
        """
        cfg = IndexConfig(factory, metric, nprobe, hnsw_ef_search, use_gpu)
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"embeddings must be a non-empty (n, d) array, got shape {x.shape}")
        if len(ids) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} embeddings but {len(ids)} ids")
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique")
        if not np.isfinite(x).all():
            raise ValueError("embeddings contain NaN or infinite values")
        faiss = _faiss()
        n, dim = x.shape
        used = _clamp_nlist(cfg.factory, n)
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        try:
            index = faiss.index_factory(dim, used, faiss_metric)
        except RuntimeError as e:
            raise ValueError(f"FAISS cannot build index factory {used!r}: {e}") from None
        if not index.is_trained:
            try:  # train on GPU when we have one (k-means is the slow part), then keep the CPU copy
                trainer = cls._to_device(index, use_gpu)
                trainer.train(x)
                index = faiss.index_gpu_to_cpu(trainer) if trainer is not index else index
            except RuntimeError as e:
                raise ValueError(f"training {used!r} on {n} vectors failed: {e}") from None
        index.add(x)
        meta = {"format": FORMAT_VERSION, "version": int(version), "factory": used,
                "requested_factory": cfg.factory, "metric": metric, "dim": dim, "count": n,
                "nprobe": nprobe, "hnsw_ef_search": hnsw_ef_search,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "faiss_version": getattr(faiss, "__version__", "unknown")}
        return cls(index, ids, meta, use_gpu)

    @staticmethod
    def _to_device(index, use_gpu: UseGpu):
        if not _want_gpu(use_gpu):
            return index
        faiss = _faiss()
        try:
            return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        except RuntimeError as e:  # e.g. HNSW has no GPU implementation
            if use_gpu is True:
                raise
            log.warning("keeping this index on CPU: faiss-gpu cannot hold it (%s)", e)
            return index

    def _apply_search_params(self) -> None:
        faiss = _faiss()
        params = faiss.GpuParameterSpace() if self._index is not self._cpu_index else faiss.ParameterSpace()
        factory = self.meta.get("factory", "")
        if "IVF" in factory:
            params.set_index_parameter(self._index, "nprobe", int(self.meta.get("nprobe", 32)))
        if "HNSW" in factory and self._index is self._cpu_index:
            params.set_index_parameter(self._index, "efSearch", int(self.meta.get("hnsw_ef_search", 128)))

    # -- querying -----------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(self.meta.get("version", 0))

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` neighbours of each query, best first.

        Args:
            queries: float32 ``(m, d)`` (or one ``(d,)`` vector).
            k: neighbours per query; more than the index holds returns all of them.

        Returns:
            ``(scores, ids)``: ``scores`` is ``(m, min(k, len(self)))``, higher is better (inner
            product for ``"ip"``, the negated squared distance for ``"l2"``); ``ids[i]`` lists the
            found ids. Slots FAISS could not fill (approximate indexes with few probes) are
            dropped from ``ids[i]`` and hold ``-inf`` in ``scores``, always at the end of a row.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be (m, {self.dim}), got shape {q.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, len(self.ids))
        dist, pos = self._index.search(q, k)  # (m, k) each
        scores = -dist if self.meta["metric"] == "l2" else dist.copy()
        scores[pos < 0] = -np.inf
        ids = [[self.ids[p] for p in row if p >= 0] for row in pos]
        return scores, ids

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write ``index.faiss``, ``ids.json`` and ``meta.json`` into folder ``path`` atomically.

        The files are written into a temporary sibling folder which is then renamed to ``path``,
        so ``path`` is either absent or complete. An existing complete index is never overwritten
        in place: it raises ``FileExistsError`` unless ``overwrite=True``, which swaps folders.
        """
        path = Path(path).expanduser().resolve()
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: already exists; an index is never overwritten in "
                                  "place (pass overwrite=True to replace it, or use IndexStore)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        try:
            self._write_files(tmp)
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}-{time.time_ns()}")
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    def _write_files(self, folder: Path) -> None:
        _faiss().write_index(self._cpu_index, str(folder / "index.faiss"))
        (folder / "ids.json").write_text(json.dumps(self.ids), encoding="utf-8")
        # meta.json last: its presence marks a folder whose other files are complete
        (folder / "meta.json").write_text(json.dumps(self.meta, indent=2), encoding="utf-8")
        _fsync_files(folder)

    @classmethod
    def load(cls, path: str | Path, use_gpu: UseGpu = "auto") -> "VectorIndex":
        """Read an index written by :meth:`save`."""
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
        index = _faiss().read_index(str(path / "index.faiss"))
        if index.d != meta.get("dim") or index.ntotal != meta.get("count"):
            raise ValueError(f"{path}: meta.json says dim={meta.get('dim')} count={meta.get('count')} "
                             f"but index.faiss holds dim={index.d} count={index.ntotal}")
        return cls(index, ids, meta, use_gpu)


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
        pointer = self.root / f".LATEST.tmp-{os.getpid()}"
        with open(pointer, "w", encoding="utf-8") as f:
            f.write(f"{version}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer, self.root / "LATEST")
        log.info("published index v%d (%d vectors) at %s", version, len(index), self.path(version))
        return version

    def prune(self, keep: int = 2) -> list[int]:
        """Delete all but the newest ``keep`` published versions, crash leftovers and temp folders.

        Readers hold a loaded index in memory, so deleting its folder does not disturb them.
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
