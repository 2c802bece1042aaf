"""The per-worker training loop: plain torch, read top to bottom.

The same function runs in one local process (``LocalSession``) and on every Ray Train worker
(``embedray.cluster.train``); only the session differs. It reads its own config sections
(model, loss, train, distill); negative refreshes and dev evaluation plug in through ``hooks``
(newest pool at a step boundary, weight snapshots, dev metrics), provided by
:mod:`embedray.pipeline`.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from embedray.atomic import write_json_atomic, write_text_atomic
from embedray.losses import build_objective, set_dropout
from embedray.losses.infonce import ids_to_tensor
from embedray.losses.config import LossConfig
from embedray.models.config import ModelConfig
from embedray.models.encoder import BiEncoder, resolve_attention
from embedray.models.precision import resolve_precision
from embedray.training import checkpoint as ckpt
from embedray.training.config import DistillConfig, TrainConfig
from embedray.training.batches import BatchPlan, NegativeSampler, canonical_order
from embedray.training.data import TrainingData
from embedray.training.distill import (Teacher, candidate_cosines, fused_targets, hidden_layer_map, in_batch_cosines,
                                      pool_scores, resolve_ce_temperature)
from embedray.training.distributed import average_gradients, barrier, broadcast_flag, broadcast_int, mean_across_workers
from embedray.training.gather import gather_fn_for_loss
from embedray.training.grad_cache import CachedEmbeddings, backward_through_model, embed_without_graph
from embedray.training.logs import RunLogger, summary_markdown
from embedray.training.master_weights import MasterWeights, resolve_weight_dtype
from embedray.training.optim import adamw
from embedray.training.plots import plot_run
from embedray.training.shards import doc_ids as shard_doc_ids
from embedray.training.tasks import SEP, TaskSchedule, task_prompts

LOSS_PREFIX = "__loss__."  # trainable loss parameters (e.g. a distillation projection) in checkpoints


@dataclass
class Hooks:
    """Optional callbacks for the negative-refresh loop.

    Rank 0 asks ``pool_version(step)`` at every step boundary (the newest pool that step may
    train on) and broadcasts the answer, so all workers switch pools at the same step;
    ``snapshot(step, weights)`` (rank 0) is offered the weights after each step but the last
    (``weights()`` copies them; the refresh loop takes them every ``refresh.every`` steps).
    ``on_step(step, log)`` runs on every rank after each step (before its checkpoint).
    ``evaluate(model, when)`` (rank 0, with every core of the node) returns the live model's dev
    metrics at ``when`` = ``start``, ``step`` (every ``train.eval_every`` steps, for early
    stopping) or ``final``; None: no dev evaluation.
    """

    pool_version: Callable[[int], int] | None = None
    load_pool: Callable[[int], tuple[dict[str, list[str]], dict, dict]] | None = None
    snapshot: Callable[[int, Callable[[], dict[str, torch.Tensor]]], None] | None = None
    on_step: list[Callable[[int, RunLogger], None]] = field(default_factory=list)
    evaluate: Callable[[Any, str], dict[str, float]] | None = None


def _lr_lambda(cfg, total: int) -> Callable[[int], float]:
    warm = int(cfg.warmup_ratio * total)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        return max(0.0, 1 - progress) if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return f


def _param_groups(named_parameters, extra: list, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in named_parameters:
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name else decay).append(p)
    return [{"params": decay + [p for p in extra if p.requires_grad], "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_encode_fn(model, model_cfg, batch_size: int = 64) -> Callable[[list[str], str], Any]:
    """``encode_fn(texts, kind)`` over the live model, with the configured prefixes."""
    def encode(texts: list[str], kind: str):
        prefix = model_cfg.query_prompt if kind == "query" else model_cfg.doc_prompt
        return model.encode([prefix + t for t in texts], batch_size=batch_size)
    return encode


@contextlib.contextmanager
def _every_core():
    """torch threads = the node's cores for a while: rank 0 evaluates dev alone while the other
    workers wait for it, so their cores would otherwise sit idle."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, len(os.sched_getaffinity(0))))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class LoopTask:
    """What the loop holds for one task: its prompts and negatives (``model_cfg`` / ``train_cfg``),
    its objective, its rows and their batch plan, its negative sampler. A single-task run has one,
    named ``""``."""

    name: str
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    needs: Any
    loss_fn: torch.nn.Module
    label_names: list[str] | None
    examples: list
    plan: BatchPlan
    sampler: NegativeSampler
    weight: float


def train(model_cfg: ModelConfig, loss_cfg: LossConfig, train_cfg: TrainConfig, session, data: TrainingData,
          run_dir: Path, hooks: Hooks | None = None, distill: DistillConfig | None = None,
          card: dict | None = None, tasks: list | None = None) -> dict:
    """Train the ``model_cfg`` bi-encoder with the ``loss_cfg`` objective for
    ``train_cfg.max_steps`` steps; return the summary. ``distill`` names the teacher when the
    objective distills; ``card`` (the whole job, for instance) is saved with the final model.
    ``tasks`` (``TaskConfig``s, resolved): train several tasks instead of ``loss_cfg``, each batch
    one task's rows (``data`` then holds every task's data under ``<task>::`` ids).

    Resumes from ``session.restore()`` (the newest complete checkpoint) when there is one,
    exactly: same batches, same negatives, same dropout masks as an uninterrupted run with the
    same seed, and the same pool switches (the state records the step each pool version was
    first trained on; ``hooks.pool_version`` answers per step).
    """
    tc, hooks, rank0 = train_cfg, hooks or Hooks(), session.rank == 0
    run_dir = Path(run_dir)
    torch.manual_seed(tc.seed)  # identical initialisation of any new head on every rank
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)

    core = BiEncoder.from_config(model_cfg)
    core.precision = resolve_precision(tc.precision, session.device)  # the backbone's; losses stay fp32
    core.train_attention = resolve_attention(tc.attention, session.device)
    specs = _task_specs(model_cfg, loss_cfg, tc, tasks)
    all_needs = [s[2].loop_needs() for s in specs]
    dropouts = {s[2].loop_needs().dropout for s in specs} - {None}
    if len(dropouts) > 1:
        raise ValueError(f"tasks: the objectives set different dropout rates {sorted(dropouts)}; one model has one")
    if dropouts:
        set_dropout(core, dropouts.pop())
    # bf16 working weights, fp32 masters for the optimizer: converted before DDP wraps the model.
    weight_dtype = resolve_weight_dtype(tc.weight_dtype, core.precision, session.device, model_cfg.finetune)
    if weight_dtype == "bf16":
        core.to(session.device)  # the masters are made where the weights will train (a GPU's grads meet them there)
    masters = MasterWeights(core) if weight_dtype == "bf16" else None
    full_state = masters.state_dict if masters else core.state_dict  # what checkpoints and snapshots hold
    model = session.prepare_model(core)
    teacher, distill = None, resolve_ce_temperature(distill or DistillConfig(), run_dir, rank0)
    if any(distill.needs_model(n) for n in all_needs):  # one teacher for every task that distills
        if not distill.teacher:
            raise ValueError("loss.distill_score / loss.distill_embed need distill.teacher (a model folder)")
        layers = hidden_layer_map(distill, model_cfg) if any(n.teacher_hidden for n in all_needs) else None
        if layers is not None and len(layers) != core.backbone.config.num_hidden_layers:
            raise ValueError(f"distill.hidden_layers: {layers} names {len(layers)} teacher layers for a student "
                             f"with {core.backbone.config.num_hidden_layers}")
        teacher = Teacher(distill.teacher, model_cfg, session.device, hidden_layers=layers,
                          precision=core.precision)
    # A sharded session hands each rank only its own rows (in canonical order, read on demand from
    # the run's store): each rank batches its shard itself.
    shard = getattr(session, "shard", None)
    sharded = shard is not None
    examples = session.training_examples() if sharded else canonical_order(session.training_examples())
    total_rows = shard.total if sharded else len(examples)
    tok_len = lambda did: len(data.doc_text(did))  # characters: a cheap, monotone proxy of tokens
    loop_tasks = [_loop_task(i, spec, examples, data, core, teacher, tc, session, tok_len, shard)
                  for i, spec in enumerate(specs)]
    multi = tasks is not None
    schedule = TaskSchedule([t.weight for t in loop_tasks], tc.seed, tc.task_sampling, tc.max_steps * tc.grad_accum)
    loss_params = [p for t in loop_tasks for p in t.loss_fn.parameters()]
    optimizer = adamw(_param_groups(masters.named_parameters() if masters else core.named_parameters(),
                                    loss_params, tc.weight_decay), lr=tc.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tc, tc.max_steps))
    plan = loop_tasks[0].plan
    # The refreshed pool feeds every task that takes its negatives from it (a multi-task pool
    # holds each such task's queries under its ``<task>::`` ids).
    pool_samplers = [t.sampler for t in loop_tasks if not multi or t.train_cfg.negatives == "pool"]
    row_scores = _row_scores(examples) if distill.score_source == "data" else {}
    if any(n.teacher_scores for n in all_needs) and distill.score_source == "data" and not row_scores:
        raise ValueError("distill.score_source: data, but no training row carries scores (FlagEmbedding "
                         "pos_scores / neg_scores)")

    start_step, state = 0, {"best_dev": None, "evals_without_gain": 0, "pool_version": 0, "pool_switches": []}
    if sharded:
        state["rows_digest"] = shard.digest
    if (saved := session.restore(seed=tc.seed)) is not None:
        (masters or core).load_state_dict(ckpt.loadable_model_state(core, {
            k: v for k, v in saved["model"].items() if not k.startswith(LOSS_PREFIX)}))
        for t in loop_tasks:
            prefix = _loss_prefix(t.name)
            t.loss_fn.load_state_dict({k[len(prefix):]: v for k, v in saved["model"].items() if k.startswith(prefix)})
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        ckpt.restore_rng(saved["rng"])
        state.update(saved["trainer_state"]["state"])
        start_step = saved["trainer_state"]["step"]
        if sharded and state.get("rows_digest") not in (None, shard.digest):
            raise RuntimeError(f"checkpoint of step {start_step}: it trained on other rows than this run's (their "
                               "digest differs): the training data changed since it was written; resume with the "
                               "same data or start a new run_name")
        if multi and state.get("task_cursors") != schedule.cursors(start_step * tc.grad_accum):
            raise RuntimeError(f"checkpoint of step {start_step}: its task cursors {state.get('task_cursors')} are not "
                               f"this run's {schedule.cursors(start_step * tc.grad_accum)}: the tasks, their weights or "
                               "train.task_sampling changed since it was written; resume with the same recipe")
        if hooks.load_pool and state["pool_version"]:  # the very pool the checkpoint trained on
            negatives, _, scores = hooks.load_pool(state["pool_version"])
            for sampler in pool_samplers:
                sampler.set_pool(negatives, state["pool_version"], scores)
    log = RunLogger(run_dir, start_step, enabled=rank0)
    if rank0:
        what = (f"{total_rows} rows in {len(loop_tasks)} tasks ("
                + ", ".join(f"{t.name}: {len(t.examples)}, {t.plan.batches_per_epoch} global batches/epoch"
                            for t in loop_tasks) + ")" if multi
                else f"{total_rows} pairs, {plan.batches_per_epoch} global batches/epoch")
        if sharded:
            what += f" (rank 0's shard: {len(examples)} rows)"
        print(f"[embedray] {'resuming at step ' + str(start_step) if start_step else 'starting'}: {what}, "
              f"{session.world_size} worker(s), {tc.max_steps} steps"
              + (", bf16 weights with fp32 masters" if masters else ""), flush=True)
    if start_step == 0 and hooks.evaluate is not None and rank0:
        log.event("dev", 0, _evaluate(hooks.evaluate, core, "start", masters))

    saved_at = [start_step] if start_step else []

    def checkpoint(step: int) -> None:
        saved_at.append(step)
        if multi:
            state["task_cursors"] = schedule.cursors(step * tc.grad_accum)
        trainer_state = {"step": step, "state": state, "seed": tc.seed, "world_size": session.world_size}
        weights = dict(full_state())
        for t in loop_tasks:
            weights.update({_loss_prefix(t.name) + k: v for k, v in t.loss_fn.state_dict().items()})
        session.save_checkpoint(step, {"step": step}, model_state=weights,
                                optimizer_state=optimizer.state_dict(),
                                scheduler_state=scheduler.state_dict(), trainer_state=trainer_state)

    bar = tqdm(total=tc.max_steps, initial=start_step, disable=not rank0, desc="train", unit="step")
    model.train()
    step, t_start = start_step, time.perf_counter()
    for step in range(start_step, tc.max_steps):
        if hooks.pool_version and hooks.load_pool:
            switched = _maybe_switch_pool(hooks, pool_samplers, state, log, step, rank0)
            if switched and step > 0 and tc.eval_on_refresh and hooks.evaluate is not None and rank0:
                log.event("dev", step, {**_evaluate(hooks.evaluate, core, "step", masters),
                                        "pool_version": state["pool_version"]})
        t0 = time.perf_counter()
        total, step_tasks = 0.0, []
        for micro in range(tc.grad_accum):
            index = step * tc.grad_accum + micro
            ti, cursor = schedule.at(index)  # the same task on every rank: DDP reduces one graph
            task = loop_tasks[ti]
            step_tasks.append((task, cursor))
            batch = [task.examples[i] for i in task.plan.rank_indices(cursor, 0 if sharded else session.rank)]
            first_slot = session.rank * tc.batch_size if sharded else 0  # each rank draws its own random negatives
            negs = [task.sampler.sample(ex, cursor, first_slot + slot) for slot, ex in enumerate(batch)]
            sync = micro == tc.grad_accum - 1 or not hasattr(model, "no_sync")
            # Cached (GradCache): the loss's backward stops at the embeddings; the model's comes after.
            hold = hasattr(model, "no_sync") and (not sync or tc.mini_batch_size)
            with model.no_sync() if hold else contextlib.nullcontext():
                scores = row_scores if distill.score_source == "data" else task.sampler.scores
                loss, cached = _batch_loss(model, core, task.loss_fn, task.model_cfg, task.train_cfg, data, batch,
                                           negs, session.device, task.needs, teacher, scores, distill,
                                           task.label_names)
                (loss / tc.grad_accum).backward()
            if cached:
                backward_through_model(model, cached, sync=sync)
            total += loss.item() / tc.grad_accum
        step_loss = mean_across_workers(total)  # the same on every rank: all stop together
        if not math.isfinite(step_loss):
            raise FloatingPointError(_not_finite(step_loss, step + 1, tc, saved_at[-1] if saved_at else None))
        average_gradients(loss_params)  # a loss's own head is not in DDP's model
        if masters:
            masters.grads_to_masters()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm if tc.max_grad_norm > 0 else float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if masters:
            masters.masters_to_model()
        done = step + 1
        dt = time.perf_counter() - t0
        first, first_cursor = step_tasks[0]
        record = {"step": done, "epoch": first.plan.epoch_of(first_cursor), "loss": step_loss,
                  "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                  "pairs_per_s": tc.batch_size * session.world_size * tc.grad_accum / dt, "pool_version": state["pool_version"]}
        if multi:
            record["task"] = first.name if len({t.name for t, _ in step_tasks}) == 1 else \
                ",".join(t.name for t, _ in step_tasks)
        log.step(record)
        bar.update(1)
        if done % tc.log_every == 0:
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        session.report({"step": done, "loss": step_loss})
        if rank0 and hooks.snapshot and done < tc.max_steps:
            hooks.snapshot(done, lambda: {k: v.detach().cpu().clone() for k, v in full_state().items()})
        for cb in hooks.on_step:
            cb(done, log)
        stop = False
        if tc.eval_every and done % tc.eval_every == 0 and hooks.evaluate is not None and done < tc.max_steps:
            if rank0:
                stop = _dev_and_early_stop(hooks.evaluate, core, tc, log, state, done, masters)
            stop = broadcast_flag(stop)
        if (tc.checkpoint_every and done % tc.checkpoint_every == 0) or done == tc.max_steps or stop:
            log.flush()
            checkpoint(done)
        if stop:
            break
    bar.close()
    wall = time.perf_counter() - t_start
    if masters:
        masters.restore()  # the final evaluation and the saved model: full precision
    dims = next((t.needs.matryoshka_dims for t in loop_tasks if t.needs.matryoshka_dims), None)
    summary = _finish(core, loop_tasks, dims, tc, hooks, data, log, state, run_dir, step + 1 - start_step, wall,
                      rank0, total_rows, card, task_prompts(tasks) if multi else None)
    barrier()
    return summary


def _loss_prefix(task: str) -> str:
    """Where a task's loss parameters sit in a checkpoint (a single-task run: right after the prefix)."""
    return LOSS_PREFIX + (f"{task}." if task else "")


def _task_specs(model_cfg, loss_cfg, tc, tasks) -> list[tuple]:
    """``(name, weight, loss_cfg, model_cfg, train_cfg)`` of each task (one, named "", without ``tasks``)."""
    if tasks is None:
        return [("", 1.0, loss_cfg, model_cfg, tc)]
    return [(t.name, t.weight, t.loss,
             replace(model_cfg, query_prompt=t.query_prompt, doc_prompt=t.doc_prompt),
             replace(tc, negatives=t.negatives, num_negatives=t.num_negatives, given_negatives=t.given_negatives))
            for t in tasks]


def _loop_task(i, spec, examples, data, core, teacher, tc, session, tok_len, shard=None) -> LoopTask:
    name, weight, loss_cfg, model_cfg, task_tc = spec
    needs = loss_cfg.loop_needs()
    rows = examples.task(name) if shard is not None else [ex for ex in examples if ex.task == name]
    sharded = shard is not None
    where = (f"tasks[{name}]: " if name else "") + (
        f"worker {session.rank}'s shard (1/{session.world_size} of the rows): " if sharded else "")
    if not rows:
        raise ValueError(f"{where}no training rows reached this worker")
    # A shard's rows are part of the task's: its labels and row count come from every shard's.
    totals = shard.tasks.get(name) if sharded else None
    if needs.labels:
        label_names = totals["labels"] if totals else sorted({ex.label for ex in rows if ex.label is not None})
    else:
        label_names = None
    if needs.labels and not label_names:
        raise ValueError(f"{where}loss.name: classification trains on labelled rows: set data.train_labels")
    # A loss's own parameters (a classifier head, a distillation projection) live on the model's device.
    loss_fn = build_objective(loss_cfg, gather_fn=gather_fn_for_loss(), student_dim=core.embedding_dim,
                              teacher_dim=teacher.dim if teacher else None, labels=label_names).to(session.device)
    seed = tc.seed + i  # the first task's batches are a single-task run's
    try:
        plan = BatchPlan(rows, rows.pos_chars if sharded else tok_len, batch_size=tc.batch_size,
                         world_size=1 if sharded else session.world_size, seed=seed,
                         bucket_batches=tc.bucket_batches if tc.length_bucketing else 1)
    except ValueError as e:
        raise ValueError(f"{where}{e}") from None
    sampler = NegativeSampler(shard_doc_ids(data.corpus, name + SEP if name else ""), data.positives,
                              num_negatives=task_tc.num_negatives, mode=task_tc.negatives, seed=tc.seed,
                              given=task_tc.given_negatives,
                              queries=data.positives if sharded else None)  # a shard's: its own queries
    return LoopTask(name, model_cfg, task_tc, needs, loss_fn, label_names, rows, plan, sampler,
                    float(weight if weight is not None else totals["rows"] if totals else len(rows)))


def _row_scores(examples) -> dict[str, dict[str, float]]:
    """The scores training rows carry, by query and document (a later row wins a repeat)."""
    out: dict[str, dict[str, float]] = {}
    for ex in examples:
        if ex.scores is not None:
            out.setdefault(ex.query_id, {}).update(zip((ex.pos_id, *ex.neg_ids), ex.scores))
    return out


def _batch_loss(model, core, loss_fn, model_cfg, train_cfg, data, batch, negs, device, needs,
                teacher=None, scores=None, distill=None, label_names=None,
                ) -> tuple[torch.Tensor, list[CachedEmbeddings] | None]:
    """Encode queries and all documents (positives + negatives in one forward pass), then the loss
    (plus the distillation terms the objective asks for). With ``train.mini_batch_size`` the
    embeddings come from :mod:`embedray.training.grad_cache` without a graph, and are returned
    for its second pass: ``(loss, cached or None)``."""
    doc_ids = [ex.pos_id for ex in batch] + [d for n in negs for d in n]
    # A labelled text is what a classification task is asked about: it takes the query instruction.
    prompt = model_cfg.doc_prompt if needs.queries else model_cfg.query_prompt
    d_texts = [prompt + data.doc_text(d) for d in doc_ids]
    d_tok = {k: v.to(device) for k, v in core.tokenize(d_texts, max_length=train_cfg.max_doc_length).items()}
    if not needs.queries:  # classification: one labelled text per row
        targets = torch.tensor([label_names.index(ex.label) for ex in batch], device=device)
        if train_cfg.mini_batch_size:
            cached = [embed_without_graph(model, d_tok, train_cfg.mini_batch_size)]
            return loss_fn.batch_loss(None, cached[0].reps, labels=targets), cached
        return loss_fn.batch_loss(None, model(**d_tok), labels=targets), None
    q_texts = [model_cfg.query_prompt + data.queries[ex.query_id] for ex in batch]
    q_tok = {k: v.to(device) for k, v in core.tokenize(q_texts, max_length=train_cfg.max_query_length).items()}
    hidden = teacher is not None and needs.teacher_hidden
    cached = None
    if train_cfg.mini_batch_size:
        cached = [embed_without_graph(model, q_tok, train_cfg.mini_batch_size),
                  embed_without_graph(model, d_tok, train_cfg.mini_batch_size)]
        q, d = cached[0].reps, cached[1].reps
    elif hidden:
        (q, q_states), (d, d_states) = model(**q_tok, return_hidden=True), model(**d_tok, return_hidden=True)
    else:
        q = model(**q_tok)                               # (B, dim)
        d = model(**d_tok)                               # (B + B*N, dim)
    b, n = len(batch), train_cfg.num_negatives
    d_pos, d_neg = d[:b], (d[b:].view(b, n, -1) if n else None)   # (B, dim), (B, N, dim)
    pos_ids = ids_to_tensor(doc_ids[:b]).to(device)
    neg_ids = ids_to_tensor(doc_ids[b:]).view(b, n).to(device) if n else None
    q_ids = ids_to_tensor([ex.query_id for ex in batch]).to(device)
    ids = {"q_ids": q_ids, "pos_ids": pos_ids, "neg_ids": neg_ids}
    if not needs.teacher:
        return loss_fn.batch_loss(q, d_pos, d_neg, **ids), cached  # each task loss reads the batch its own way
    if teacher is not None:
        tq = teacher.encode(q_texts, train_cfg.max_query_length)           # (B, D_t)
        td = teacher.encode(d_texts, train_cfg.max_doc_length)             # (B + B*N, D_t)
    # The cross-encoder's (or the rows') scores are the teacher's logits; the teacher bi-encoder's
    # cosines go to the objective, which puts them on its own logit scale (its temperature).
    targets: dict = {}
    if needs.teacher_scores and distill.score_source in ("cross_encoder", "data"):
        targets = {"teacher_scores": pool_scores([ex.query_id for ex in batch], doc_ids[:b],
                                                 [doc_ids[b + i * n: b + (i + 1) * n] for i in range(b)],
                                                 scores, distill.score_source,
                                                 distill.cross_encoder_temperature or 1.0).to(device)}
    elif needs.teacher_scores and distill.score_source == "fused":
        ce = pool_scores([ex.query_id for ex in batch], doc_ids[:b], [doc_ids[b + i * n: b + (i + 1) * n] for i in range(b)],
                         scores, "cross_encoder")                          # (B, 1+N) logits
        targets = {"teacher_scores": fused_targets(ce.to(device), candidate_cosines(tq, td, b, n).float(),
                                                   distill.fusion_alpha, distill.fusion_temperature or 1.0)}
    elif needs.teacher_scores and needs.teacher_in_batch:
        targets = {"teacher_cosines": in_batch_cosines(tq, td)}          # (B, B + B*N)
    elif needs.teacher_scores:
        targets = {"teacher_cosines": candidate_cosines(tq, td, b, n)}   # (B, 1+N)
    embed = {"teacher_emb": torch.cat([tq, td[:b]])} if needs.teacher_embeddings else {}
    if hidden:  # every layer's token states, queries and all documents
        ml = train_cfg.max_query_length, train_cfg.max_doc_length
        embed["hidden"] = [(q_states, teacher.states(q_texts, ml[0], q_tok["attention_mask"]), q_tok["attention_mask"]),
                           (d_states, teacher.states(d_texts, ml[1], d_tok["attention_mask"]), d_tok["attention_mask"])]
    total, _parts = loss_fn(q, d_pos, d_neg, **targets, **embed, **ids)
    return total, cached


def _not_finite(loss: float, step: int, tc: TrainConfig, saved: int | None) -> str:
    """Why the run stops before a step whose loss is NaN/inf (its weights are never updated)."""
    return (f"train: the loss is {loss} at step {step} (lr {tc.lr:g}, precision {tc.precision}); the weights "
            "were not updated with it" + (f" and the checkpoint of step {saved} is intact" if saved else "")
            + ". Lower train.lr, set train.max_grad_norm, or train with train.precision: fp32")


def _maybe_switch_pool(hooks, samplers, state, log, step, rank0) -> bool:
    """Switch ``samplers`` to the newest pool this step boundary may use (same version on every
    rank), and record the switch (step, version) in the checkpointed state; whether it switched."""
    version = broadcast_int(hooks.pool_version(step) if rank0 else 0)
    if version > state["pool_version"]:
        negatives, meta, scores = hooks.load_pool(version)
        for sampler in samplers:
            sampler.set_pool(negatives, version, scores)
        state["pool_version"] = version
        state["pool_switches"] = [*state.get("pool_switches", []), [step, version]]
        snap = meta.get("snapshot_step")
        log.event("pool", step, {"version": version, "queries": len(negatives),
                                 "staleness_steps": None if snap is None else step - snap})
        return True
    return False


def _evaluate(evaluate, core, when: str, masters: MasterWeights | None = None) -> dict[str, float]:
    """``evaluate(core, when)`` with every core; with bf16 working weights, on a copy holding the
    fp32 masters (the model a checkpoint or the final save would hold)."""
    was_training = core.training
    with _every_core(), masters.full_precision() if masters else contextlib.nullcontext(core) as model:
        metrics = evaluate(model, when)
    core.train(was_training)
    return metrics


def _dev_and_early_stop(evaluate, core, tc, log, state, step, masters=None) -> bool:
    metrics = _evaluate(evaluate, core, "step", masters)
    log.event("dev", step, metrics)
    best = state["best_dev"]
    if best is None or metrics["ndcg@10"] > best:
        state["best_dev"], state["evals_without_gain"] = metrics["ndcg@10"], 0
    else:
        state["evals_without_gain"] += 1
    patience = tc.early_stop_patience
    return bool(patience and state["evals_without_gain"] >= patience)


def _finish(core, loop_tasks, matryoshka_dims, tc, hooks, data, log, state, run_dir, steps_run, wall, rank0, pairs: int,
            card: dict | None, prompts: dict[str, str] | None = None) -> dict:
    if not rank0:
        return {}
    dev = _evaluate(hooks.evaluate, core, "final") if hooks.evaluate is not None else {}
    if dev:
        log.event("dev", tc.max_steps, dev)
    final = run_dir / "final"
    card = card or {}
    core.save_sentence_transformer(final, extra_card={"training": card, "metrics": {"dev": dev}},
                                   matryoshka_dims=list(matryoshka_dims) if matryoshka_dims else None,
                                   prompts=prompts)
    write_json_atomic(card, final / "training_config.json")
    for t in loop_tasks:
        if hasattr(t.loss_fn, "save_head"):  # a classifier head: kept beside the embedder, not part of it
            t.loss_fn.save_head(final / "classifier" / t.name if t.name else final / "classifier")
    dev_events = [e for e in log.events if e["kind"] == "dev"]
    summary = {"final_model": str(final), "steps": log.steps[-1]["step"] if log.steps else 0,
               "steps_this_session": steps_run, "wall_s": wall,
               "pairs_per_s": sum(r["pairs_per_s"] for r in log.steps[-steps_run:]) / max(1, min(steps_run, len(log.steps))),
               "dev_before": dev_events[0] if dev_events else None, "dev_after": dev or None,
               "best_dev_ndcg@10": state["best_dev"], "final_loss": log.steps[-1]["loss"] if log.steps else None,
               "train_pairs": pairs, "data_skipped": data.report.as_dict()}
    write_json_atomic(summary, run_dir / "training_summary_report.json")
    log.close()
    summary["plots"] = [str(p) for p in plot_run(run_dir)]
    write_text_atomic(summary_markdown(summary, run_dir), run_dir / "training_summary_report.md")
    return summary
