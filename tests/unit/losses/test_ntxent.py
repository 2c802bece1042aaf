"""NT-Xent equals SimCLR's definition written as a loop, and duplicates are not negatives."""
import math

import torch
import torch.nn.functional as F

from embedray.losses import NTXentLoss, build_loss, ids_to_tensor


def _reference(a, b, t):
    z = torch.cat([a, b])
    n, total = a.shape[0], 0.0
    sim = F.cosine_similarity(z[:, None], z[None, :], dim=-1) / t
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denom = sum(math.exp(sim[i, k]) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(sim[i, j]) / denom)
    return total / (2 * n)


def test_nt_xent_is_simclr_s_loss():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    got = NTXentLoss(temperature=0.5)(a, b)
    assert abs(got.item() - _reference(a, b, 0.5)) < 1e-5
    assert build_loss("ntxent", temperature=0.5)(a, b).item() == got.item()


def test_a_duplicate_row_is_not_a_negative():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    a[3], b[3] = a[0], b[0]  # row 3 repeats row 0's text
    ids = ids_to_tensor(["t0", "t1", "t2", "t0"])
    with_ids = NTXentLoss(temperature=0.5)(a, b, ids, ids)
    # Dropping the duplicate as a negative of rows 0 and 3 is what removing it from their
    # denominators gives; anchors 1 and 2 still see it.
    assert with_ids < NTXentLoss(temperature=0.5)(a, b)
