"""A NaN loss stops the run with a message naming the step and the intact checkpoint, before
the optimizer applies it (the loss itself is replaced here: what is tested is the guard)."""
import pytest
import torch

from embedray.config import build_config
from embedray.pipeline.config import TrainJobConfig
from embedray.pipeline.runtime import run_local
from embedray.training import loop


def test_a_nan_loss_stops_the_run_before_the_update(topic_beir, tmp_path, monkeypatch):
    real, calls = loop._batch_loss, []

    def nan_at_step_3(*args, **kwargs):
        calls.append(1)
        loss, cached = real(*args, **kwargs)
        return (loss * float("nan") if len(calls) == 3 else loss), cached

    monkeypatch.setattr(loop, "_batch_loss", nan_at_step_3)
    job = build_config(TrainJobConfig, {
        "data": {"path": str(topic_beir)}, "model": {"name_or_path": "tiny-bert"},
        "train": {"max_steps": 6, "batch_size": 4, "checkpoint_every": 2, "eval_every": 0, "precision": "fp32"},
        "cluster": {"storage_path": str(tmp_path), "run_name": "nan"}})
    with pytest.raises(FloatingPointError, match=r"the loss is nan at step 3 .*checkpoint of step 2 is intact"):
        run_local(job)
    assert not (tmp_path / "nan" / "final").exists()
    saved = sorted((tmp_path / "nan").glob("checkpoint-*"))
    assert [p.name for p in saved] == ["checkpoint-000002"]
    assert all(torch.isfinite(v).all() for v in _weights(saved[0]).values())


def _weights(ckpt):
    from safetensors.torch import load_file

    files = list(ckpt.rglob("*.safetensors"))
    assert files, f"no weights in {ckpt}"
    return load_file(files[0])
