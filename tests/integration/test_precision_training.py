"""bf16 training tracks fp32: minilm-l6 on SciFact's train split (../shared/datasets), 12 steps of
16 pairs, the same seed in both precisions; every step's loss must stay close to the fp32 run's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

#: Largest per-step |loss(bf16) - loss(fp32)| allowed; 0.0036 was measured (losses 0.015-0.66).
TOLERANCE = 0.01


def _losses(scifact: Path, storage: Path, precision: str) -> list[float]:
    from embedray.config import build_config
    from embedray.pipeline.config import TrainJobConfig
    from embedray.pipeline.runtime import run_local

    job = build_config(TrainJobConfig, {
        "data": {"path": str(scifact), "train_split": "train", "dev_split": None},
        "model": {"name_or_path": "minilm-l6"},
        "loss": {"name": "infonce", "temperature": 0.05},
        "train": {"max_steps": 12, "batch_size": 16, "num_negatives": 1, "lr": 2e-5, "checkpoint_every": 0,
                  "eval_every": 0, "max_doc_length": 128, "precision": precision},
        "cluster": {"storage_path": str(storage), "run_name": precision}})
    run_local(job)
    logs = json.loads((storage / precision / "detailed_training_logs.json").read_text())
    return [row["loss"] for row in logs["steps"]]


def test_bf16_losses_track_fp32(shared_datasets, tmp_path):
    scifact = shared_datasets / "scifact"
    fp32, bf16 = _losses(scifact, tmp_path, "fp32"), _losses(scifact, tmp_path, "bf16")
    diffs = [abs(a - b) for a, b in zip(fp32, bf16)]
    print(f"\nper-step losses fp32 {[round(x, 4) for x in fp32]}\n               bf16 {[round(x, 4) for x in bf16]}"
          f"\nmax |difference| {max(diffs):.4f}")
    assert len(fp32) == len(bf16) == 12
    assert max(diffs) <= TOLERANCE and fp32 != bf16  # bf16 ran, and stayed on fp32's track
