"""GradCache (Gao et al., 2021; sentence-transformers' Cached* losses): batches larger than memory.

The batch is embedded in mini-batches without a graph; the loss and the gradient of the loss
with respect to every embedding are computed on the whole batch (so every document of the batch
is an in-batch negative of every query); then each mini-batch is embedded again with its graph
and back-propagated with its slice of those gradients. The parameter gradients are those of the
uncached loss on the same batch; peak activation memory is that of one mini-batch. Dropout
masks are the same in both passes: each mini-batch's RNG state is saved before its first pass
and restored for the second.

Any task loss (and cross-worker gather, Matryoshka, score or embedding distillation) works on
the cached embeddings unchanged; hidden-state distillation needs the token states and does not.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class CachedEmbeddings:
    """One tokenised batch embedded mini-batch by mini-batch without a graph."""

    reps: Tensor
    """``(n, dim)`` leaf tensor: the embeddings, requiring grad (their ``.grad`` after the loss's backward)."""
    chunks: list[dict[str, Tensor]]
    rng_states: list[tuple[Tensor, list[Tensor]]] = field(default_factory=list)


def _rng_state(device: torch.device) -> tuple[Tensor, list[Tensor]]:
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, list[Tensor]]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


def embed_without_graph(model: Callable[..., Tensor], tokens: dict[str, Tensor], mini_batch_size: int) -> CachedEmbeddings:
    """Embed ``tokens`` (a tokenizer's batch) in slices of ``mini_batch_size`` rows, no graph kept."""
    n = next(iter(tokens.values())).shape[0]
    chunks = [{k: v[i:i + mini_batch_size] for k, v in tokens.items()} for i in range(0, n, mini_batch_size)]
    device = next(iter(tokens.values())).device
    outs, states = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state(device))
            outs.append(model(**chunk))
    return CachedEmbeddings(torch.cat(outs).detach().requires_grad_(), chunks, states)


def backward_through_model(model, cached: list[CachedEmbeddings], sync: bool = True) -> None:
    """Second pass: re-embed each mini-batch with its graph and back-propagate its slice of the
    embeddings' gradients into the model. Under DDP every backward but the last runs in
    ``no_sync`` (the last one syncs when ``sync``), so gradients are all-reduced once."""
    pending = [(c, i) for c in cached for i in range(len(c.chunks))]
    after = torch.get_rng_state()
    cuda_after = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    start = {id(c): 0 for c in cached}
    for k, (c, i) in enumerate(pending):
        if c.reps.grad is None:
            raise RuntimeError("backward_through_model: the loss's backward has not reached the cached embeddings")
        chunk = c.chunks[i]
        rows = next(iter(chunk.values())).shape[0]
        lo = start[id(c)]
        start[id(c)] = lo + rows
        last = k == len(pending) - 1
        no_sync = getattr(model, "no_sync", None)
        ctx = no_sync() if no_sync is not None and not (last and sync) else contextlib.nullcontext()
        _set_rng_state(c.rng_states[i])
        with ctx:
            emb = model(**chunk)
            emb.backward(gradient=c.reps.grad[lo:lo + rows].to(emb.dtype))
    torch.set_rng_state(after)  # the stream continues as after the first pass
    if cuda_after is not None:
        torch.cuda.set_rng_state_all(cuda_after)
