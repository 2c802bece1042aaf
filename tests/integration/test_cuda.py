"""The training loop's CUDA paths, on a GPU: NCCL collectives, a loss's own parameters, bf16
weights with fp32 masters, a QLoRA run that resumes from its checkpoint, auto precision.
Skipped without a CUDA GPU (`tests/unit/training/test_gpu_paths.py` checks the same on CPU)."""
import json
import socket

import pytest
import torch

from embedray.config import build_config
from embedray.pipeline.config import TrainJobConfig
from embedray.pipeline.runtime import run_local

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _job(topic_beir, tmp_path, name, **sections):
    base = {"data": {"path": str(topic_beir), "dev_split": None}, "model": {"name_or_path": "tiny-bert"},
            "loss": {"name": "infonce", "temperature": 0.1},
            "train": {"max_steps": 3, "batch_size": 4, "num_negatives": 1, "checkpoint_every": 1, "eval_every": 0,
                      "max_doc_length": 32},
            "cluster": {"storage_path": str(tmp_path), "run_name": name}}
    for key, values in sections.items():
        base[key] = {**base.get(key, {}), **values}
    return build_config(TrainJobConfig, base)


def _losses(run):
    return [r["loss"] for r in json.loads((run / "detailed_training_logs.json").read_text())["steps"]]


def test_scalar_collectives_under_nccl():
    from embedray.training import distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.cuda.set_device(0)
    torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        assert distributed.collective_device().type == "cuda"
        assert distributed.mean_across_workers(1.5) == 1.5
        assert distributed.broadcast_flag(True) is True
        assert distributed.broadcast_int(7) == 7
    finally:
        torch.distributed.destroy_process_group()


def test_a_loss_with_its_own_parameters_trains_on_the_gpu(topic_beir, tmp_path):
    # The embedding-distillation projection is the loss's own nn.Linear: it must follow the model.
    job = _job(topic_beir, tmp_path, "embed", loss={"distill_score": "kl", "distill_embed": True},
               distill={"teacher": "tiny-bert@1"})
    summary = run_local(job)
    assert summary["steps"] == 3 and all(loss == loss for loss in _losses(tmp_path / "embed"))


def test_bf16_weights_with_fp32_masters_on_the_gpu(topic_beir, tmp_path):
    job = _job(topic_beir, tmp_path, "masters", train={"precision": "bf16", "weight_dtype": "bf16"})
    run_local(job)
    resumed = _job(topic_beir, tmp_path, "masters", train={"precision": "bf16", "weight_dtype": "bf16",
                                                           "max_steps": 5})
    assert run_local(resumed)["steps"] == 5 and len(_losses(tmp_path / "masters")) == 5


def test_a_qlora_run_resumes_from_its_checkpoint(topic_beir, tmp_path):
    pytest.importorskip("bitsandbytes")
    model = {"finetune": "qlora", "lora_r": 4, "dtype": "bfloat16"}
    run_local(_job(topic_beir, tmp_path, "qlora", model=model))
    summary = run_local(_job(topic_beir, tmp_path, "qlora", model=model, train={"max_steps": 5}))
    assert summary["steps"] == 5 and len(_losses(tmp_path / "qlora")) == 5


def test_auto_precision_is_bf16_only_where_the_gpu_has_it():
    from embedray.models.precision import resolve_precision

    major, _ = torch.cuda.get_device_capability()
    assert resolve_precision("auto", "cuda") == ("bf16" if major >= 8 else "fp32")


def test_stages_encode_on_the_gpu_they_were_given():
    from embedray.pipeline.stages import _device

    assert _device() == "cuda"
