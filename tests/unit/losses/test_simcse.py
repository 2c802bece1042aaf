"""SimCSE: InfoNCE with the second dropout view as positives; set_dropout reaches every dropout."""
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from embedray.losses.simcse import SimCSELoss, set_dropout


def test_equals_cross_entropy_over_views():
    g = torch.Generator().manual_seed(0)
    v1, v2 = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(6, 8, generator=g, dtype=torch.float64)
    logits = F.normalize(v1, dim=-1) @ F.normalize(v2, dim=-1).T / 0.05
    torch.testing.assert_close(SimCSELoss(0.05)(v1, v2), F.cross_entropy(logits, torch.arange(6)))


def test_duplicate_texts_are_not_negatives():
    g = torch.Generator().manual_seed(1)
    v1, v2 = torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64)
    ids = torch.tensor([7, 8, 7, 9])  # rows 0 and 2 are the same text
    logits = F.normalize(v1, dim=-1) @ F.normalize(v2, dim=-1).T / 0.05
    # Loop reference: drop the other copy from each duplicate row's candidates.
    want = 0.0
    for i in range(4):
        keep = [j for j in range(4) if j == i or ids[j] != ids[i]]
        want += -(logits[i, i] - torch.logsumexp(logits[i, keep], 0)) / 4
    torch.testing.assert_close(SimCSELoss(0.05)(v1, v2, ids=ids), want)


def _tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16)
    return BertModel(cfg)


def test_set_dropout_sets_layers_and_config():
    model = _tiny_bert()
    n = set_dropout(model, 0.3)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert n == len(dropouts) > 0 and all(m.p == 0.3 for m in dropouts)
    assert model.config.hidden_dropout_prob == 0.3 and model.config.attention_probs_dropout_prob == 0.3
    with pytest.raises(ValueError):
        set_dropout(model, 1.0)


def test_set_dropout_controls_whether_two_views_differ():
    model = _tiny_bert().train()
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(2))
    set_dropout(model, 0.0)
    a, b = model(ids).last_hidden_state, model(ids).last_hidden_state
    torch.testing.assert_close(a, b)
    set_dropout(model, 0.2)
    a, b = model(ids).last_hidden_state, model(ids).last_hidden_state
    assert (a - b).abs().max() > 1e-3
