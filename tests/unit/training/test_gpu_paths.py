"""What the CUDA runs depend on, checked without a GPU: collectives on the device NCCL needs,
bf16 only where a GPU runs it natively, a QLoRA checkpoint that loads back, the CUDA generator
of the rank's own GPU; `tests/integration/test_cuda.py` runs the same paths on a GPU."""
import pytest
import torch
import torch.distributed as dist

from embedray.models import precision
from embedray.training import checkpoint as ckpt
from embedray.training import distributed


def test_collectives_live_on_the_current_gpu_under_nccl(monkeypatch):
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed.collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    assert distributed.collective_device() == torch.device("cpu")


class _Seen(Exception):
    pass


@pytest.mark.parametrize("call", [lambda: distributed.mean_across_workers(1.5),
                                  lambda: distributed.broadcast_flag(True),
                                  lambda: distributed.broadcast_int(7)], ids=["mean", "flag", "int"])
def test_each_scalar_collective_builds_its_tensor_on_the_collective_device(call, monkeypatch):
    seen = []

    def collective(t, *a, **k):
        seen.append(t.device)
        raise _Seen  # a meta tensor has no value to read back

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "collective_device", lambda: torch.device("meta"))
    monkeypatch.setattr(dist, "all_reduce", collective)
    monkeypatch.setattr(dist, "broadcast", collective)
    with pytest.raises(_Seen):
        call()
    assert seen == [torch.device("meta")]


def test_auto_precision_wants_native_bf16_on_a_gpu(monkeypatch):
    asked = []

    def supported(including_emulation=True):
        asked.append(including_emulation)
        return including_emulation  # a pre-Ampere GPU: bf16 only emulated

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert precision.resolve_precision("auto", "cuda") == "fp32" and asked == [False]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.resolve_precision("auto", "cuda") == "bf16"
    assert precision.available_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.available_device() == torch.device("cpu")


class _Base4bit(torch.nn.Module):
    """A stand-in for a bitsandbytes ``Linear4bit``: its state dict carries the quantisation
    state beside the packed weight, which ``load_state_dict`` does not take back."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(4, 1, dtype=torch.uint8), requires_grad=False)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight.absmax"] = torch.ones(2)
        destination[prefix + "weight.quant_map"] = torch.ones(16)
        destination[prefix + "weight.quant_state.bitsandbytes__nf4"] = torch.ones(8, dtype=torch.uint8)


def test_a_quantised_bases_state_loads_back():
    model = torch.nn.ModuleDict({"base_layer": _Base4bit(), "lora_A": torch.nn.Linear(2, 2)})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    assert "base_layer.weight.absmax" in saved
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict(saved)  # what a QLoRA resume did
    with torch.no_grad():
        model["lora_A"].weight.zero_()
    model.load_state_dict(ckpt.loadable_model_state(model, saved))
    assert torch.equal(model["lora_A"].weight, saved["lora_A.weight"])
    # Anything else unknown is still refused.
    with pytest.raises(RuntimeError, match="Unexpected key.*lora_C"):
        model.load_state_dict(ckpt.loadable_model_state(model, {**saved, "lora_C.weight": torch.ones(1)}))


def test_a_checkpoint_keeps_the_cuda_generator_of_its_own_gpu_only(tmp_path, monkeypatch):
    state = {"model_state": {"w": torch.ones(1)}, "optimizer_state": {}, "scheduler_state": {},
             "trainer_state": {"step": 1, "state": {}}}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.arange(4, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                        lambda: pytest.fail("every visible GPU's generator saved"))
    folder = ckpt.save_local(tmp_path, 1, num_to_keep=1, **state)
    rng = ckpt.read_state(folder)["rng"]
    assert torch.equal(rng["cuda_current"], torch.arange(4, dtype=torch.uint8))
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append(("current", s)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.append(("all", len(s))))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    ckpt.restore_rng(rng)
    ckpt.restore_rng({"torch": rng["torch"], "cuda": [rng["cuda_current"]] * 2})  # an older checkpoint's
    ckpt.restore_rng({"torch": rng["torch"], "cuda": [rng["cuda_current"]] * 4})  # from a node with 4: skipped
    assert [r[0] for r in restored] == ["current", "all"] and restored[1][1] == 2
