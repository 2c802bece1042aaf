"""InfoNCE: equals sentence-transformers' MNRL formula, a loop reference, and masks known positives."""
import hashlib

import pytest
import torch
import torch.nn.functional as F

from embedray.losses.infonce import InfoNCELoss, ids_to_tensor, info_nce

B, N, D = 5, 3, 8


def _batch(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, D, generator=g, dtype=dtype)
    pos = torch.randn(B, D, generator=g, dtype=dtype)
    neg = torch.randn(B, N, D, generator=g, dtype=dtype)
    return q, pos, neg


def _ids(b=B, n=N):
    return torch.arange(b), 100 + torch.arange(b * n).view(b, n)


def _lse(values):
    return torch.logsumexp(torch.tensor(values, dtype=torch.float64), 0).item()


def reference(q, pos, neg, temperature, q_ids, pos_ids, neg_ids, symmetric=False):
    """Loop-based InfoNCE written independently from the library (lists, sets, one query at a time)."""
    b = q.shape[0]
    cos = lambda a, c: float(torch.dot(a, c) / (a.norm() * c.norm()))  # noqa: E731
    cands = [(pos[j], int(pos_ids[j])) for j in range(b)]
    if neg is not None:
        cands += [(neg[j, k], int(neg_ids[j, k])) for j in range(b) for k in range(neg.shape[1])]
    total = 0.0
    for i in range(b):
        positives = {int(pos_ids[j]) for j in range(b) if j == i or int(q_ids[j]) == int(q_ids[i])}
        logits = [cos(q[i], emb) / temperature for c, (emb, did) in enumerate(cands)
                  if c == i or did not in positives]
        term = -(cos(q[i], pos[i]) / temperature - _lse(logits))
        if symmetric:
            logits_dq = [cos(pos[i], q[j]) / temperature for j in range(b)
                         if j == i or (int(pos_ids[j]) != int(pos_ids[i]) and int(q_ids[j]) != int(q_ids[i]))]
            term_dq = -(cos(pos[i], q[i]) / temperature - _lse(logits_dq))
            term = (term + term_dq) / 2
        total += term
    return total / b


def test_equals_sentence_transformers_mnrl_formula():
    q, pos, neg = _batch()
    scale = 20.0
    # sentence-transformers MultipleNegativesRankingLoss: cross_entropy(scale * cos_sim(q, [pos; negs]), arange)
    docs = torch.cat([pos] + [neg[:, k] for k in range(N)])  # column order as ST builds it
    st = F.cross_entropy(scale * F.normalize(q, dim=-1) @ F.normalize(docs, dim=-1).T, torch.arange(B))
    ours = InfoNCELoss(scale=scale)(q, pos, neg)
    torch.testing.assert_close(ours, st, rtol=0, atol=1e-10)
    # Without hard negatives too.
    st_pairs = F.cross_entropy(scale * F.normalize(q, dim=-1) @ F.normalize(pos, dim=-1).T, torch.arange(B))
    torch.testing.assert_close(InfoNCELoss(temperature=1 / scale)(q, pos), st_pairs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("symmetric", [False, True])
def test_matches_loop_reference_with_duplicates(symmetric):
    q, pos, neg = _batch(1)
    q_ids, neg_ids = _ids()
    pos_ids = torch.arange(10, 10 + B)
    pos_ids[3] = pos_ids[0]  # rows 0 and 3 share their positive document
    pos[3] = pos[0]
    neg_ids[1, 2] = pos_ids[4]  # a hard negative of row 1 is row 4's positive
    q_ids[2] = q_ids[1]  # rows 1 and 2 are the same query with different positives
    got = info_nce(q, pos, neg, 0.1, q_ids, pos_ids, neg_ids, symmetric)
    want = reference(q, pos, neg, 0.1, q_ids, pos_ids, neg_ids, symmetric)
    assert got.item() == pytest.approx(want, abs=1e-9)
    # The masking matters: treating every document as distinct gives a different loss.
    distinct = info_nce(q, pos, neg, 0.1, torch.arange(B), torch.arange(B), 100 + torch.arange(B * N).view(B, N),
                        symmetric)
    assert abs(distinct.item() - want) > 1e-3


def test_masked_candidate_does_not_affect_its_query():
    q, pos, neg = _batch(2)
    q_ids, neg_ids = _ids()
    pos_ids = torch.arange(10, 10 + B)
    neg_ids[1, 0] = pos_ids[0]  # the same document as query 0's positive, mined for row 1
    row0 = slice(0, 1)
    neg_a = neg.clone()
    neg_b = neg.clone()
    neg_b[1, 0] = torch.randn(D, dtype=neg.dtype)  # whatever its embedding, query 0 must ignore it
    loss_a = info_nce(q, pos, neg_a, 0.05, q_ids, pos_ids, neg_ids, rows=row0)
    loss_b = info_nce(q, pos, neg_b, 0.05, q_ids, pos_ids, neg_ids, rows=row0)
    torch.testing.assert_close(loss_a, loss_b)
    # Moving the duplicate to another row's negatives leaves query 0's loss unchanged as well.
    neg_c, ids_c = neg.clone(), neg_ids.clone()
    neg_c[[1, 3], 0] = neg[[3, 1], 0]
    ids_c[[1, 3], 0] = neg_ids[[3, 1], 0]
    torch.testing.assert_close(info_nce(q, pos, neg_c, 0.05, q_ids, pos_ids, ids_c, rows=row0), loss_a)
    # And it gets no gradient from query 0.
    neg_a.requires_grad_(True)
    info_nce(q, pos, neg_a, 0.05, q_ids, pos_ids, neg_ids, rows=row0).backward()
    assert neg_a.grad[1, 0].abs().max() == 0
    assert neg_a.grad[2, 0].abs().max() > 0


def test_without_ids_identical_embeddings_are_the_same_document():
    q, pos, neg = _batch(3)
    pos[2] = pos[0]
    neg[4, 1] = pos[0]
    pos_ids = torch.arange(B)
    pos_ids[2] = 0
    _, neg_ids = _ids()
    neg_ids[4, 1] = 0
    with_ids = info_nce(q, pos, neg, 0.05, None, pos_ids, neg_ids, symmetric=True)
    without = info_nce(q, pos, neg, 0.05, symmetric=True)
    torch.testing.assert_close(without, with_ids)


def test_gradcheck():
    g = torch.Generator().manual_seed(4)
    q, pos, neg = (torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
                   for shape in ((3, 4), (3, 4), (3, 2, 4)))
    q_ids, pos_ids, neg_ids = torch.arange(3), torch.arange(3), 10 + torch.arange(6).view(3, 2)
    neg_ids[0, 0] = 2  # one masked candidate
    assert torch.autograd.gradcheck(
        lambda a, b, c: info_nce(a, b, c, 0.5, q_ids, pos_ids, neg_ids, symmetric=True), (q, pos, neg),
        fast_mode=True)


def test_single_negative_and_dot_similarity():
    q, pos, neg = _batch(5)
    one = neg[:, 0]
    got = InfoNCELoss(temperature=0.5, similarity="dot")(q, pos, one)
    logits = q @ torch.cat([pos, one]).T / 0.5
    torch.testing.assert_close(got, F.cross_entropy(logits, torch.arange(B)))


def test_fake_gather_scores_local_rows_against_everything():
    """A gather_fn that 'receives' rows from another worker: local rows see all candidates."""
    q, pos, neg = _batch(6)
    q_ids, neg_ids = _ids()
    pos_ids = torch.arange(B)
    k = 2  # this worker holds rows k.. of the full batch; "the other worker" holds rows :k

    others = iter([q[:k], pos[:k], neg[:k], q_ids[:k], pos_ids[:k], neg_ids[:k]])  # in the loss's call order

    def fake_gather(t):
        return torch.cat([next(others), t]), k

    local = (q[k:], pos[k:], neg[k:], q_ids[k:], pos_ids[k:], neg_ids[k:])
    got = InfoNCELoss(temperature=0.1, gather_fn=fake_gather)(*local)
    want = info_nce(q, pos, neg, 0.1, q_ids, pos_ids, neg_ids, rows=slice(k, B))
    torch.testing.assert_close(got, want)


def test_gather_fn_for_loss_is_identity_without_process_group():
    from embedray.training.gather import gather_fn_for_loss

    q, pos, neg = _batch(7)
    torch.testing.assert_close(InfoNCELoss(gather_fn=gather_fn_for_loss())(q, pos, neg), InfoNCELoss()(q, pos, neg))


def test_ids_to_tensor_is_stable_blake2b():
    ids = ["doc-1", "doc-2", "doc-1", "ü"]
    t = ids_to_tensor(ids)
    assert t.dtype == torch.long and t[0] == t[2] and len(set(t.tolist())) == 3
    expected = int.from_bytes(hashlib.blake2b(b"doc-2", digest_size=8).digest(), "little", signed=True)
    assert t[1].item() == expected


def test_argument_errors():
    q, pos, neg = _batch()
    with pytest.raises(ValueError, match="not both"):
        InfoNCELoss(temperature=0.05, scale=20)
    assert InfoNCELoss(scale=20).temperature == pytest.approx(0.05)
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=0)
    with pytest.raises(ValueError, match="both pos_ids and neg_ids"):
        InfoNCELoss()(q, pos, neg, pos_ids=torch.arange(B))
    with pytest.raises(ValueError, match="d_neg must be"):
        InfoNCELoss()(q, pos, neg[:3])
    with pytest.raises(ValueError, match="pos_ids must be an int64"):
        InfoNCELoss()(q, pos, pos_ids=torch.arange(B).float())
