import numpy as np
import pytest

from embedray.training.batches import BatchPlan, Example, NegativeSampler, canonical_order


def _examples(n):
    return [Example(f"q{i}", f"d{i}") for i in range(n)]


def test_plan_is_deterministic_and_partitions_each_epoch():
    ex = _examples(40)
    plan = BatchPlan(ex, lambda d: int(d[1:]), batch_size=4, world_size=2, seed=3, bucket_batches=2)
    again = BatchPlan(ex, lambda d: int(d[1:]), batch_size=4, world_size=2, seed=3, bucket_batches=2)
    seen = []
    for i in range(plan.batches_per_epoch):
        r0, r1 = plan.rank_indices(i, 0), plan.rank_indices(i, 1)
        assert np.array_equal(r0, again.rank_indices(i, 0))
        assert not set(r0) & set(r1)
        seen += [*r0, *r1]
    assert sorted(seen) == list(range(40))  # every example exactly once per epoch
    other = BatchPlan(ex, lambda d: int(d[1:]), batch_size=4, world_size=2, seed=4, bucket_batches=2)
    assert any(not np.array_equal(plan.rank_indices(i, 0), other.rank_indices(i, 0)) for i in range(5))


def test_length_bucketing_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = {f"d{i}": int(x) for i, x in enumerate(rng.integers(5, 500, 512))}
    ex = _examples(512)

    def padding(bucket):
        plan = BatchPlan(ex, lengths.__getitem__, batch_size=16, world_size=1, seed=0, bucket_batches=bucket)
        waste = 0
        for i in range(plan.batches_per_epoch):
            lens = [lengths[ex[j].pos_id] for j in plan.rank_indices(i, 0)]
            waste += sum(max(lens) - x for x in lens)
        return waste

    assert padding(16) < 0.3 * padding(1)


def test_too_few_examples_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        BatchPlan(_examples(3), len, batch_size=4, world_size=1, seed=0)


def test_negatives_never_positive_and_reproducible():
    docs = [f"d{i}" for i in range(30)]
    positives = {"q1": {"d1", "d2"}}
    s = NegativeSampler(docs, positives, num_negatives=3, mode="random", seed=0)
    ex = Example("q1", "d1")
    for index in range(50):
        negs = s.sample(ex, index, 0)
        assert len(negs) == 3 and not set(negs) & {"d1", "d2"}
        assert negs == s.sample(ex, index, 0)
    s.set_pool({"q1": ["d5", "d6", "d7", "d8"]}, version=1)
    s.mode = "pool"
    assert set(s.sample(ex, 0, 0)) <= {"d5", "d6", "d7", "d8"}


def test_canonical_order_ignores_input_order():
    ex = _examples(10)
    assert canonical_order(ex[::-1]) == canonical_order(ex)


def test_given_negatives_by_mode():
    docs = [f"d{i}" for i in range(30)]
    positives = {"q1": {"d1", "d2"}}
    ex = Example("q1", "d1", ("d2", "d20", "d21"))  # d2 is a judged positive: never a negative
    given = NegativeSampler(docs, positives, num_negatives=2, mode="given", seed=0)
    assert given.candidates(ex) == ["d20", "d21"] and set(given.sample(ex, 0, 0)) == {"d20", "d21"}
    topped = NegativeSampler(docs, positives, num_negatives=4, mode="given", seed=0).sample(ex, 3, 1)
    assert {"d20", "d21"} <= set(topped) and len(set(topped)) == 4 and not set(topped) & {"d1", "d2"}
    assert NegativeSampler(docs, positives, num_negatives=2, mode="random", seed=0).candidates(ex) == []
    by_mode = {}
    for mode in ("fallback", "mix", "instead"):
        s = NegativeSampler(docs, positives, num_negatives=2, mode="pool", seed=0, given=mode)
        assert s.candidates(ex) == ["d20", "d21"]  # no pool yet: the row's own
        s.set_pool({"q1": ["d5", "d6"]}, version=1)
        by_mode[mode] = s.candidates(ex)
    assert by_mode == {"fallback": ["d5", "d6"], "mix": ["d5", "d6", "d20", "d21"], "instead": ["d20", "d21"]}
    with pytest.raises(ValueError, match="train.given_negatives: 'both' is not one of fallback, mix, instead"):
        NegativeSampler(docs, positives, num_negatives=2, mode="pool", seed=0, given="both")
