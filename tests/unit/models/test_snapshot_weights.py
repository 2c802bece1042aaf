"""A refresher's model takes the trainer's snapshots: as they are (full, LoRA), or from a QLoRA
run onto a full-precision base (the quantised base weights left out, every adapter weight taken)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from embedray.models.config import ModelConfig
from embedray.models.encoder import BiEncoder, load_snapshot, unquantised

from .conftest import TEXTS, sgd_steps


def _trained(**kwargs) -> BiEncoder:
    torch.manual_seed(0)
    model = BiEncoder.from_config(ModelConfig("tiny-bert", **kwargs))
    sgd_steps(model)
    return model.eval()


def _quantised(state: dict, model: BiEncoder) -> dict:
    """``state`` as a 4-bit QLoRA trainer's state dict has it: each frozen base Linear weight
    packed into uint8 with bitsandbytes' quantisation state beside it."""
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n}
    out = {}
    for k, v in state.items():
        if k in linear and not k.startswith("projection"):
            out[k] = torch.zeros((v.numel() // 2, 1), dtype=torch.uint8)
            out[k + ".absmax"] = torch.ones(v.numel() // 64)
            out[k + ".quant_state.bitsandbytes__nf4"] = torch.zeros(8, dtype=torch.uint8)
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_a_snapshot_of_the_same_kind_loads_exactly(finetune):
    trainer = _trained(finetune=finetune)
    refresher = BiEncoder.from_config(unquantised(ModelConfig("tiny-bert", finetune=finetune))).eval()
    load_snapshot(refresher, {k: v.clone() for k, v in trainer.state_dict().items()})
    np.testing.assert_array_equal(refresher.encode(TEXTS), trainer.encode(TEXTS))


def test_a_qlora_snapshot_puts_its_adapter_on_the_full_precision_base():
    cfg = ModelConfig("tiny-bert", finetune="qlora", lora_r=4)
    refresher = BiEncoder.from_config(unquantised(cfg)).eval()  # no GPU, no bitsandbytes needed
    assert refresher.config.finetune == "lora"
    # What the trainer holds, but for the quantisation of its base: a LoRA model trained a little.
    trainer = _trained(finetune="lora", lora_r=4)
    before = refresher.encode(TEXTS)
    snapshot = _quantised(trainer.state_dict(), trainer)
    assert any(v.dtype == torch.uint8 for v in snapshot.values())
    load_snapshot(refresher, snapshot)
    np.testing.assert_allclose(refresher.encode(TEXTS), trainer.encode(TEXTS), atol=1e-6)
    assert not np.allclose(before, trainer.encode(TEXTS), atol=1e-3)  # the adapter moved it
    lacking = {k: v for k, v in snapshot.items() if ".lora_B." not in k}
    with pytest.raises(ValueError, match=r"snapshot lacks \d+ trained weights \(e.g. .*lora_B"):
        load_snapshot(refresher, lacking)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_real_qlora_snapshot_loads_into_the_refresher():
    pytest.importorskip("bitsandbytes")
    trainer = BiEncoder.from_config(ModelConfig("tiny-bert", finetune="qlora", lora_r=4, dtype="bfloat16"))
    with torch.no_grad():
        for n, p in trainer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    refresher = BiEncoder.from_config(unquantised(trainer.config)).eval()
    load_snapshot(refresher, {k: v.detach().cpu().clone() for k, v in trainer.state_dict().items()})
    live, merged = trainer.eval().encode(TEXTS), refresher.encode(TEXTS)
    assert ((live * merged).sum(-1)).min() > 0.9  # the 4-bit base against the full-precision one
