"""Triplet and contrastive losses against per-row loop references."""
import math

import pytest
import torch

from embedray.losses.contrastive import ContrastiveLoss
from embedray.losses.triplet import TripletLoss


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _dist(a, b, kind):
    if kind == "cosine":
        return 1 - float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))
    if kind == "euclidean":
        return math.sqrt(float(((a - b) ** 2).sum()))
    return -float(a @ b)


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "dot"])
def test_triplet_matches_loop(distance):
    a, p, n = _rand(5, 6, seed=1), _rand(5, 6, seed=2), _rand(5, 3, 6, seed=3)
    margin = 0.3
    want = sum(max(0.0, _dist(a[i], p[i], distance) - _dist(a[i], n[i, k], distance) + margin)
               for i in range(5) for k in range(3)) / 15
    assert TripletLoss(margin, distance)(a, p, n).item() == pytest.approx(want, abs=1e-10)
    # One negative per row as (B, dim).
    want1 = sum(max(0.0, _dist(a[i], p[i], distance) - _dist(a[i], n[i, 0], distance) + margin) for i in range(5)) / 5
    assert TripletLoss(margin, distance)(a, p, n[:, 0]).item() == pytest.approx(want1, abs=1e-10)


def test_triplet_gradient_pulls_positive_pushes_negative():
    a, p, n = _rand(4, 6, seed=4), _rand(4, 6, seed=5), _rand(4, 6, seed=6)
    p.requires_grad_(True)
    n.requires_grad_(True)
    TripletLoss(margin=10.0, distance="euclidean")(a, p, n).backward()  # every triplet active
    torch.testing.assert_close(p.grad, -(a - p).detach() / (a - p).detach().norm(dim=1, keepdim=True) / 4)
    torch.testing.assert_close(n.grad, (a - n).detach() / (a - n).detach().norm(dim=1, keepdim=True) / 4)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_contrastive_matches_sentence_transformers_formula(distance):
    a, b = _rand(6, 5, seed=7), _rand(6, 5, seed=8)
    labels = torch.tensor([1, 0, 1, 0, 0, 1])
    margin = 0.5 if distance == "cosine" else 3.0
    want = 0.0
    for i in range(6):
        d = _dist(a[i], b[i], distance)
        want += 0.5 * (d ** 2 if labels[i] == 1 else max(0.0, margin - d) ** 2) / 6
    assert ContrastiveLoss(margin, distance)(a, b, labels).item() == pytest.approx(want, abs=1e-10)


def test_argument_errors():
    with pytest.raises(ValueError, match="distance"):
        TripletLoss(distance="manhattan")
    with pytest.raises(ValueError, match="margin"):
        ContrastiveLoss(margin=-1)
    with pytest.raises(ValueError, match="0 or 1"):
        ContrastiveLoss()(_rand(2, 3), _rand(2, 3, seed=1), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="labels"):
        ContrastiveLoss()(_rand(2, 3), _rand(2, 3, seed=1), torch.tensor([1, 0, 1]))
