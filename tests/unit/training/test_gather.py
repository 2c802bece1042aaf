"""Cross-worker InfoNCE (2 gloo processes, half a batch each) equals one process on the whole batch."""
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from embedray.losses.infonce import InfoNCELoss, info_nce
from embedray.training.gather import (all_gather_with_grad, ddp_loss_scale, gather_fn_for_loss, gather_with_offset,
                                      reduce_mean)

WORLD, IN, OUT, N = 2, 8, 6, 2
CASES = {"equal": ((3, 3), False), "ragged_symmetric": ((4, 2), True)}  # rows per rank, symmetric


def _data(total):
    g = torch.Generator().manual_seed(0)
    x_q = torch.randn(total, IN, generator=g, dtype=torch.float64)
    x_p = torch.randn(total, IN, generator=g, dtype=torch.float64)
    x_n = torch.randn(total, N, IN, generator=g, dtype=torch.float64)
    q_ids, pos_ids = torch.arange(total), 100 + torch.arange(total)
    neg_ids = 200 + torch.arange(total * N).view(total, N)
    # Duplicates that span the two workers, so the masking must work on gathered ids.
    pos_ids[5], x_p[5] = pos_ids[0], x_p[0]  # rows 0 and 5 share a positive
    neg_ids[1, 0], x_n[1, 0] = pos_ids[4], x_p[4]  # row 1 mined row 4's positive as a negative
    q_ids[3] = q_ids[2]  # the same query twice, with different positives
    return x_q, x_p, x_n, q_ids, pos_ids, neg_ids


def _encoder():
    torch.manual_seed(1)
    return nn.Linear(IN, OUT, dtype=torch.float64)


def _step(encoder, loss_fn, rows, scale=1.0):
    """Encode one forward pass, return (loss, embedding grads) after backward of scale * loss."""
    x_q, x_p, x_n, q_ids, pos_ids, neg_ids = (t[rows] for t in _data(6))
    b = x_q.shape[0]
    e = encoder(torch.cat([x_q, x_p, x_n.flatten(0, 1)]))  # (b * (2 + N), OUT)
    e.retain_grad()
    q, p, n = e[:b], e[b:2 * b], e[2 * b:].view(b, N, OUT)
    loss = loss_fn(q, p, n, q_ids, pos_ids, neg_ids)
    (scale * loss).backward()
    return loss, e.grad


def _grads_by_part(e_grad, b):
    return {"q": e_grad[:b], "p": e_grad[b:2 * b], "n": e_grad[2 * b:].view(b, N, OUT)}


def _worker(rank, port, out_dir):
    # DDP itself is replaced by its gradient averaging below: constructing DDP costs seconds.
    # A forked child must not use the parent's OpenMP pool (it would hang); DataLoader workers do the same.
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        results = {}
        for name, (splits, symmetric) in CASES.items():
            start = sum(splits[:rank])
            rows = slice(start, start + splits[rank])
            model = _encoder()
            loss_fn = InfoNCELoss(temperature=0.1, symmetric=symmetric, gather_fn=gather_fn_for_loss())
            scale = ddp_loss_scale(splits[rank])
            loss, e_grad = _step(model, loss_fn, rows, scale)
            for param in model.parameters():  # what DDP does after backward: average gradients
                dist.all_reduce(param.grad)
                param.grad /= WORLD
            results[name] = {"loss": reduce_mean(scale * loss), "e_grad": e_grad,
                             "weight": model.weight.grad, "bias": model.bias.grad}
        # Trailing dims that differ across workers: a clear error on every worker, no hang.
        try:
            all_gather_with_grad(torch.zeros(2, 3 + rank))
            results["shape_error"] = ""
        except ValueError as err:
            results["shape_error"] = str(err)
        # Non-differentiable tensors (ids) gather too, ragged, in rank order.
        ids, start = gather_with_offset(torch.arange(3 - rank) + 10 * rank)
        results["ids"], results["start"] = ids, torch.tensor(start)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("gather")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork starts the two workers in under a second; spawn re-imports torch in each (~15 s on a busy
    # 2-core machine). Forking a CPU-only torch process is what DataLoader workers do too.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(port, str(out_dir)), nprocs=WORLD, join=True, start_method=method)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
def test_two_workers_equal_one_process_on_the_concatenated_batch(distributed_results, case):
    splits, symmetric = CASES[case]
    encoder = _encoder()
    ref_loss, ref_e_grad = _step(encoder, InfoNCELoss(temperature=0.1, symmetric=symmetric), slice(0, 6))
    ref = _grads_by_part(ref_e_grad, 6)
    for rank, res in enumerate(distributed_results):
        got = res[case]
        torch.testing.assert_close(got["loss"], ref_loss.detach(), rtol=0, atol=1e-10)
        # DDP-averaged parameter gradients equal the single-process ones.
        torch.testing.assert_close(got["weight"], encoder.weight.grad, rtol=0, atol=1e-10)
        torch.testing.assert_close(got["bias"], encoder.bias.grad, rtol=0, atol=1e-10)
        # Local embedding gradients are WORLD x the single-process gradient of the same rows.
        start, b = sum(splits[:rank]), splits[rank]
        for part, grad in _grads_by_part(got["e_grad"], b).items():
            torch.testing.assert_close(grad / WORLD, ref[part][start:start + b], rtol=0, atol=1e-10)


def test_the_case_is_not_trivial():
    """Gathering matters: per-worker losses without it differ from the global loss, and masks fire."""
    x_q, x_p, x_n, q_ids, pos_ids, neg_ids = _data(6)
    enc = _encoder()
    q, p, n = enc(x_q), enc(x_p), enc(x_n)
    full = info_nce(q, p, n, 0.1, q_ids, pos_ids, neg_ids)
    halves = sum(info_nce(q[s], p[s], n[s], 0.1, q_ids[s], pos_ids[s], neg_ids[s]) for s in (slice(0, 3), slice(3, 6)))
    assert abs(full.item() - halves.item() / 2) > 1e-3
    unmasked = info_nce(q, p, n, 0.1, torch.arange(6), torch.arange(6), 10 + torch.arange(12).view(6, 2))
    assert abs(full.item() - unmasked.item()) > 1e-3


def test_shape_mismatch_and_ragged_ids(distributed_results):
    for rank, res in enumerate(distributed_results):
        assert "shapes differ beyond dim 0" in res["shape_error"] and "rank 1: (2, 4)" in res["shape_error"]
        assert res["ids"].tolist() == [0, 1, 2, 10, 11] and res["start"].item() == 3 * rank


def test_helpers_without_process_group():
    t = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(t) is t and gather_with_offset(t) == (t, 0)
    assert ddp_loss_scale(7) == 1.0
    torch.testing.assert_close(reduce_mean(torch.tensor(2.5)), torch.tensor(2.5))
