"""MatryoshkaLoss: weighted sum of the base loss on truncated, re-normalised embeddings."""
import pytest
import torch
import torch.nn.functional as F

from embedray.losses.infonce import InfoNCELoss
from embedray.losses.matryoshka import MatryoshkaLoss
from embedray.losses.triplet import TripletLoss


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_weighted_sum_over_truncations_with_ids_untouched():
    q, pos, neg = _rand(4, 16, seed=1), _rand(4, 16, seed=2), _rand(4, 2, 16, seed=3)
    pos_ids, neg_ids = torch.arange(4), 10 + torch.arange(8).view(4, 2)
    neg_ids[0, 0] = 2  # masking must still see the ids
    base = InfoNCELoss(temperature=0.1)
    dims, weights = [16, 8, 4], [1.0, 0.5, 0.25]
    got = MatryoshkaLoss(base, dims, weights)(q, pos, neg, pos_ids=pos_ids, neg_ids=neg_ids)
    want = sum(w * base(q[:, :d], pos[:, :d], neg[..., :d], pos_ids=pos_ids, neg_ids=neg_ids)
               for d, w in zip(dims, weights))  # cosine: normalising first changes nothing
    torch.testing.assert_close(got, want)
    # The weights matter.
    other = MatryoshkaLoss(base, dims, [1.0, 1.0, 1.0])(q, pos, neg, pos_ids=pos_ids, neg_ids=neg_ids)
    assert abs(other.item() - got.item()) > 1e-6


def test_truncated_embeddings_are_renormalised():
    a, p, n = _rand(3, 8, seed=4), _rand(3, 8, seed=5), _rand(3, 8, seed=6)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, *args):
            seen.append([x.shape[-1] for x in args])
            torch.testing.assert_close(args[0].norm(dim=-1), torch.ones(3, dtype=torch.float64))
            return TripletLoss(distance="euclidean")(*args)

    got = MatryoshkaLoss(Spy(), [8, 2])(a, p, n)
    want = sum(TripletLoss(distance="euclidean")(*(F.normalize(x[:, :d], dim=-1) for x in (a, p, n))) for d in (8, 2))
    torch.testing.assert_close(got, want)
    assert seen == [[8, 8, 8], [2, 2, 2]]


def test_gradient_reaches_only_used_features():
    q = _rand(4, 8, seed=7).requires_grad_(True)
    pos = _rand(4, 8, seed=8)
    MatryoshkaLoss(InfoNCELoss(), [4, 2])(q, pos).backward()
    assert q.grad[:, 4:].abs().max() == 0 and q.grad[:, :4].abs().max() > 0


def test_errors():
    with pytest.raises(ValueError, match="weights"):
        MatryoshkaLoss(InfoNCELoss(), [8, 4], [1.0])
    with pytest.raises(ValueError, match="distinct"):
        MatryoshkaLoss(InfoNCELoss(), [8, 8])
    with pytest.raises(ValueError, match="exceed"):
        MatryoshkaLoss(InfoNCELoss(), [16, 8])(_rand(2, 8), _rand(2, 8, seed=1))
