"""bf16 working weights with fp32 master weights, for training under bf16 on a CPU.

Under ``torch.autocast`` alone every matrix multiply casts its fp32 weight to bf16 (and casts
the gradient back in the backward pass), and the embeddings, biases and activations between
the matmuls stay fp32, so a CPU with bf16 units still moves fp32 tensors through most of the
step. Here the backbone's weights *are* bf16 during the forward and backward passes, and
autocast still runs the ops it keeps in fp32 (layer norm, softmax) in fp32. The optimizer
never sees them: it steps fp32 copies (the masters), the bf16 gradients are widened into the
masters' before clipping, and the updated masters are rounded into the working weights after
each step. Checkpoints, weight snapshots, the dev evaluations and the saved model read the
masters, so nothing the run writes or measures is rounded to bf16 (as in Megatron-LM's and
DeepSpeed's bf16 training).

Only the backbone's weights are converted (a projection head and a loss's own parameters stay
fp32), and only under full fine-tuning: LoRA's trainable weights are the adapters, and its
frozen base is merged into them in full precision when the model is saved.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Literal

import torch
from torch import nn

WeightDtype = Literal["fp32", "bf16"]


def resolve_weight_dtype(weight_dtype: str, precision: str, device: torch.device | str,
                         finetune: str = "full") -> WeightDtype:
    """``bf16`` or ``fp32`` working weights for ``train.weight_dtype`` (``auto``: bf16 when the
    resolved compute ``precision`` is bf16 on a CPU under full fine-tuning; fp32 elsewhere).

    Raises:
        ValueError: an unknown value; ``bf16`` with fp32 compute or with LoRA/QLoRA.
    """
    if weight_dtype not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.weight_dtype: must be auto, fp32 or bf16, got {weight_dtype!r}")
    if weight_dtype == "auto":
        cpu = torch.device(device).type == "cpu"
        return "bf16" if precision == "bf16" and cpu and finetune == "full" else "fp32"
    if weight_dtype == "bf16" and precision != "bf16":
        raise ValueError("train.weight_dtype: bf16 needs bf16 compute; set train.precision: bf16 (or auto on "
                         "hardware with bf16 units)")
    if weight_dtype == "bf16" and finetune != "full":
        raise ValueError(f"train.weight_dtype: bf16 is for model.finetune: full (with {finetune} the trainable "
                         "weights are the adapters); use auto or fp32")
    return weight_dtype  # type: ignore[return-value]


class MasterWeights:
    """fp32 masters of ``core``'s backbone weights, whose working copies become bf16.

    Build it before the model is wrapped for data parallelism (DDP registers its gradient
    hooks on the working weights as they are then). The optimizer gets :meth:`named_parameters`;
    each step calls :meth:`grads_to_masters` after the backward pass and :meth:`masters_to_model`
    after ``optimizer.step()``.
    """

    def __init__(self, core: nn.Module, prefix: str = "backbone."):
        self.core = core
        named = [(n, p) for n, p in core.named_parameters() if n.startswith(prefix) and p.is_floating_point()]
        self.names = [n for n, _ in named]
        self.working = [p for _, p in named]
        self.masters = {n: nn.Parameter(p.detach().float().clone(), requires_grad=p.requires_grad) for n, p in named}
        with torch.no_grad():
            for p in self.working:
                p.data = p.data.to(torch.bfloat16)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``core.named_parameters()`` with each converted weight's fp32 master in its place."""
        for name, p in self.core.named_parameters():
            yield name, self.masters.get(name, p)

    def grads_to_masters(self) -> None:
        """Move the working weights' bf16 gradients into the masters' (as fp32)."""
        for name, p in zip(self.names, self.working):
            if p.grad is not None:
                self.masters[name].grad = p.grad.float()
                p.grad = None

    @torch.no_grad()
    def masters_to_model(self) -> None:
        """Round the (updated) masters into the working weights."""
        torch._foreach_copy_(self.working, [self.masters[n] for n in self.names])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``core.state_dict()`` with the masters' fp32 values for the converted weights."""
        state = dict(self.core.state_dict())
        state.update({n: m.detach() for n, m in self.masters.items()})
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a full-precision state: the masters exactly, the working weights rounded."""
        self.core.load_state_dict(state)
        for name, master in self.masters.items():
            master.copy_(state[name])
        self.masters_to_model()

    @contextlib.contextmanager
    def full_precision(self) -> Iterator[nn.Module]:
        """A copy of ``core`` whose weights are the masters (for a dev evaluation: it measures the
        model the run would save, and leaves the working weights and their DDP hooks alone)."""
        model = copy.deepcopy(self.core)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.masters:
                    p.data = self.masters[name].detach()
        yield model

    @torch.no_grad()
    def restore(self) -> None:
        """Put the masters back into ``core`` for good (after the last step: the saved model and
        the final evaluation are full precision)."""
        for name, p in zip(self.names, self.working):
            p.grad = None
            p.data = self.masters[name].detach().clone()
