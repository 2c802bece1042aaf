"""Small collective helpers for the loop; each is a no-op in a single process."""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def collective_device() -> torch.device:
    """Where a collective's tensors must live: the current CUDA device under NCCL (it has no CPU
    transport), else the CPU (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_across_workers(value: float) -> float:
    """Average a scalar over all workers (for logging the global loss)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's decision (e.g. early stop) for everyone."""
    if not is_distributed():
        return flag
    t = torch.tensor([int(flag)], device=collective_device())
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_int(value: int) -> int:
    """Rank 0's integer (e.g. the negative-pool version to use from this step on) for everyone."""
    if not is_distributed():
        return value
    t = torch.tensor([int(value)], dtype=torch.int64, device=collective_device())
    dist.broadcast(t, src=0)
    return int(t.item())


def average_gradients(params) -> None:
    """Average over workers the gradients of parameters DDP does not wrap (a loss's own head:
    a classifier, a distillation projection), so every worker applies the same update."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)
