"""The refresh loop (ANCE): while a bi-encoder trains, its weights are snapshotted every
``refresh.every`` steps, re-mined (encode, cache-aware → FAISS → select → cross-encoder
rescore/denoise) and published as the next pool version, which the loop switches to.

- :func:`prepare_negatives` — before training: the cross-encoder (trained if none is given)
  and pool v1 mined by the base model;
- :class:`NegativeRefresher` — one refresh: snapshot in, pool v(N+1) out;
- :class:`RefreshDriver` — rank 0's side: hands snapshots over, never queues a backlog, logs;
- :meth:`RefreshDriver.hooks` / :func:`reader_hooks` — the training loop's :class:`Hooks`.

Plain Python: a local run calls the refresher in-process (:mod:`embedray.pipeline.runtime`);
:mod:`embedray.cluster.refresh` runs it as a Ray actor.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from embedray.atomic import write_json_atomic
from embedray.mining.cache import live_model_key
from embedray.mining.index import IndexStore
from embedray.mining.pipeline import mine
from embedray.mining.pool import NegativePool
from embedray.mining.store import PoolStore
from embedray.models.cross_encoder import load_cross_encoder
from embedray.models.encoder import BiEncoder
from embedray.pipeline.config import RefreshConfig
from embedray.pipeline.cross_encoder import train_base_cross_encoder
from embedray.training.data import training_examples
from embedray.training.loop import Hooks, make_encode_fn


def train_positives(job, data) -> dict[str, set[str]]:
    """The queries that are mined, with every known positive of each (never mined as a negative):
    the training rows' queries. Dev queries are not trained on, so their negatives are not mined."""
    out: dict[str, set[str]] = {}
    for ex in trained_examples(job, data):
        out.setdefault(ex.query_id, set(data.positives.get(ex.query_id, ()))).add(ex.pos_id)
    return out


def trained_examples(job, data) -> list:
    """The training examples the trainer uses; the trainer has raised or counted the bad rows
    already, so here they are only left out."""
    return training_examples(replace(job.data, on_error="skip"), data)


def overlap_at_k(new: NegativePool, old: NegativePool | None, k: int = 10) -> float | None:
    """Mean fraction of a query's top-k negatives that were already in the previous pool's top-k."""
    if old is None:
        return None
    fracs = []
    for q, negs in new.negatives.items():
        a = {d for d, _ in negs[:k]}
        b = {d for d, _ in old.negatives.get(q, [])[:k]}
        if a:
            fracs.append(len(a & b) / len(a))
    return sum(fracs) / len(fracs) if fracs else None


def mining_recipe(job, cross_encoder: str | None) -> str:
    """sha256 of everything besides the weights that decides what a refresh mines (mining and
    cross-encoder settings, denoising, the cross-encoder folder, the model's prefixes/lengths)."""
    import hashlib
    import json
    from dataclasses import asdict

    parts = {"mining": asdict(job.mining), "cross_encoder": asdict(job.cross_encoder), "model": asdict(job.model),
             "denoise": job.refresh.denoise, "cross_encoder_path": cross_encoder}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class NegativeRefresher:
    """Holds the corpus, a bi-encoder and the cross-encoder; each :meth:`refresh` publishes a pool."""

    def __init__(self, job, data, run_dir: str | Path, cross_encoder: str | None,
                 encode_corpus_factory=None, before_publish: Callable[[int, int], None] | None = None):
        self.job, self.data, self.run_dir = job, data, Path(run_dir)
        self.pools = PoolStore(self.run_dir / "pools")
        self.indexes = IndexStore(self.run_dir / "indexes")
        self.cross_encoder = None
        if cross_encoder and job.refresh.denoise:
                self.cross_encoder = load_cross_encoder(cross_encoder, max_length=job.cross_encoder.max_length,
                                                    precision=job.cross_encoder.precision)
        self.model = BiEncoder.from_config(job.model).eval()
        self.model.precision = job.mining.precision
        self.positives = train_positives(job, data)
        # factory(live BiEncoder) -> texts → embeddings for cache misses (e.g. a Ray Data actor pool)
        self.encode_corpus_factory = encode_corpus_factory
        self.recipe = mining_recipe(job, cross_encoder)
        # before_publish(step, version): called once a refresh has mined, before it publishes
        self.before_publish = before_publish

    def refresh(self, step: int, weights: dict | None = None) -> dict:
        """Mine with ``weights`` (None: the base model) and publish the next pool version."""
        t0 = time.perf_counter()
        if weights is not None:
            self.model.load_state_dict({k: v for k, v in weights.items() if not k.startswith("__loss__.")})
        fp = live_model_key(self.model)
        if (same := self.pools.published_for(step, fp, self.recipe)) is not None:
            # A resumed run re-snapshots, at the same step, the very weights its killed attempt
            # mined from (exact resume): that pool is this refresh's, under the same version.
            return {**self.pools.meta(same)["telemetry"], "reused": True, "wall_s": time.perf_counter() - t0}
        version = max(self.pools.next_version(), self.indexes.next_version())
        result = mine(self.data.corpus, self.data.queries, self.positives,
                      make_encode_fn(self.model, self.job.model), self.job.mining,
                      cross_encoder=self.cross_encoder, ce_cfg=self.job.cross_encoder,
                      cache_dir=self.run_dir / "cache", weights_fp=fp, version=version,
                      encode_corpus=self.encode_corpus_factory(self.model) if self.encode_corpus_factory else None)
        previous = self.pools.load(self.pools.latest_version()) if self.pools.latest_version() else None
        if self.before_publish is not None:
            self.before_publish(step, version)  # a test's fault injection: dies here, mid-refresh
        if result.index is not None:
            self.indexes.publish(result.index, version)  # aside + rename: never seen half-built
            self.indexes.prune(self.job.refresh.keep_indexes)
        c, t = result.counts, result.timings
        mined = c["negatives_kept"] + c["negatives_removed"]
        telemetry = {"version": version, "snapshot_step": step, "queries_mined": c["queries_mined"],
                     "negatives_kept": c["negatives_kept"], "negatives_removed": c["negatives_removed"],
                     "false_negative_rate": c["negatives_removed"] / mined if mined else 0.0,
                     "overlap@10": overlap_at_k(result.pool, previous), "docs_encoded": c.get("docs_encoded"),
                     "docs_cached": c.get("docs_cached"), "encode_s": t.get("encode_s"),
                     "index_s": t.get("index_s"), "search_s": t.get("search_s"), "rescore_s": t.get("rescore_s"),
                     "wall_s": time.perf_counter() - t0}
        result.pool.meta.update({"snapshot_step": step, "recipe": self.recipe, "telemetry": telemetry})
        self.pools.publish(result.pool)
        return telemetry


class RefreshDriver:
    """Rank 0's side of the loop: every ``refresh.every`` steps it hands a snapshot of the weights
    to a refresher (an actor or a local object), never waits in ``async`` mode, and logs each
    finished refresh (or failure) as telemetry.

    ``submit(step, weights) -> handle``; ``ready(handle) -> bool``; ``result(handle) -> dict``
    (raises if the refresher died: training carries on with the last good pool).
    """

    def __init__(self, refresh: RefreshConfig, submit, ready, result, mode: str | None = None):
        self.every, self.mode = refresh.every, mode or refresh.mode
        self.submit, self.ready, self.result = submit, ready, result
        self.pending = None
        self.skipped = 0
        self.failures = 0
        self.history: list[dict] = []

    def snapshot(self, step: int, weights: Callable[[], dict]) -> None:
        """The loop offers the weights after each step; a snapshot is taken every ``every`` steps."""
        if step % self.every:
            return
        if self.pending is not None and not self.ready(self.pending[1]):
            self.skipped += 1  # the previous refresh is still running: never queue a backlog
            return
        self.pending = (step, self.submit(step, weights()))
        while self.mode == "sync" and not self.ready(self.pending[1]):
            time.sleep(0.2)  # sync: training waits; on_step then logs the result at this step

    def on_step(self, step: int, log) -> None:
        if self.pending is not None and self.ready(self.pending[1]):
            self._collect(step, log)

    def _collect(self, step: int, log) -> None:
        snap, handle = self.pending
        self.pending = None
        try:
            record = {**self.result(handle), "finished_step": step, "skipped_snapshots": self.skipped}
        except Exception as e:  # noqa: BLE001 - an actor death must not stop training; it is logged
            self.failures += 1
            record = {"failed": True, "error": f"{type(e).__name__}: {e}"[:500], "snapshot_step": snap,
                      "finished_step": step, "failures": self.failures}
        self.history.append(record)
        if log is not None:
            log.event("refresh", step, record)

    def hooks(self, store: PoolStore):
        """Loop hooks for rank 0 (snapshots + telemetry) — other ranks use :func:`reader_hooks`."""
        h = reader_hooks(store, refreshing=True)
        h.snapshot = self.snapshot
        h.on_step.append(self.on_step)
        return h


def reader_hooks(store: PoolStore, refreshing: bool = False):
    """Hooks that only read published pools (every rank).

    ``refreshing`` (``async``/``sync``: this run publishes its pools as it trains): a step uses
    the newest pool mined from its own or an earlier step's weights, so a resumed run switches at
    the steps the uninterrupted one did; otherwise (``static``) always the newest pool.
    """
    def load(version: int):
        pool = store.load(version)
        scores = {q: dict(pool.positive_scores.get(q, {})) for q in pool.negatives}
        for q, negs in pool.negatives.items():
            scores[q].update({d: s for d, s in negs if s is not None})
        return {q: [d for d, _ in negs] for q, negs in pool.negatives.items()}, pool.meta, scores

    newest = store.latest_version_at if refreshing else (lambda step: store.latest_version())
    return Hooks(pool_version=newest, load_pool=load)


def prepare_negatives(job, data, run_dir: str | Path) -> str | None:
    """Before training: train the cross-encoder if none is given (on base-model negatives,
    reported as a reranker on dev), then publish pool v1 mined by the base model.

    Idempotent: a finished cross-encoder or a published pool is reused (resumable).
    Returns the cross-encoder folder (None without denoising).
    """
    run_dir = Path(run_dir)
    ce_path = job.refresh.cross_encoder
    if job.refresh.denoise and ce_path is None:
        ce_dir = run_dir / "cross-encoder"
        if not (ce_dir / "config.json").exists():
            train_base_cross_encoder(job, data, ce_dir, run_dir, train_positives(job, data),
                                     trained_examples(job, data))
        ce_path = str(ce_dir)
    store = PoolStore(run_dir / "pools")
    if store.latest_version() == 0:
        telemetry = NegativeRefresher(job, data, run_dir, ce_path).refresh(step=0)
        write_json_atomic(telemetry, run_dir / "initial_pool.json")
        print(f"[embedray] pool v{telemetry['version']}: {telemetry['negatives_kept']} negatives kept, "
              f"{telemetry['negatives_removed']} removed by the cross-encoder", flush=True)
    return ce_path


def refresh_hooks_in_process(job, data, run_dir: Path) -> Hooks:
    """The refresh loop in one process: pool v1 prepared, then each refresh runs inline at its
    snapshot step (as ``sync`` would)."""
    ce_path = prepare_negatives(job, data, run_dir)
    store = PoolStore(run_dir / "pools")
    if job.refresh.mode == "static":
        return reader_hooks(store)
    refresher = NegativeRefresher(job, data, run_dir, ce_path)
    driver = RefreshDriver(job.refresh, submit=refresher.refresh, ready=lambda r: True, result=lambda r: r,
                           mode="sync")
    return driver.hooks(store)
