"""Hardest in-batch negative selection: InfoNCE's softmax over the positive and the k
highest-scoring negatives; batch-hard triplets over the closest non-positive documents."""
import pytest
import torch
import torch.nn.functional as F

from embedray.config import build_config
from embedray.losses import InfoNCELoss, TripletLoss, build_objective, ids_to_tensor
from embedray.losses.config import LossConfig


def _batch(b=6, n=2, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, dim, generator=g), dim=-1)
    d_pos = F.normalize(q + 0.5 * torch.randn(b, dim, generator=g), dim=-1)
    d_neg = F.normalize(torch.randn(b, n, dim, generator=g), dim=-1)
    ids = {"q_ids": ids_to_tensor([f"q{i}" for i in range(b)]), "pos_ids": ids_to_tensor([f"p{i}" for i in range(b)]),
           "neg_ids": ids_to_tensor([f"n{i}_{j}" for i in range(b) for j in range(n)]).view(b, n)}
    return q, d_pos, d_neg, ids


def test_infonce_with_the_hardest_negative_is_a_two_way_softmax():
    q, d_pos, d_neg, ids = _batch()
    cands = torch.cat([d_pos, d_neg.flatten(0, 1)])
    logits = q @ cands.T / 0.05
    expected = []
    for i in range(q.shape[0]):
        others = torch.cat([logits[i, :i], logits[i, i + 1:]])
        expected.append(F.cross_entropy(torch.stack([logits[i, i], others.max()])[None], torch.tensor([0])))
    got = InfoNCELoss(temperature=0.05, hardest_negatives=1).batch_loss(q, d_pos, d_neg, **ids)
    assert torch.allclose(got, torch.stack(expected).mean(), atol=1e-5)
    every = InfoNCELoss(temperature=0.05, hardest_negatives=10_000).batch_loss(q, d_pos, d_neg, **ids)
    assert torch.allclose(every, InfoNCELoss(temperature=0.05).batch_loss(q, d_pos, d_neg, **ids), atol=1e-6)


def test_a_known_positive_is_never_the_hardest_negative():
    q, d_pos, d_neg, ids = _batch()
    d_pos = d_pos.clone()
    d_pos[1] = q[0]  # row 1's positive is the closest document to query 0 ...
    ids["q_ids"] = ids_to_tensor(["q0", "q0", "q2", "q3", "q4", "q5"])  # ... and a positive of q0 too
    one = InfoNCELoss(temperature=0.05, hardest_negatives=1).batch_loss(q, d_pos, d_neg, **ids)
    assert torch.isfinite(one)
    trip = TripletLoss(margin=0.2, hardest_negatives=1)
    chosen = trip._batch_hard(q, d_pos, d_neg, **ids)
    assert not torch.equal(chosen[0, 0], d_pos[1]) and not torch.equal(chosen[0, 0], d_pos[0])


def test_batch_hard_triplets_pick_the_closest_other_documents():
    q, d_pos, d_neg, ids = _batch()
    cands = torch.cat([d_pos, d_neg.flatten(0, 1)])
    chosen = TripletLoss(hardest_negatives=2)._batch_hard(q, d_pos, d_neg, **ids)
    for i in range(q.shape[0]):
        dist = 1 - F.cosine_similarity(q[i:i + 1], cands)
        dist[i] = float("inf")
        assert torch.allclose(chosen[i], cands[dist.topk(2, largest=False).indices])
    d_pos = d_pos.clone().requires_grad_()  # in-batch positives alone suffice, and get gradients as negatives
    loss = TripletLoss(margin=2.0, hardest_negatives=1).batch_loss(q, d_pos, None,
                                                                   **{k: ids[k] for k in ("q_ids", "pos_ids")})
    loss.backward()
    assert loss > 0 and (d_pos.grad.abs().sum(-1) > 0).all()


def test_the_config_names_where_it_applies():
    assert build_objective(LossConfig(name="triplet", hardest_negatives=2)).hardest_negatives == 2
    with pytest.raises(ValueError, match="loss.hardest_negatives: only applies to the ranking losses"):
        LossConfig(name="contrastive", hardest_negatives=1)
    with pytest.raises(Exception, match="hardest_negatives: must be >= 1"):
        build_config(LossConfig, {"hardest_negatives": 0})
