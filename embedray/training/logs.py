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
