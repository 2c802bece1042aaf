"""Score, margin, KL and embedding distillation, and the combined objective."""
import math

import pytest
import torch

from embedray.losses.combined import DistillationObjective
from embedray.losses.embed_distill import EmbeddingDistillLoss
from embedray.losses.infonce import InfoNCELoss
from embedray.losses.kl_distill import KLDistillLoss
from embedray.losses.margin_mse import MarginMSELoss
from embedray.losses.score_mse import ScoreMSELoss

B, N, D = 4, 3, 6


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _batch():
    return _rand(B, D, seed=1), _rand(B, D, seed=2), _rand(B, N, D, seed=3), _rand(B, 1 + N, seed=4) * 5


def _scores_loop(q, pos, neg, kind="dot"):
    rows = []
    for i in range(B):
        cands = [pos[i]] + [neg[i, k] for k in range(N)]
        if kind == "dot":
            rows.append([float(q[i] @ c) for c in cands])
        else:
            rows.append([float(q[i] @ c) / (float(q[i].norm()) * float(c.norm())) for c in cands])
    return rows


def test_score_mse_matches_loop():
    q, pos, neg, teacher = _batch()
    s = _scores_loop(q, pos, neg)
    want = sum((2.0 * s[i][k] - float(teacher[i, k])) ** 2 for i in range(B) for k in range(1 + N)) / (B * (1 + N))
    assert ScoreMSELoss(scale=2.0)(q, pos, neg, teacher).item() == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize("kind", ["dot", "cosine"])
def test_margin_mse_matches_loop(kind):
    q, pos, neg, teacher = _batch()
    s = _scores_loop(q, pos, neg, kind)
    want = sum(((s[i][0] - s[i][k]) - float(teacher[i, 0] - teacher[i, k])) ** 2
               for i in range(B) for k in range(1, 1 + N)) / (B * N)
    assert MarginMSELoss(similarity=kind)(q, pos, neg, teacher).item() == pytest.approx(want, abs=1e-10)


def test_margin_mse_ignores_a_shift_of_teacher_scores():
    q, pos, neg, teacher = _batch()
    loss = MarginMSELoss()
    torch.testing.assert_close(loss(q, pos, neg, teacher), loss(q, pos, neg, teacher + 7.0))


def test_kl_matches_loop_and_is_zero_when_student_equals_teacher():
    q, pos, neg, teacher = _batch()
    ts, tt = 0.5, 2.0
    s = _scores_loop(q, pos, neg, "cosine")
    want = 0.0
    for i in range(B):
        zs = [x / ts for x in s[i]]
        zt = [float(x) / tt for x in teacher[i]]
        ls = [z - math.log(sum(math.exp(y) for y in zs)) for z in zs]
        lt = [z - math.log(sum(math.exp(y) for y in zt)) for z in zt]
        want += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt)) / B
    loss = KLDistillLoss(student_temperature=ts, teacher_temperature=tt)
    assert loss(q, pos, neg, teacher).item() == pytest.approx(want, abs=1e-10)
    # The teacher is the student itself (same scores, same temperature): KL is 0, and so is the gradient.
    q.requires_grad_(True)
    student_scores = torch.tensor(s, dtype=torch.float64)
    same = KLDistillLoss(student_temperature=ts, teacher_temperature=ts)(q, pos, neg, student_scores)
    assert same.item() == pytest.approx(0.0, abs=1e-12)
    same.backward()
    assert q.grad.abs().max() < 1e-10


def test_kl_in_batch_ranks_every_document_of_the_batch():
    import torch.nn.functional as F

    from embedray.training.distill import in_batch_cosines

    q, pos, neg, _ = _batch()
    docs = [pos[j] for j in range(B)] + [neg[i, k] for i in range(B) for k in range(N)]  # batch order
    teacher = _rand(B, B * (1 + N), seed=5) * 5
    ts, tt = 0.5, 2.0
    want = 0.0
    for i in range(B):
        zs = [float(F.cosine_similarity(q[i], d, dim=0)) / ts for d in docs]
        zt = [float(x) / tt for x in teacher[i]]
        ls = [z - math.log(sum(math.exp(y) for y in zs)) for z in zs]
        lt = [z - math.log(sum(math.exp(y) for y in zt)) for z in zt]
        want += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt)) / B
    loss = KLDistillLoss(student_temperature=ts, teacher_temperature=tt, in_batch=True)
    assert loss(q, pos, neg, teacher).item() == pytest.approx(want, abs=1e-10)
    # The loop's teacher scores come in the same order: a teacher equal to the student gives 0.
    flat = torch.cat([pos, neg.reshape(-1, D)])
    t_scores = in_batch_cosines(F.normalize(q, dim=-1), F.normalize(flat, dim=-1)) / ts  # as the objective scales them
    same = KLDistillLoss(student_temperature=ts, teacher_temperature=1.0, in_batch=True)(q, pos, neg, t_scores)
    assert same.item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="teacher_scores must be"):
        loss(q, pos, neg, teacher[:, : 1 + N])  # per-query lists are not in-batch scores
    # Without negatives the candidates are the batch's positives.
    assert loss(q, pos, None, teacher[:, :B]).item() > 0


def test_distill_in_batch_config_checks():
    from embedray.config import build_config
    from embedray.losses.config import LossConfig
    from embedray.pipeline.config import TrainJobConfig

    assert LossConfig(distill_score="kl", distill_in_batch=True).distill_in_batch
    with pytest.raises(ValueError, match="distill_in_batch"):
        LossConfig(distill_score="margin_mse", distill_in_batch=True)
    with pytest.raises(ValueError, match="distill_in_batch"):
        build_config(TrainJobConfig, {"data": {"path": "data"},
                                      "loss": {"distill_score": "kl", "distill_in_batch": True},
                                      "distill": {"teacher": "minilm-l6", "score_source": "cross_encoder"},
                                      "refresh": {"mode": "static"}})


def test_teacher_scores_shape_is_checked():
    q, pos, neg, teacher = _batch()
    with pytest.raises(ValueError, match="teacher_scores must be"):
        KLDistillLoss()(q, pos, neg, teacher[:, :2])
    with pytest.raises(ValueError, match="needs hard negatives"):
        MarginMSELoss()(q, pos, None, teacher)


def test_embedding_distill_projection_is_trained():
    torch.manual_seed(0)
    student, teacher = _rand(8, 4, seed=5).float(), _rand(8, 6, seed=6).float()
    loss_fn = EmbeddingDistillLoss(student_dim=4, teacher_dim=6)
    params = list(loss_fn.parameters())
    assert len(params) == 1 and params[0].shape == (6, 4) and params[0].requires_grad
    loss = loss_fn(student, teacher)
    s = torch.nn.functional.normalize(student @ params[0].detach().T, dim=-1)
    t = torch.nn.functional.normalize(teacher, dim=-1)
    torch.testing.assert_close(loss, ((s - t) ** 2).sum(-1).mean())
    torch.testing.assert_close(loss, (2 - 2 * (s * t).sum(-1)).mean())
    loss.backward()
    assert params[0].grad is not None and params[0].grad.abs().max() > 0
    # A few optimizer steps on the projection alone reduce the loss.
    opt = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        loss_fn(student, teacher).backward()
        opt.step()
    assert loss_fn(student, teacher).item() < loss.item()


def test_embedding_distill_same_dims_has_no_parameters_and_no_teacher_grad():
    s, t = _rand(5, 4, seed=7).requires_grad_(True), _rand(5, 4, seed=8).requires_grad_(True)
    loss_fn = EmbeddingDistillLoss(4, 4)
    assert list(loss_fn.parameters()) == []
    loss_fn(s, t).backward()
    assert t.grad is None and s.grad.abs().max() > 0
    assert loss_fn(t.detach(), t).item() == pytest.approx(0.0, abs=1e-12)


def test_distillation_objective_weights_and_parts():
    q, pos, neg, teacher = _batch()
    t_emb = _rand(2 * B, 8, seed=9)
    task, score, embed = InfoNCELoss(0.1), MarginMSELoss(), EmbeddingDistillLoss(D, 8).double()
    obj = DistillationObjective(task, score, embed, weights={"task": 1.0, "score": 0.5, "embed": 2.0})
    pos_ids, neg_ids = torch.arange(B), 10 + torch.arange(B * N).view(B, N)
    total, parts = obj(q, pos, neg, teacher_scores=teacher, teacher_emb=t_emb, pos_ids=pos_ids, neg_ids=neg_ids)
    want = {"task": task(q, pos, neg, pos_ids=pos_ids, neg_ids=neg_ids), "score": score(q, pos, neg, teacher),
            "embed": embed(torch.cat([q, pos]), t_emb)}
    for k, v in want.items():
        torch.testing.assert_close(parts[k], v)
    torch.testing.assert_close(total, want["task"] + 0.5 * want["score"] + 2.0 * want["embed"])
    torch.testing.assert_close(parts["total"], total.detach())
    assert len(list(obj.parameters())) == 1  # the projection travels with the objective
    with pytest.raises(ValueError, match="teacher_scores"):
        obj(q, pos, neg, teacher_emb=t_emb)
    with pytest.raises(ValueError, match="unknown weight"):
        DistillationObjective(task, weights={"kd": 1.0})


def test_the_objective_puts_teacher_cosines_on_its_own_logit_scale():
    """The teacher bi-encoder's cosines are divided by the objective's temperature (the loss
    owns it; the loop passes raw cosines): the same loss as scores scaled by hand."""
    q, pos, neg, teacher = _batch()
    cosines = torch.tanh(teacher)  # any values in [-1, 1]
    obj = DistillationObjective(InfoNCELoss(0.05), KLDistillLoss(student_temperature=0.05), temperature=0.05)
    by_hand, _ = obj(q, pos, neg, teacher_scores=cosines / 0.05)
    scaled, _ = obj(q, pos, neg, teacher_cosines=cosines)
    torch.testing.assert_close(scaled, by_hand)
    other, _ = DistillationObjective(InfoNCELoss(0.05), KLDistillLoss(student_temperature=0.05),
                                     temperature=0.5)(q, pos, neg, teacher_cosines=cosines)
    assert not torch.allclose(other, scaled)  # the temperature is really applied
    with pytest.raises(ValueError, match="not both"):
        obj(q, pos, neg, teacher_scores=cosines, teacher_cosines=cosines)
