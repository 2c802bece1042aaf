"""bf16 training tracks fp32: minilm-l6 on SciFact's train split (../shared/datasets), 12 steps of
16 pairs (4 of 8 at 32 tokens where the CPU emulates bf16), the same seed in both precisions; every step's loss must stay close to the fp32 run's,
with bf16 working weights (fp32 masters, the default on a CPU) and with autocast over fp32
weights."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

#: Largest per-step |loss(bf16) - loss(fp32)| allowed (the measured differences, for both working
#: dtypes, are in the README's precision table).
TOLERANCE = 0.01


#: (steps, pairs per step, document tokens): the full check on a CPU with bf16 units; where torch
#: emulates bf16 (AVX2 only) a step costs about twenty fp32 steps, so a shorter run checks the same.
FULL, EMULATED = (12, 16, 128), (4, 8, 32)


def _size() -> tuple[int, int, int]:
    from embedray.models.precision import cpu_bf16_is_fast

    return FULL if cpu_bf16_is_fast() else EMULATED


def _losses(scifact: Path, storage: Path, precision: str, weight_dtype: str = "auto") -> list[float]:
    from embedray.config import build_config
    from embedray.pipeline.config import TrainJobConfig
    from embedray.pipeline.runtime import run_local

    steps, batch_size, doc_tokens = _size()
    job = build_config(TrainJobConfig, {
        "data": {"path": str(scifact), "train_split": "train", "dev_split": None},
        "model": {"name_or_path": "minilm-l6"},
        "loss": {"name": "infonce", "temperature": 0.05},
        "train": {"max_steps": steps, "batch_size": batch_size, "num_negatives": 1, "lr": 2e-5,
                  "checkpoint_every": 0, "eval_every": 0, "max_doc_length": doc_tokens, "precision": precision,
                  "weight_dtype": weight_dtype},
        "cluster": {"storage_path": str(storage), "run_name": f"{precision}-{weight_dtype}"}})
    run_local(job)
    logs = json.loads((storage / f"{precision}-{weight_dtype}" / "detailed_training_logs.json").read_text())
    return [row["loss"] for row in logs["steps"]]


def test_bf16_losses_track_fp32(shared_datasets, tmp_path):
    scifact = shared_datasets / "scifact"
    fp32 = _losses(scifact, tmp_path, "fp32")
    for weight_dtype in ("bf16", "fp32"):
        bf16 = _losses(scifact, tmp_path, "bf16", weight_dtype)
        diffs = [abs(a - b) for a, b in zip(fp32, bf16)]
        print(f"\nper-step losses fp32 {[round(x, 4) for x in fp32]}\n bf16, {weight_dtype} weights "
              f"{[round(x, 4) for x in bf16]}\nmax |difference| {max(diffs):.4f}")
        assert len(fp32) == len(bf16) == _size()[0]
        assert max(diffs) <= TOLERANCE and fp32 != bf16  # bf16 ran, and stayed on fp32's track
