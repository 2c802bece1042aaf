"""Token-budget splitting, length-sorted chunks and reassembly (no model, no Ray)."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedray.serve.batching import (ModelRunQueue, Part, batch_tokens, padded_chunks, reassemble,
                                     split_by_token_budget)

lengths_st = st.lists(st.integers(1, 64), min_size=0, max_size=80)


@settings(max_examples=200, deadline=None, database=None)
@given(lengths=lengths_st, budget=st.integers(64, 400))
def test_split_covers_every_text_once_within_budget(lengths, budget):
    texts = [f"t{i}" for i in range(len(lengths))]
    parts = split_by_token_budget(texts, lengths, budget)
    covered = sorted(i for p in parts for i in p.index)
    assert covered == list(range(len(texts)))
    for p in parts:
        assert p.tokens <= budget
        assert p.texts == [texts[i] for i in p.index]
        assert p.lengths == [lengths[i] for i in p.index]
    # Greedy packing: no two consecutive parts could have been merged.
    for a, b in zip(parts, parts[1:]):
        assert a.tokens + b.lengths[0] > budget


def test_split_groups_by_length_and_splits_oversized_requests():
    lengths = [5, 100, 6, 90, 7, 95]
    parts = split_by_token_budget([str(n) for n in lengths], lengths, budget=200)
    assert len(parts) == 2  # 308 tokens do not fit one part of 200
    assert parts[0].lengths == [5, 6, 7, 90]  # short texts together, longest last
    assert parts[1].lengths == [95, 100]


def test_split_rejects_a_text_longer_than_the_budget():
    with pytest.raises(ValueError, match="more than the batch budget"):
        split_by_token_budget(["a", "b"], [3, 300], budget=256)
    with pytest.raises(ValueError, match="lengths"):
        split_by_token_budget(["a"], [1, 2], budget=10)


@settings(max_examples=200, deadline=None, database=None)
@given(lengths=lengths_st, budget=st.integers(1, 300), overhead=st.integers(0, 100))
def test_padded_chunks_sorted_within_budget_and_little_padding(lengths, budget, overhead):
    chunks = padded_chunks(lengths, budget, overhead)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    flat = [lengths[i] for c in chunks for i in c]
    assert flat == sorted(flat)  # length-sorted across the batch
    for c in chunks:
        ls = [lengths[i] for i in c]
        assert len(c) * max(ls) <= budget or len(c) == 1
        for k in range(1, len(ls)):  # each row, when added, padded the earlier ones by <= overhead
            assert k * (ls[k] - ls[k - 1]) <= overhead
    for a, b in zip(chunks, chunks[1:]):  # and every cut was needed
        la, first = [lengths[i] for i in a], lengths[b[0]]
        assert (len(a) + 1) * first > budget or len(a) * (first - la[-1]) > overhead


def test_padded_chunks_keeps_short_texts_apart_from_long_ones():
    lengths = [8] * 31 + [200]
    chunks = padded_chunks(lengths, budget=8192)
    assert [len(c) for c in chunks] == [31, 1]
    assert padded_chunks([10, 12, 14, 15], budget=8192) == [[0, 1, 2, 3]]


def test_batch_tokens_sums_parts():
    parts = [Part(["a", "b"], [3, 4], [0, 1]), Part(["c"], [10], [2])]
    assert batch_tokens(parts) == 17


def test_reassemble_restores_request_order():
    lengths = [9, 1, 5, 3, 7]
    texts = [str(i) for i in range(5)]
    parts = split_by_token_budget(texts, lengths, budget=10)
    results = [np.array([[float(t)] for t in p.texts]) for p in parts]
    out = reassemble(parts, results, len(texts))
    assert out[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_reassemble_checks_row_counts():
    parts = [Part(["a", "b"], [1, 1], [0, 1])]
    with pytest.raises(ValueError, match="came back with 1 rows"):
        reassemble(parts, [np.zeros((1, 4))], 2)
    with pytest.raises(ValueError, match="cover 2 texts, expected 3"):
        reassemble(parts, [np.zeros((2, 4))], 3)


def _part(name: str, tokens: int = 10) -> Part:
    return Part([name], [tokens], [0])


def test_model_run_queue_merges_batches_that_wait():
    runs: list[list[str]] = []
    gate = threading.Event()

    def fn(parts):
        runs.append([p.texts[0] for p in parts])
        if len(runs) == 1:
            gate.wait(5)  # the first run is slow: the next submissions queue up meanwhile
        return [p.texts[0].upper() for p in parts]

    async def main():
        q = ModelRunQueue(fn, max_tokens=1000)
        first = asyncio.create_task(q.submit([_part("a")]))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(q.submit([_part(x), _part(x + "2")])) for x in "bcd"]
        await asyncio.sleep(0.05)
        gate.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(main())
    assert runs == [["a"], ["b", "b2", "c", "c2", "d", "d2"]]  # one merged run after the slow one
    assert first == (["A"], {"texts": 1, "tokens": 10})
    assert [r[0] for r in rest] == [["B", "B2"], ["C", "C2"], ["D", "D2"]]
    assert [r[1] for r in rest] == [{"texts": 6, "tokens": 60}, None, None]  # size reported once per run


def test_model_run_queue_respects_the_token_cap_and_errors():
    runs: list[int] = []

    def fn(parts):
        runs.append(sum(p.tokens for p in parts))
        time.sleep(0.02)
        if any(p.texts[0] == "boom" for p in parts):
            raise RuntimeError("model failed")
        return [0] * len(parts)

    async def main():
        q = ModelRunQueue(fn, max_tokens=25)
        ok = await asyncio.gather(*[q.submit([_part(str(i))]) for i in range(6)])
        with pytest.raises(RuntimeError, match="model failed"):
            await q.submit([_part("boom")])
        return ok, await q.submit([_part("after")])

    ok, after = asyncio.run(main())
    assert all(r[0] == [0] for r in ok) and after[0] == [0]
    assert max(runs) <= 25 and sum(runs[:-2]) == 60  # 6 x 10 tokens in runs of <= 25
