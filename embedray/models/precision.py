"""One precision policy for every forward pass: ``auto`` | ``fp32`` | ``bf16``.

``auto`` means bf16 where the hardware runs it fast — a CUDA GPU with bf16, or a CPU with
AMX-BF16 or AVX512-BF16 (torch's CPU capability report says which) — and fp32 elsewhere.
bf16 covers the transformer only: it runs under ``torch.autocast`` (weights stay fp32, so
training keeps fp32 master weights), and its outputs are cast back to fp32 before anything
else. Pooling, normalisation, projections, similarity scores, losses and cross-encoder
scoring heads stay fp32.

Two ways in: :class:`~embedray.models.encoder.BiEncoder` reads its ``precision`` attribute in
``forward``; :func:`use_precision` does the same to a loaded sentence-transformers
``SentenceTransformer`` or ``CrossEncoder`` (their first module is the transformer).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Literal

import torch

from embedray.models.config import check_precision

#: Attribute set on a model by :func:`use_precision` (the resolved ``fp32`` / ``bf16``).
ATTR = "embedray_precision"


@functools.cache
def cpu_bf16_is_fast() -> bool:
    """Whether this CPU has bf16 matrix units (AMX-BF16) or instructions (AVX512-BF16)."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 pays on ``device``: a CUDA GPU that supports it, or a CPU with bf16 units."""
    device = torch.device(device)
    if device.type == "cuda":  # native bf16 (Ampere and later), not the emulation older GPUs offer
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_bf16_is_fast()


def available_device() -> torch.device:
    """The GPU this process was given (Ray hides the others from it, and every GPU from a task
    that asked for none), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> Literal["fp32", "bf16"]:
    """``fp32`` or ``bf16`` for ``precision`` on ``device`` (``auto`` asks :func:`bf16_is_fast`)."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return precision  # type: ignore[return-value]


def autocast(precision: str, device: torch.device | str):
    """``torch.autocast`` to bf16 when ``precision`` resolves to bf16 on ``device``, else a no-op."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _float32(value: Any) -> Any:
    """Floating tensors (in dicts, lists, tuples) cast to fp32; everything else as is."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)({k: _float32(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return type(value)(_float32(v) for v in value)
    return value


def _fp32_head(module: torch.nn.Module) -> None:
    """Run a scoring head (``classifier`` / ``score``) outside autocast, on fp32 inputs."""
    for name in ("classifier", "score"):
        head = getattr(module, name, None)
        if isinstance(head, torch.nn.Module) and not getattr(head, ATTR, None):
            forward = head.forward

            def fp32_forward(*args, _forward=forward, **kwargs):
                with torch.autocast(args[0].device.type if args and isinstance(args[0], torch.Tensor) else "cpu",
                                    enabled=False):
                    return _forward(*_float32(args), **_float32(kwargs))

            head.forward = fp32_forward
            setattr(head, ATTR, "fp32")


def use_precision(model, precision: str) -> str:
    """Run a sentence-transformers model's transformer in ``precision``; the rest stays fp32.

    The first module's ``forward`` is wrapped (once; calling again changes the precision):
    autocast inside, every floating output cast to fp32 on the way out, so pooling, Dense,
    Normalize and a cross-encoder's activation see fp32. A cross-encoder's scoring head runs in
    fp32 too.

    Args:
        model: a ``SentenceTransformer`` or ``CrossEncoder`` (any ``nn.Sequential`` whose first
            module is the transformer).
        precision: ``auto``, ``fp32`` or ``bf16``.

    Returns:
        The resolved precision, ``fp32`` or ``bf16`` (also in ``model.embedray_precision``).
    """
    device = next(model.parameters()).device
    resolved = resolve_precision(precision, device)
    first = model[0]
    if not hasattr(first, "_embedray_forward"):
        first._embedray_forward = first.forward

        def forward(*args, **kwargs):
            with autocast(getattr(model, ATTR, "fp32"), next(model.parameters()).device):
                return _float32(first._embedray_forward(*args, **kwargs))

        first.forward = forward
        inner = getattr(first, "auto_model", None) or getattr(first, "model", None)
        if isinstance(inner, torch.nn.Module):
            _fp32_head(inner)
    setattr(model, ATTR, resolved)
    return resolved
