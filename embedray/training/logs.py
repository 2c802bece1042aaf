"""Run logs: per-step JSON, per-epoch losses, TensorBoard events (rank 0 only)."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from embedray.atomic import write_json_atomic


class RunLogger:
    """Keeps ``detailed_training_logs.json`` consistent with the checkpoint a run resumed from:
    entries past ``start_step`` (written before a crash, about to be redone) are dropped."""

    def __init__(self, run_dir: Path, start_step: int, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.steps: list[dict] = []
        self.events: list[dict] = []
        self.writer = None
        if not enabled:
            return
        old = self.run_dir / "detailed_training_logs.json"
        if old.exists() and start_step > 0:
            prior = json.loads(old.read_text())
            self.steps = [r for r in prior.get("steps", []) if r["step"] <= start_step]
            self.events = [r for r in prior.get("events", []) if r.get("step", 0) <= start_step]
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(self.run_dir / "runs"), purge_step=start_step + 1)

    def step(self, record: dict) -> None:
        if not self.enabled:
            return
        self.steps.append(record)
        for key in ("loss", "lr", "grad_norm", "pairs_per_s"):
            if key in record:
                self.writer.add_scalar(f"train/{key}", record[key], record["step"])

    def event(self, kind: str, step: int, values: dict) -> None:
        """A non-step record, e.g. a dev evaluation or a negative refresh."""
        if not self.enabled:
            return
        self.events.append({"kind": kind, "step": step, **values})
        for key, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"{kind}/{key}", v, step)

    def flush(self) -> None:
        if not self.enabled:
            return
        write_json_atomic({"steps": self.steps, "events": self.events},
                          self.run_dir / "detailed_training_logs.json")
        by_epoch: dict[int, list[float]] = defaultdict(list)
        for r in self.steps:
            by_epoch[r["epoch"]].append(r["loss"])
        write_json_atomic([{"epoch": e, "mean_loss": sum(v) / len(v), "steps": len(v)}
                           for e, v in sorted(by_epoch.items())],
                          self.run_dir / "training_losses.json")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.flush()
            self.writer.close()


def summary_markdown(summary: dict, run_dir: Path) -> str:
    """``training_summary_report.md``: the run's summary (:func:`embedray.training.loop` writes
    the JSON) for people: steps, time, data, loss, the dev split before and after, plots."""
    run_dir = Path(run_dir)

    def rel(path: str) -> str:
        p = Path(path)
        return str(p.relative_to(run_dir)) if p.is_relative_to(run_dir) else p.name

    skipped = summary.get("data_skipped") or {}
    rows = [("steps", f"{summary['steps']} ({summary['steps_this_session']} this session)"),
            ("wall time", f"{summary['wall_s']:.0f} s this session, {summary['pairs_per_s']:.1f} pairs/s"),
            ("training pairs", f"{summary['train_pairs']} ({skipped.get('total', 0)} rows skipped)"),
            ("final loss", "n/a" if summary.get("final_loss") is None else f"{summary['final_loss']:.4f}"),
            ("model", f"`{rel(summary['final_model'])}/` (SentenceTransformer loads it)")]
    lines = [f"# Training summary: {run_dir.name}", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    before, after = summary.get("dev_before"), summary.get("dev_after")
    lines += ["## Dev split", ""]
    if before and after:
        metrics = [k for k, v in after.items() if isinstance(v, float) and isinstance(before.get(k), float)]
        lines += [f"| metric | before (step {before.get('step', 0)}) | after (step {summary['steps']}) | change |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {k} | {before[k]:.4f} | {after[k]:.4f} | {after[k] - before[k]:+.4f} |" for k in metrics]
        note = f"{after.get('num_queries', '?')} dev queries"
        if summary.get("best_dev_ndcg@10") is not None:
            note += f"; best nDCG@10 during training: {summary['best_dev_ndcg@10']:.4f}"
        lines += ["", note + "."]
    else:
        lines += ["No dev figures: the run has no dev split (`data.dev_split`), or it was not evaluated."]
    if skipped.get("total"):
        lines += ["", "## Skipped rows", "", *(f"- {reason}: {n}" for reason, n in skipped["by_reason"].items()),
                  *(f"- e.g. `{e}`" for e in skipped.get("examples", [])[:3])]
    if summary.get("plots"):
        lines += ["", "## Plots", "", *(f"![{Path(p).stem}]({rel(p)})" for p in summary["plots"])]
    return "\n".join(lines) + "\n"
