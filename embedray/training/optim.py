"""The optimizer both trainers use."""
from __future__ import annotations

import torch

FUSED_DEVICES = ("cpu", "cuda")


def adamw(groups: list[dict], lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """``torch.optim.AdamW``, fused (one kernel over all parameters) where the parameters allow it.

    The per-tensor loop launches one kernel per tensor and step; the fused kernel one for all,
    with the same AdamW update (within float rounding).
    """
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused)
