"""All-gather across DDP workers that keeps gradients: in-batch negatives from every worker.

With ``InfoNCELoss(gather_fn=gather_fn_for_loss())`` each worker scores its own queries against
the documents of all workers. This is the only place the losses meet ``torch.distributed``.

Loss-scaling convention (why the result equals one process on the concatenated batch)
-----------------------------------------------------------------------------------
Worker ``r`` holds ``B_r`` rows (``W`` workers, ``B = sum_r B_r``). It computes ``L_r``, the mean
of the per-query losses of its own ``B_r`` queries against all ``B`` candidates. The single-process
loss on the concatenated batch is ``L = (1/B) sum_i l_i``. The gather's backward *sums* over workers
the gradient every worker's loss sends to this worker's rows. So if each worker backpropagates
``c_r * L_r`` with ``c_r = ddp_loss_scale(B_r) = W * B_r / B``:

* the gradient on worker ``r``'s local embeddings is ``W * dL/de_r``;
* DDP averages parameter gradients (divides by ``W``), giving exactly ``dL/dtheta``;
* the loss to log is ``reduce_mean(c_r * L_r) = L``.

With equal batches ``c_r = 1``: backpropagate the local loss as usual and let DDP average. Only a
ragged last batch needs ``ddp_loss_scale``; ``gather_with_offset`` handles the ragged shapes.
Every worker must call the gathers in the same order on tensors of the same trailing shape, and
must all either keep or not keep gradients (the backward of the gather is itself a collective).
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_autograd
from torch import Tensor

from embedray.losses.infonce import GatherFn
from embedray.training.distributed import collective_device

_MAX_DIMS = 7  # shapes travel as a fixed-size vector (ndim, *shape, -1 padding)


def is_distributed() -> bool:
    """Whether a default ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def gather_with_offset(tensor: Tensor) -> tuple[Tensor, int]:
    """Concatenate ``tensor`` from every worker along dim 0, with gradients flowing back to each worker.

    Workers may hold different numbers of rows (a ragged last batch): shapes are exchanged first,
    rows are padded to the largest count for the collective and the padding is cut away after.

    Args:
        tensor: ``(B_r, ...)``; the trailing dims must match on every worker.

    Returns:
        ``(gathered, start)``: ``(sum_r B_r, ...)`` in rank order, and the row where this worker's
        rows begin. Without a process group: ``(tensor, 0)``.

    Raises:
        ValueError: when the trailing dims differ across workers (raised on every worker).
    """
    if not is_distributed():
        return tensor, 0
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = _gather_rows(tensor)  # list of B_r, after checking trailing dims
    most = max(rows)
    padded = tensor
    if tensor.shape[0] < most:
        padded = torch.cat([tensor, tensor.new_zeros((most - tensor.shape[0], *tensor.shape[1:]))])
    if tensor.requires_grad:
        # sentence-transformers' all_gather_with_grad uses the same autograd collective: its backward
        # sums the gradients of all workers for each worker's slice (reduce-scatter, or all-to-all on
        # gloo). It is deprecated in favour of a private module (_functional_collectives); it still
        # works on every torch >= 2.4 this project supports, so only its warning is silenced.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            parts = list(dist_autograd.all_gather(padded.contiguous()))
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
    gathered = torch.cat([part[:n] for part, n in zip(parts, rows)])  # (sum_r B_r, ...)
    return gathered, sum(rows[:rank])


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """``(B_r, ...)`` on each worker -> ``(sum_r B_r, ...)`` on every worker, differentiable.

    The local slice is computed from this worker's tensor and the gradients that other workers'
    losses send to it come back through the collective. Identity without a process group.
    """
    return gather_with_offset(tensor)[0]


def gather_fn_for_loss() -> GatherFn:
    """The ``gather_fn`` for ``InfoNCELoss`` / ``SimCSELoss``: ``t -> (gathered, start)``.

    Identity ``(t, 0)`` when ``torch.distributed`` is not initialised, so one config runs on one
    process or many.
    """
    return gather_with_offset


def ddp_loss_scale(local_rows: int) -> float:
    """``W * B_r / sum_r B_r``: multiply the local loss by this before ``backward()`` (see module doc).

    1.0 when all workers hold the same number of rows, and when not distributed.
    """
    if not is_distributed():
        return 1.0
    counts = torch.tensor([float(local_rows)], device=collective_device())
    dist.all_reduce(counts)
    return dist.get_world_size() * local_rows / counts.item()


def reduce_mean(value: Tensor) -> Tensor:
    """Detached mean of a scalar over workers (for logging); the value itself when not distributed."""
    value = value.detach().clone()
    if is_distributed():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def _gather_rows(tensor: Tensor) -> list[int]:
    """Exchange shapes; return every worker's row count, or raise if the trailing dims differ."""
    if tensor.dim() > _MAX_DIMS or tensor.dim() == 0:
        raise ValueError(f"can gather tensors with 1 to {_MAX_DIMS} dims, got shape {tuple(tensor.shape)}")
    shape = torch.full((_MAX_DIMS + 1,), -1, dtype=torch.long, device=tensor.device)
    shape[0] = tensor.dim()
    shape[1:tensor.dim() + 1] = torch.tensor(tensor.shape, dtype=torch.long)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    shapes_list = [s.tolist() for s in shapes]
    trailing = {tuple(s[2:]) for s in shapes_list}
    if len(trailing) != 1:
        described = ", ".join(f"rank {r}: {tuple(s[1:s[0] + 1])}" for r, s in enumerate(shapes_list))
        raise ValueError(f"cannot gather across workers: shapes differ beyond dim 0 ({described})")
    return [s[1] for s in shapes_list]
