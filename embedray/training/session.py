"""What the training loop needs from its runtime: rank, model preparation, checkpoints, data.

``LocalSession`` runs the loop in one plain process (debugging, tests, a laptop without Ray).
The Ray Train session (embedray/cluster/train.py) implements the same methods with
``ray.train``; the loop cannot tell them apart.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from embedray.training import checkpoint as ckpt
from embedray.training.batches import Example


class Session(Protocol):
    """``shard`` (optional, e.g. :class:`embedray.training.shards.Shard`): set when
    ``training_examples()`` is only this rank's shard of the rows; it carries every shard's
    ``total`` row count, the rows' ``digest`` (a resume on other rows is refused) and per-task
    ``tasks`` totals (row counts, labels). Without it every rank gets every row."""

    rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: nn.Module) -> nn.Module: ...
    def training_examples(self) -> list[Example]: ...
    def restore(self, seed: int | None = None) -> dict | None: ...
    def save_checkpoint(self, step: int, metrics: dict, **state) -> None: ...
    def report(self, metrics: dict) -> None: ...


class LocalSession:
    """One process, no Ray: checkpoints go to ``run_dir/checkpoint-N`` (atomic, pruned)."""

    rank = 0
    world_size = 1

    def __init__(self, run_dir: Path, examples: list[Example], num_to_keep: int = 2,
                 device: str | None = None):
        self.run_dir = Path(run_dir)
        self.examples, self.num_to_keep = examples, num_to_keep
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def training_examples(self) -> list[Example]:
        return self.examples

    def restore(self, seed: int | None = None) -> dict | None:
        """The newest complete checkpoint's state (None: none yet); one written with another
        number of workers or another ``seed`` is refused."""
        found = ckpt.latest_complete(self.run_dir)
        if found is None:
            return None
        return ckpt.read_state(found, self.rank, world_size=self.world_size, seed=seed)

    def save_checkpoint(self, step: int, metrics: dict, **state) -> None:
        ckpt.save_local(self.run_dir, step, self.num_to_keep, rank=0, **state)

    def report(self, metrics: dict) -> None:
        pass
