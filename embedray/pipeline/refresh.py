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

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from embedray.atomic import write_json_atomic
from embedray.memory import peak_rss_mib
from embedray.mining.cache import live_model_key
from embedray.mining.index import IndexStore
from embedray.mining.pipeline import mine
from embedray.mining.pool import NegativePool
from embedray.mining.store import PoolStore
from embedray.models.cross_encoder import load_cross_encoder
from embedray.models.encoder import BiEncoder, load_snapshot, unquantised
from embedray.models.precision import available_device
from embedray.pipeline.config import RefreshConfig
from embedray.pipeline.cross_encoder import GATE_FILE, dev_check, gate, train_base_cross_encoder
from embedray.training.data import training_examples
from embedray.training.loop import Hooks, make_encode_fn
from embedray.training.tasks import load_tasks, prefixed


def train_positives(job, data) -> dict[str, set[str]]:
    """The queries that are mined, with every known positive of each (never mined as a negative):
    the training rows' queries. Dev queries are not trained on, so their negatives are not mined."""
    return _positives(trained_examples(job, data), data)


def _positives(examples, data) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for ex in examples:
        out.setdefault(ex.query_id, set(data.positives.get(ex.query_id, ()))).add(ex.pos_id)
    return out


def trained_examples(job, data) -> list:
    """The training examples the trainer uses; the trainer has raised or counted the bad rows
    already, so here they are only left out."""
    return training_examples(replace(job.data, on_error="skip"), data)


@dataclass
class MineTarget:
    """One corpus a refresh mines: a single-task job's data, or one task's own (its ids, its
    instructions), whose ids the published pool prefixes with ``name`` (``""``: none)."""

    name: str
    data: object
    """The :class:`~embedray.training.data.TrainingData` mined (corpus, queries, dev split)."""
    positives: dict[str, set[str]]
    """The trained queries and every known positive of each."""
    examples: list
    """Its training examples (what a cross-encoder trained for the run learns from)."""
    model: object
    """The :class:`ModelConfig` it encodes with (the task's instructions)."""
    mining: object
    """The :class:`MiningConfig` it mines with (the task's instructions as the cache keys)."""

    def global_id(self, id_: str) -> str:
        return prefixed(self.name, id_) if self.name else id_


def mining_targets(job, data, per_task: dict | None = None) -> list[MineTarget]:
    """What a refresh of ``job`` mines: its data, or (``tasks``) each task whose negatives come
    from the pool, on that task's own corpus (``per_task``: each task's data, read if None)."""
    if not job.tasks:
        examples = trained_examples(job, data)
        return [MineTarget("", data, _positives(examples, data), examples, job.model, job.mining)]
    per_task = per_task if per_task is not None else load_tasks(job.tasks, rows=False)[1]
    out = []
    for t in job.tasks:
        if t.negatives != "pool":
            continue
        own = per_task[t.name]
        examples = training_examples(replace(t.data, on_error="skip"), own)
        prompts = {"query_prompt": t.query_prompt, "doc_prompt": t.doc_prompt}
        out.append(MineTarget(t.name, own, _positives(examples, own), examples, replace(job.model, **prompts),
                              replace(job.mining, **prompts)))
    return out


def merged_pool(pools: dict[str, NegativePool], targets: list[MineTarget], version: int) -> NegativePool:
    """One pool of every target's, under the merged data's ids (a single target's as it is)."""
    if len(targets) == 1 and not targets[0].name:
        return pools[""]
    negatives, positive_scores, meta = {}, {}, {"tasks": {}}
    for t in targets:
        pool, g = pools[t.name], t.global_id
        negatives.update({g(q): [(g(d), s) for d, s in negs] for q, negs in pool.negatives.items()})
        positive_scores.update({g(q): {g(d): s for d, s in ps.items()} for q, ps in pool.positive_scores.items()})
        meta["tasks"][t.name] = pool.meta
        meta.setdefault("config", pool.meta.get("config"))
        meta.setdefault("weights_fingerprint", pool.meta.get("weights_fingerprint"))
    return NegativePool(version, negatives, positive_scores, meta)


def task_pool(pool: NegativePool, task: str) -> NegativePool:
    """One task's part of a multi-task pool, under the task's own ids."""
    head = prefixed(task, "")
    own = lambda i: i[len(head):]  # noqa: E731
    negatives = {own(q): [(own(d), s) for d, s in negs] for q, negs in pool.negatives.items() if q.startswith(head)}
    scores = {own(q): {own(d): s for d, s in ps.items()} for q, ps in pool.positive_scores.items()
              if q.startswith(head)}
    meta = {k: v for k, v in pool.meta.items() if k != "tasks"} | {"task": task}
    return NegativePool(pool.version, negatives, scores, meta)


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
    if job.tasks:
        parts["tasks"] = [[t.name, t.query_prompt, t.doc_prompt, t.negatives] for t in job.tasks]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class NegativeRefresher:
    """Holds the corpora, a bi-encoder and the cross-encoder; each :meth:`refresh` publishes a pool.

    A multi-task job's refresh mines every task whose negatives come from the pool on its own
    corpus with its own instructions (:func:`mining_targets`), and publishes one pool of all of
    them under the merged data's ``<task>::`` ids; its telemetry has each task's counts.
    """

    def __init__(self, job, data, run_dir: str | Path, cross_encoder: str | None,
                 encode_corpus_factory=None, before_publish: Callable[[int, int], None] | None = None,
                 per_task: dict | None = None):
        self.run_dir = Path(run_dir)
        verdict = read_gate(self.run_dir)
        # Whether the cross-encoder's scores drop negatives, or only label them (fused targets).
        self.drop = True
        if cross_encoder and verdict is not None and not denoises(verdict):
            # The gate failed, or passed the cross-encoder only fused and cross_encoder.denoise_fused
            # is off: the bi-encoder's positive-aware rule denoises instead.
            job = replace(job, mining=replace(job.mining, **verdict["fallback"]))
            if verdict["passed"] and job.distill.score_source == "fused":
                self.drop = False  # it still scores the pool: the fused distillation targets read them
            else:
                cross_encoder = None
        # The gate passed the cross-encoder fused with the bi-encoder and lets it denoise: by the fused score.
        self.fusion_alpha = ((verdict.get("fusion") or {}).get("alpha") if cross_encoder and verdict and self.drop
                             else None)
        self.job, self.data = job, data
        self.pools = PoolStore(self.run_dir / "pools")
        self.targets = mining_targets(job, data, per_task)
        root = self.run_dir / "indexes"
        self.indexes = {t.name: IndexStore(root / t.name if t.name else root) for t in self.targets}
        self.cross_encoder = None
        if cross_encoder and job.refresh.denoise:
            self.cross_encoder = load_cross_encoder(cross_encoder, max_length=job.cross_encoder.max_length,
                                                    precision=job.cross_encoder.precision)
        # On the actor's GPU when it has one (refresh.num_gpus): every refresh re-encodes with it.
        self.model = BiEncoder.from_config(unquantised(job.model)).eval().to(available_device())
        self.model.precision = job.mining.precision
        # factory(live BiEncoder, doc prompt) -> texts → embeddings for cache misses (e.g. a Ray Data actor pool)
        self.encode_corpus_factory = encode_corpus_factory
        self.recipe = mining_recipe(job, cross_encoder)
        # before_publish(step, version): called once a refresh has mined, before it publishes
        self.before_publish = before_publish
        self._last: dict[str, object] = {}  # target → its last MineResult (budgeted refreshes reuse its embeddings)

    def mine_targets(self, version: int, cross_encoder=None) -> dict:
        """Mine every target with the current weights: ``{name: MineResult}``."""
        results = {}
        for t in self.targets:
            factory = self.encode_corpus_factory
            encode_docs = factory(self.model, t.model.doc_prompt) if factory else None
            budget = self._budgeted(t, version, encode_docs)
            result = mine(t.data.corpus, t.data.queries, t.positives, make_encode_fn(self.model, t.model),
                          t.mining, cross_encoder=cross_encoder, ce_cfg=self.job.cross_encoder,
                          cache_dir=self.run_dir / "cache", weights_fp=live_model_key(self.model),
                          version=version, encode_corpus=budget[0] if budget else encode_docs,
                          cache_embeddings=budget is None, fusion_alpha=self.fusion_alpha if cross_encoder else None,
                          denoise=self.drop)
            if budget is not None:
                result.counts.update(budget[1])
            if self.job.refresh.reencode < 1:
                self._last[t.name] = result
            results[t.name] = result
        return results

    def _budgeted(self, t: MineTarget, version: int, encode_docs) -> tuple[Callable, dict] | None:
        """``(encode_corpus, counts)`` of a budgeted refresh of ``t`` (``refresh.reencode`` < 1):
        the last refresh's corpus embeddings with the documents near the training queries and
        this version's slice of the rest re-encoded. None: encode everything (no last refresh in
        this process, or the corpus changed)."""
        share, last = self.job.refresh.reencode, self._last.get(t.name)
        doc_ids = list(t.data.corpus)
        if share >= 1 or last is None or last.doc_emb is None or last.doc_ids != doc_ids:
            return None
        slices = max(1, round(1 / share))
        fresh = np.array([i for i, d in enumerate(doc_ids) if d in last.near or i % slices == version % slices],
                         dtype=np.int64)
        encode = encode_docs or (lambda texts: make_encode_fn(self.model, t.model)(texts, "doc"))

        def encode_corpus(texts: list[str]) -> np.ndarray:
            out = last.doc_emb.copy()
            if len(fresh):
                out[fresh] = np.asarray(encode([texts[i] for i in fresh]), dtype=np.float32)
            return out

        return encode_corpus, {"docs_encoded": int(len(fresh)), "docs_reused": len(doc_ids) - int(len(fresh))}

    def refresh(self, step: int, weights: dict | None = None) -> dict:
        """Mine with ``weights`` (None: the base model) and publish the next pool version."""
        t0 = time.perf_counter()
        if weights is not None:
            load_snapshot(self.model, {k: v for k, v in weights.items() if not k.startswith("__loss__.")})
        fp = live_model_key(self.model)
        if (same := self.pools.published_for(step, fp, self.recipe)) is not None:
            # A resumed run re-snapshots, at the same step, the very weights its killed attempt
            # mined from (exact resume): that pool is this refresh's, under the same version.
            return {**self.pools.meta(same)["telemetry"], "reused": True, "wall_s": time.perf_counter() - t0}
        version = max(self.pools.next_version(), *(s.next_version() for s in self.indexes.values()))
        results = self.mine_targets(version, self.cross_encoder)
        pool = merged_pool({n: r.pool for n, r in results.items()}, self.targets, version)
        previous = self.pools.load(self.pools.latest_version()) if self.pools.latest_version() else None
        if self.before_publish is not None:
            self.before_publish(step, version)  # a test's fault injection: dies here, mid-refresh
        for name, result in results.items():
            if result.index is not None:
                self.indexes[name].publish(result.index, version)  # aside + rename: never seen half-built
                self.indexes[name].prune(self.job.refresh.keep_indexes)
        telemetry = {"version": version, "snapshot_step": step,
                     **_mining_counts(pool, list(results.values()), previous)}
        if self.job.tasks:
            telemetry["tasks"] = {t.name: _mining_counts(merged_pool({t.name: results[t.name].pool}, [t], version),
                                                         [results[t.name]], previous) for t in self.targets}
        telemetry["wall_s"] = time.perf_counter() - t0
        telemetry["peak_rss_mib"] = round(peak_rss_mib())  # the refresher's process (a local run's: the trainer's)
        pool.meta.update({"snapshot_step": step, "recipe": self.recipe, "telemetry": telemetry})
        self.pools.publish(pool)
        return telemetry


def _mining_counts(pool: NegativePool, results: list, previous: NegativePool | None) -> dict:
    """A refresh's telemetry of ``pool`` (what ``results`` mined; ``previous``: the last pool)."""
    def total(part: str, key: str):
        values = [getattr(r, part).get(key) for r in results]
        return None if all(v is None for v in values) else sum(v or 0 for v in values)

    kept, removed = total("counts", "negatives_kept"), total("counts", "negatives_removed")
    mined = kept + removed
    return {"queries_mined": total("counts", "queries_mined"), "negatives_kept": kept, "negatives_removed": removed,
            "false_negative_rate": removed / mined if mined else 0.0, "overlap@10": overlap_at_k(pool, previous),
            "docs_encoded": total("counts", "docs_encoded"), "docs_cached": total("counts", "docs_cached"),
            "docs_reused": total("counts", "docs_reused"),
            **{k: total("timings", k) for k in ("encode_s", "index_s", "search_s", "rescore_s")}}


#: Seconds between the notes that training waits for a ``sync`` refresh.
SYNC_NOTE_S = 60.0


class RefreshDriver:
    """Rank 0's side of the loop: every ``refresh.every`` steps it hands a snapshot of the weights
    to a refresher (an actor or a local object), never waits in ``async`` mode, and logs each
    finished refresh (or failure) as telemetry.

    ``submit(step, weights) -> handle``; ``ready(handle) -> bool``; ``result(handle) -> dict``
    (raises if the refresher died: training carries on with the last good pool).

    In ``sync`` mode it says every :data:`SYNC_NOTE_S` seconds that training waits, and stops
    waiting after ``refresh.sync_timeout_s``: the refresh then lands when it is done, as in
    ``async`` mode, and its record says ``sync_timed_out``.
    """

    def __init__(self, refresh: RefreshConfig, submit, ready, result, mode: str | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.every, self.mode = refresh.every, mode or refresh.mode
        self.sync_timeout_s = refresh.sync_timeout_s
        self.submit, self.ready, self.result = submit, ready, result
        self.clock, self.sleep = clock, sleep
        self.pending = None
        self.skipped = 0
        self.failures = 0
        self.timed_out: set[int] = set()  # snapshot steps whose sync wait ran out
        self.history: list[dict] = []

    def snapshot(self, step: int, weights: Callable[[], dict]) -> None:
        """The loop offers the weights after each step; a snapshot is taken every ``every`` steps."""
        if step % self.every:
            return
        if self.pending is not None and not self.ready(self.pending[1]):
            self.skipped += 1  # the previous refresh is still running: never queue a backlog
            return
        self.pending = (step, self.submit(step, weights()))
        if self.mode == "sync":
            self._wait(step)  # training waits; on_step then logs the result at this step

    def _wait(self, step: int) -> None:
        start = self.clock()
        noted = start
        while not self.ready(self.pending[1]):
            now = self.clock()
            if now - start >= self.sync_timeout_s:
                self.timed_out.add(step)
                print(f"[embedray] step {step}: the sync refresh is not done after {now - start:.0f} s "
                      f"(refresh.sync_timeout_s); training goes on with the pool it has and takes the refreshed "
                      "one when it arrives", flush=True)
                return
            if now - noted >= SYNC_NOTE_S:
                noted = now
                print(f"[embedray] step {step}: training waits for the sync refresh ({now - start:.0f} s so far; "
                      f"it gives up waiting at {self.sync_timeout_s:.0f} s)", flush=True)
            self.sleep(0.2)

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
        if snap in self.timed_out:
            record["sync_timed_out"] = True
        self.history.append(record)
        if log is not None:
            log.event("refresh", step, record)

    def hooks(self, store: PoolStore):
        """Loop hooks for rank 0 (snapshots + telemetry) — other ranks use :func:`reader_hooks`."""
        h = reader_hooks(store, refreshing=True)
        h.snapshot = self.snapshot
        h.on_step.append(self.on_step)
        return h


def refresh_summary(refresh: RefreshConfig, steps: int, events: list[dict]) -> str | None:
    """What the refresher delivered in a run of ``steps`` steps (its telemetry ``events``), as one
    line; when an ``async`` run got no refreshed pool at all, what to change. None with refresh
    off or static."""
    if refresh.mode not in ("async", "sync"):
        return None
    records = [e for e in events if e.get("kind") == "refresh"]
    done = [e for e in records if not e.get("failed")]
    offered = max(0, steps - 1) // refresh.every  # a snapshot every `every` steps, none after the last
    line = f"[embedray] refresher: {len(done)} refreshed pool(s) of {offered} snapshot(s) (every {refresh.every} steps)"
    if done:
        line += f", in use from step {', '.join(str(e['step']) for e in done)}"
    if len(records) > len(done):
        line += f"; {len(records) - len(done)} failed"
    if not records and offered and refresh.mode == "async":
        line += (f"; none finished before training ended: the refresher got too little CPU beside the "
                 f"trainers (refresh.niceness {refresh.niceness}). Lower refresh.niceness, raise "
                 "refresh.every, or give it cores the trainers leave free (refresh.num_cpus, refresh.resources)")
    return line


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


def base_cross_encoder(job, data, ce_dir: Path, run_dir: Path, per_task: dict | None = None) -> None:
    """Train the run's cross-encoder into ``ce_dir`` on the negatives the base bi-encoder mines
    for every mining target (:func:`~embedray.pipeline.cross_encoder.train_base_cross_encoder`)."""
    base = NegativeRefresher(job, data, run_dir, None, per_task=per_task)
    pools = {name: r.pool for name, r in base.mine_targets(version=0).items()}
    train_base_cross_encoder(job, data, ce_dir, Path(run_dir), base.targets, merged_pool(pools, base.targets, 0))


def read_gate(run_dir: Path) -> dict | None:
    """The run's cross-encoder gate verdict (:func:`~embedray.pipeline.cross_encoder.gate`), if any."""
    return _read_json(Path(run_dir) / GATE_FILE)


def denoises(verdict: dict | None) -> bool:
    """Whether the gate's ``verdict`` lets the cross-encoder denoise (no verdict: it does)."""
    return verdict is None or (verdict["passed"] and verdict.get("denoise", True))


def prepare_negatives(job, data, run_dir: str | Path, per_task: dict | None = None) -> str | None:
    """Before training: train the cross-encoder if none is given (on base-model negatives), check
    it as a reranker on dev and gate it (``cross_encoder.gate``), then publish pool v1 mined by
    the base model. ``per_task``: a multi-task job's data of each task (read when None).

    Idempotent: a finished cross-encoder, its verdict or a published pool is reused (resumable).
    Returns the cross-encoder folder (None without denoising; the folder even when the gate
    failed: the refresher reads the verdict and leaves it out).
    """
    run_dir = Path(run_dir)
    ce_path = job.refresh.cross_encoder
    if job.refresh.denoise and ce_path is None:
        ce_dir = run_dir / "cross-encoder"
        if not (ce_dir / "config.json").exists():
            base_cross_encoder(job, data, ce_dir, run_dir, per_task)
        ce_path = str(ce_dir)
    if ce_path is not None and read_gate(run_dir) is None:
        report = _read_json(run_dir / "cross_encoder_dev.json") if job.refresh.cross_encoder is None else \
            dev_check(job, Path(ce_path), run_dir, mining_targets(job, data, per_task))
        verdict = gate(job, report)
        write_json_atomic(verdict, run_dir / GATE_FILE)
        if not verdict["passed"]:
            print(f"[embedray] cross-encoder gate: {verdict['why']}: it scores nothing in this run; denoising "
                  f"falls back to the bi-encoder's positive-aware rule (mining.max_score_ratio "
                  f"{verdict['fallback']['max_score_ratio']:g})", flush=True)
        elif not denoises(verdict):
            print(f"[embedray] cross-encoder gate: {verdict['why']}", flush=True)
    verdict = read_gate(run_dir)
    source = job.distill.score_source
    if verdict is not None and not verdict["passed"] and source in ("cross_encoder", "fused"):
        raise ValueError(f"distill.score_source: {source}, but the cross-encoder gate failed ({verdict['why']}); "
                         "distil from the teacher's scores (score_source: teacher), or set cross_encoder.gate: false "
                         "to use it anyway")
    if source == "fused" and job.distill.fusion_alpha is None and not (verdict or {}).get("fusion"):
        raise ValueError("distill.score_source: fused, but no fusion weight was chosen on dev ("
                         + (verdict["why"] if verdict else "no cross-encoder gate verdict") + "); set "
                         "distill.fusion_alpha, or use score_source: cross_encoder when the cross-encoder "
                         "passed its gate alone")
    if verdict is not None and verdict.get("fusion") and job.distill.score_source == "cross_encoder":
        raise ValueError(f"distill.score_source: cross_encoder, but the cross-encoder passed its gate only fused with "
                         f"the bi-encoder ({verdict['why']}): its own scores rank worse than the bi-encoder's; "
                         "distil from the fused score (score_source: fused) or the teacher's (score_source: "
                         "teacher), or set cross_encoder.fuse: false")
    store = PoolStore(run_dir / "pools")
    if store.latest_version() == 0:
        telemetry = NegativeRefresher(job, data, run_dir, ce_path, per_task=per_task).refresh(step=0)
        write_json_atomic(telemetry, run_dir / "initial_pool.json")
        scored = ce_path is not None and job.refresh.denoise and denoises(read_gate(run_dir))  # it dropped some
        for name, t in [("", telemetry), *sorted(telemetry.get("tasks", {}).items())]:
            print(f"[embedray] pool v{telemetry['version']}{' ' + name if name else ''}: {t['queries_mined']} "
                  f"queries, {t['negatives_kept']} negatives kept"
                  + (f", {t['negatives_removed']} removed by the cross-encoder" if scored else ""), flush=True)
    return ce_path


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def refresh_hooks_in_process(job, data, run_dir: Path, per_task: dict | None = None) -> Hooks:
    """The refresh loop in one process: pool v1 prepared, then each refresh runs inline at its
    snapshot step (as ``sync`` would)."""
    ce_path = prepare_negatives(job, data, run_dir, per_task)
    store = PoolStore(run_dir / "pools")
    if job.refresh.mode == "static":
        return reader_hooks(store)
    refresher = NegativeRefresher(job, data, run_dir, ce_path, per_task=per_task)
    driver = RefreshDriver(job.refresh, submit=refresher.refresh, ready=lambda r: True, result=lambda r: r,
                           mode="sync")
    return driver.hooks(store)
