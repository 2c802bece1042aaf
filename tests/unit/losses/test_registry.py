"""build_loss / LOSSES, LossConfig validation, build_objective."""
import dataclasses

import pytest
import torch

from embedray.losses import (LOSSES, DistillationObjective, InfoNCELoss, KLDistillLoss, LossConfig, MatryoshkaLoss,
                             TripletLoss, build_loss, build_objective)


def test_build_loss_by_name():
    assert set(LOSSES) == {"infonce", "mnrl", "triplet", "contrastive", "simcse", "ntxent", "classification"}
    for name, cls in LOSSES.items():
        kwargs = {"dim": 8, "labels": ["a", "b"]} if name == "classification" else {}
        assert isinstance(build_loss(name, **kwargs), cls)
    assert build_loss("mnrl", scale=20.0).temperature == pytest.approx(0.05)
    with pytest.raises(ValueError, match="unknown loss 'nce'"):
        build_loss("nce")


@pytest.mark.parametrize("kwargs, field", [
    ({"name": "cosent"}, "loss.name"),
    ({"temperature": 0.0}, "loss.temperature"),
    ({"name": "triplet", "symmetric": True}, "loss.symmetric"),
    ({"margin": 0.3}, "loss.margin"),
    ({"name": "contrastive", "distance": "dot"}, "loss.distance"),
    ({"matryoshka_dims": [64, 64]}, "loss.matryoshka_dims"),
    ({"matryoshka_dims": [64, 32], "matryoshka_weights": [1.0]}, "loss.matryoshka_weights"),
    ({"matryoshka_weights": [1.0]}, "loss.matryoshka_weights"),
    ({"name": "triplet", "gather_across_workers": True}, "loss.gather_across_workers"),
    ({"distill_score": "l2"}, "loss.distill_score"),
    ({"weights": {"teacher": 1.0}}, "loss.weights"),
    ({"name": "simcse", "dropout": 0.0}, "loss.dropout"),
    ({"name": "contrastive", "distill_embed": True}, "loss.name"),
])
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        LossConfig(**kwargs)


def test_every_field_is_documented():
    import inspect

    lines = inspect.getsource(LossConfig).splitlines()
    for f in dataclasses.fields(LossConfig):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"    {f.name}:"))
        assert lines[at - 1].strip().startswith("#:"), f"field {f.name} has no #: docstring"


def test_build_objective_plain_matryoshka_and_distill():
    assert isinstance(build_objective(LossConfig(name="triplet", margin=0.1)), TripletLoss)
    m = build_objective(LossConfig(matryoshka_dims=[8, 4], matryoshka_weights=[1.0, 0.5]))
    assert isinstance(m, MatryoshkaLoss) and m.weights == [1.0, 0.5] and isinstance(m.base_loss, InfoNCELoss)
    obj = build_objective(LossConfig(distill_score="kl", distill_embed=True, weights={"score": 0.2}),
                          student_dim=8, teacher_dim=16)
    assert isinstance(obj, DistillationObjective) and isinstance(obj.score_loss, KLDistillLoss)
    q, pos, neg = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 2, 8)
    total, parts = obj(q, pos, neg, teacher_scores=torch.randn(3, 3), teacher_emb=torch.randn(6, 16))
    assert set(parts) == {"task", "score", "embed", "total"} and total.requires_grad
    with pytest.raises(ValueError, match="student_dim"):
        build_objective(LossConfig(distill_embed=True))
    with pytest.raises(ValueError, match="gather_fn"):
        build_objective(LossConfig(gather_across_workers=True))
    fake = lambda t: (t, 0)  # noqa: E731
    assert build_objective(LossConfig(gather_across_workers=True), gather_fn=fake).gather_fn is fake
