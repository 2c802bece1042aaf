"""bf16 working weights with fp32 masters (``train.weight_dtype``): what converts, what the
optimizer steps, what checkpoints, evaluations and the saved model hold, and exact resume."""
import pytest
import torch
from safetensors.torch import load_file

from embedray.models.config import ModelConfig
from embedray.models.encoder import BiEncoder
from embedray.pipeline.runtime import run_local
from embedray.training.loop import Hooks
from embedray.training.master_weights import MasterWeights, resolve_weight_dtype
from tests.faults import Crash, crash_at
from tests.unit.training.test_loop_local import _job as loop_job, _losses


def test_auto_is_bf16_on_a_cpu_under_full_fine_tuning_only():
    assert resolve_weight_dtype("auto", "bf16", "cpu") == "bf16"
    assert resolve_weight_dtype("auto", "fp32", "cpu") == "fp32"
    assert resolve_weight_dtype("auto", "bf16", "cuda") == "fp32"
    assert resolve_weight_dtype("auto", "bf16", "cpu", finetune="lora") == "fp32"
    assert resolve_weight_dtype("fp32", "bf16", "cpu") == "fp32"
    with pytest.raises(ValueError, match="needs bf16 compute"):
        resolve_weight_dtype("bf16", "fp32", "cpu")
    with pytest.raises(ValueError, match="model.finetune: full"):
        resolve_weight_dtype("bf16", "bf16", "cpu", finetune="lora")
    with pytest.raises(ValueError, match="must be auto, fp32 or bf16"):
        resolve_weight_dtype("fp16", "bf16", "cpu")


def test_the_optimizer_steps_fp32_masters_and_the_model_reads_them_rounded():
    core = BiEncoder.from_config(ModelConfig(name_or_path="tiny-bert", projection_dim=8))
    core.precision = "bf16"
    before = {k: v.clone() for k, v in core.state_dict().items()}
    masters = MasterWeights(core)
    backbone = [p for n, p in core.named_parameters() if n.startswith("backbone.")]
    assert backbone and all(p.dtype == torch.bfloat16 for p in backbone)
    assert core.projection.weight.dtype == torch.float32  # the head stays fp32
    state = masters.state_dict()
    assert all(state[k].dtype == before[k].dtype and torch.equal(state[k], before[k]) for k in before)

    named = list(masters.named_parameters())
    assert [n for n, _ in named] == [n for n, _ in core.named_parameters()]
    trainable = [p for _, p in named if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    tok = core.tokenize(["a query about apples", "another text"])
    core(**tok).pow(2).sum().backward()
    masters.grads_to_masters()
    assert all(p.grad is None for p in backbone)
    grads = [m.grad for m in masters.masters.values() if m.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)
    opt.step()
    masters.masters_to_model()
    after = masters.state_dict()
    moved = [k for k in masters.names if not torch.equal(after[k], before[k])]
    assert moved
    for k in moved:  # working weight = the master rounded to bf16; the master keeps fp32 bits
        assert torch.equal(core.state_dict()[k], after[k].to(torch.bfloat16))
    assert any(not torch.equal(after[k], after[k].to(torch.bfloat16).float()) for k in moved)

    with masters.full_precision() as model:  # a copy with the masters; the live model untouched
        assert all(torch.equal(model.state_dict()[k], after[k]) for k in after)
    assert all(p.dtype == torch.bfloat16 for p in backbone)
    masters.restore()
    assert all(torch.equal(core.state_dict()[k], after[k]) for k in after)


def _job(beir, storage, name, **train):
    return loop_job(beir, storage, name, **{"precision": "bf16", "weight_dtype": "bf16", **train})


def test_full_precision_checkpoints_evaluations_and_model_and_exact_resume(topic_beir, tmp_path):
    ref = run_local(_job(topic_beir, tmp_path, "ref"))
    autocast_only = run_local(_job(topic_beir, tmp_path, "autocast", weight_dtype="fp32"))
    # The first dev evaluation reads the masters: the model as loaded, whatever the working dtype.
    assert ref["dev_before"] == autocast_only["dev_before"]
    assert _losses(tmp_path / "ref") != _losses(tmp_path / "autocast")  # the bf16 weights did train
    saved = load_file(str(tmp_path / "ref" / "final" / "model.safetensors"))
    assert saved and all(v.dtype == torch.float32 for v in saved.values() if v.is_floating_point())
    assert any(not torch.equal(v, v.to(torch.bfloat16).float()) for v in saved.values() if v.is_floating_point())

    with pytest.raises(Crash):
        run_local(_job(topic_beir, tmp_path, "crashy"), Hooks(on_step=[crash_at(5)]))
    resumed = run_local(_job(topic_beir, tmp_path, "crashy"))  # resumes at step 3 from fp32 masters
    assert resumed["steps_this_session"] == 5
    assert _losses(tmp_path / "crashy") == pytest.approx(_losses(tmp_path / "ref"), abs=1e-6)
