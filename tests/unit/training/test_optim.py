import torch

from embedray.training.optim import adamw


def _steps(opt_factory, steps=3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.LayerNorm(4))
    groups = [{"params": [model[0].weight], "weight_decay": 0.01},
              {"params": [model[0].bias, *model[1].parameters()], "weight_decay": 0.0}]
    opt = opt_factory(groups)
    for i in range(steps):
        loss = model(torch.randn(5, 8, generator=torch.Generator().manual_seed(i))).pow(2).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return opt, [p.detach().clone() for p in model.parameters()]


def test_cpu_parameters_get_the_fused_kernel_and_the_same_update():
    fused, got = _steps(lambda g: adamw(g, lr=1e-2, weight_decay=0.01))
    assert fused.param_groups[0]["fused"] is True
    plain, want = _steps(lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=0.01))
    assert plain.param_groups[0]["fused"] is not True
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got[0], _steps(lambda g: adamw(g, lr=1e-2), steps=0)[1][0])  # it did move


def test_non_float_parameters_fall_back_to_the_loop():
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    assert not adamw([{"params": [p]}], lr=1e-3).param_groups[0]["fused"]
