"""Hidden-state distillation: the loss, the teacher's token states, and a student run."""
import pytest
import torch

from embedray.losses import HiddenStateDistillLoss, LossConfig, build_objective


def test_loss_is_zero_for_equal_states_and_ignores_padding():
    torch.manual_seed(0)
    t = [torch.randn(2, 5, 8), torch.randn(2, 5, 8)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    s = [x.clone() for x in t]
    s[0][0, 3:] += 100.0  # padding positions differ: not counted
    assert HiddenStateDistillLoss()(s, t, mask).item() == pytest.approx(0.0, abs=1e-7)
    s[1][1, 0] += 1.0     # one real token of one layer moves by 1 in every feature
    expected = (8 * 1.0) / (8 * 8) / 2   # (sum of squares) / (real tokens * H), averaged over 2 layers
    assert HiddenStateDistillLoss()(s, t, mask).item() == pytest.approx(expected)


def test_loss_backpropagates_to_the_student_only():
    s = torch.randn(1, 3, 4, requires_grad=True)
    t = torch.randn(1, 3, 4, requires_grad=True)
    HiddenStateDistillLoss()([s], [t], torch.ones(1, 3)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_loss_refuses_mismatched_layers_and_shapes():
    x = torch.zeros(1, 3, 4)
    with pytest.raises(ValueError, match="one teacher layer per student layer"):
        HiddenStateDistillLoss()([x, x], [x], torch.ones(1, 3))
    with pytest.raises(ValueError, match="must match"):
        HiddenStateDistillLoss()([x], [torch.zeros(1, 3, 5)], torch.ones(1, 3))


def test_objective_adds_the_weighted_hidden_part():
    cfg = LossConfig(distill_hidden=True, weights={"task": 0.0, "hidden": 3.0})
    objective = build_objective(cfg)
    q, d = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1), torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    s, t = torch.ones(2, 3, 4), torch.zeros(2, 3, 4)
    total, parts = objective(q, d, None, hidden=[([s], [t], torch.ones(2, 3))])
    assert parts["hidden"].item() == pytest.approx(1.0) and total.item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="hidden-state distillation is on"):
        objective(q, d, None)


def test_config_checks_weights_and_counts_hidden_as_distilling():
    assert LossConfig(distill_hidden=True).distilling
    with pytest.raises(ValueError, match="task, score, embed, hidden"):
        LossConfig(distill_hidden=True, weights={"hiden": 1.0})
