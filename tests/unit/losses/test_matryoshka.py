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


def test_score_distillation_at_every_size_against_the_same_teacher_scores():
    from embedray.losses import LossConfig, build_objective
    from embedray.losses.kl_distill import KLDistillLoss
    from embedray.losses.matryoshka import MatryoshkaScoreLoss, truncate

    torch.manual_seed(0)
    q, d_pos, d_neg = torch.randn(4, 16, requires_grad=True), torch.randn(4, 16), torch.randn(4, 3, 16)
    teacher = torch.randn(4, 4)
    kl = KLDistillLoss(student_temperature=0.05, teacher_temperature=1.0)
    loss = MatryoshkaScoreLoss(kl, dims=[16, 8, 4], weights=[1.0, 0.5, 2.0])(q, d_pos, d_neg, teacher)
    expected = sum(w * kl(truncate(q, d), truncate(d_pos, d), truncate(d_neg, d), teacher)
                   for d, w in ((16, 1.0), (8, 0.5), (4, 2.0)))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert q.grad.abs().sum() > 0
    small = MatryoshkaScoreLoss(kl, dims=[4])(q, d_pos, d_neg, teacher)
    assert small.item() != pytest.approx(kl(q, d_pos, d_neg, teacher).item())  # the cut matters

    cfg = dict(name="infonce", distill_score="kl", distill_matryoshka=True)
    objective = build_objective(LossConfig(**cfg, matryoshka_dims=[16, 8]), student_dim=16, teacher_dim=16)
    assert isinstance(objective.score_loss, MatryoshkaScoreLoss) and objective.score_loss.dims == [16, 8]
    with pytest.raises(ValueError, match="distill_matryoshka needs"):
        build_objective(LossConfig(**cfg), student_dim=16, teacher_dim=16)
    with pytest.raises(ValueError, match="exceed the embedding size"):
        MatryoshkaScoreLoss(kl, dims=[32])(q, d_pos, d_neg, teacher)


def test_embedding_distillation_at_every_size_copies_the_teacher_prefixes():
    from embedray.losses import LossConfig, build_objective
    from embedray.losses.embed_distill import EmbeddingDistillLoss
    from embedray.losses.matryoshka import MatryoshkaEmbedDistillLoss, truncate

    torch.manual_seed(0)
    student, teacher = torch.randn(6, 16, requires_grad=True), torch.randn(6, 16)
    loss = MatryoshkaEmbedDistillLoss(dims=[16, 4], weights=[1.0, 3.0])(student, teacher)
    prefix = (truncate(student, 4) - truncate(teacher, 4)).pow(2).sum(-1).mean()
    assert loss.item() == pytest.approx(EmbeddingDistillLoss(16, 16)(student, teacher).item() + 3 * prefix.item(),
                                        rel=1e-6)
    loss.backward()
    assert student.grad.abs().sum() > 0
    assert MatryoshkaEmbedDistillLoss(dims=[16, 4])(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        MatryoshkaEmbedDistillLoss(dims=[4])(student, torch.randn(6, 8))

    cfg = dict(name="infonce", distill_score="kl", distill_embed=True, distill_matryoshka=True,
               matryoshka_dims=[16, 8])
    assert isinstance(build_objective(LossConfig(**cfg), student_dim=16, teacher_dim=16).embed_loss,
                      MatryoshkaEmbedDistillLoss)
    # a student of another size keeps the projected full-size embedding distillation
    assert isinstance(build_objective(LossConfig(**cfg), student_dim=16, teacher_dim=32).embed_loss,
                      EmbeddingDistillLoss)
