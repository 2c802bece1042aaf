"""The run's training-data store: each worker's shard of rows and texts looked up by id."""
import json
from dataclasses import replace

import pytest

from embedray.training.batches import BatchPlan, Example, NegativeSampler, canonical_order
from embedray.training.config import DataConfig
from embedray.training.data import load_training_data, training_examples
from embedray.training.shards import ArrowDocuments, STORE_DIR, doc_ids, open_shard, write_store


@pytest.fixture
def written(topic_beir, tmp_path):
    data = load_training_data(DataConfig(path=str(topic_beir)))
    examples = training_examples(DataConfig(path=str(topic_beir)), data)
    examples = examples + [replace(examples[0], neg_ids=("d5", "d7"), scores=(0.9, 0.2, 0.1))]
    manifest = write_store(tmp_path, data, examples, world_size=3)
    return data, examples, manifest, tmp_path


def test_each_row_lands_in_exactly_one_shard_and_the_shards_are_dealt_evenly(written):
    data, examples, manifest, run = written
    shards = [open_shard(run, r, 3) for r in range(3)]
    got = [e for s in shards for e in s.examples]
    assert sorted(got, key=repr) == sorted(canonical_order(examples), key=repr)
    assert len(got) == len(set(got)) == manifest["rows"]
    assert [len(s.examples) for s in shards] == manifest["rows_per_rank"]
    assert max(manifest["rows_per_rank"]) - min(manifest["rows_per_rank"]) <= 1
    assert all(s.total == manifest["rows"] and s.digest == manifest["digest"] for s in shards)
    # scores and given negatives survive the round trip
    assert any(e.scores == (0.9, 0.2, 0.1) and e.neg_ids == ("d5", "d7") for e in got)
    # a worker holds the judged positives of its own queries only, and all of them
    for s in shards:
        own = {e.query_id for e in s.examples}
        assert set(s.data.positives) == own
        assert all(s.data.positives[q] == data.positives[q] for q in own)
        assert all(q in s.data.positives for q in own) and "nope" not in s.data.positives


def test_rows_are_read_on_demand_in_canonical_order(written):
    data, examples, _, run = written
    shard = open_shard(run, 0, 3)
    rows = shard.examples
    as_list = list(rows)
    assert as_list == canonical_order(examples)[0::3]
    assert [rows[i] for i in range(len(rows))] == as_list and rows[-1] == as_list[-1] and rows[1:3] == as_list[1:3]
    with pytest.raises(IndexError):
        rows[len(rows)]
    assert list(rows.task("")) == as_list and list(rows.task("other")) == []
    assert list(rows.pos_chars) == [len(data.doc_text(e.pos_id)) for e in as_list]
    # the precomputed lengths give the batches the lengths by id give
    by_id = BatchPlan(as_list, lambda d: len(data.doc_text(d)), batch_size=2, world_size=1, seed=1, bucket_batches=2)
    stored = BatchPlan(rows, rows.pos_chars, batch_size=2, world_size=1, seed=1, bucket_batches=2)
    assert all((by_id.rank_indices(i, 0) == stored.rank_indices(i, 0)).all() for i in range(6))


def test_a_query_without_judgements_bans_every_positive_of_its_rows(topic_beir, tmp_path):
    """Rows of one query may land on different ranks; each rank still knows all its positives."""
    data = load_training_data(DataConfig(path=str(topic_beir)))
    rows = [Example("q1", "d1"), Example("new", "d2"), Example("new", "d3")]
    write_store(tmp_path, data, rows, world_size=2)
    shards = [open_shard(tmp_path, r, 2) for r in range(2)]
    assert [sorted({e.query_id for e in s.examples}) for s in shards] == [["new", "q1"], ["new"]]
    assert all(s.data.positives["new"] == {"d2", "d3"} for s in shards)
    assert shards[0].data.positives["q1"] == data.positives["q1"]


def test_texts_are_read_by_id_from_the_store(written):
    data, _, _, run = written
    shard = open_shard(run, 1, 3)
    docs, queries = shard.data.corpus, shard.data.queries
    assert isinstance(docs, ArrowDocuments)
    assert len(docs) == len(data.corpus) and list(docs) == sorted(data.corpus)
    for did in list(data.corpus)[::7]:
        assert docs[did] == data.corpus[did] and shard.data.doc_text(did) == data.doc_text(did)
    assert dict(docs.items()) == data.corpus
    assert {q: queries[q] for q in data.queries} == data.queries
    assert "d3" in docs and "nope" not in docs and 3 not in docs
    with pytest.raises(KeyError):
        docs["nope"]
    assert list(doc_ids(docs)) == sorted(data.corpus)
    assert list(doc_ids(docs, "d1")) == sorted(d for d in data.corpus if d.startswith("d1"))
    assert list(doc_ids(docs, "zz")) == []
    # the dev split reads its texts from the same store
    dev = shard.data.dev
    assert dev.qrels == data.dev.qrels and dev.queries == data.dev.split_queries() and dev.corpus is docs


def test_a_sampler_over_the_store_draws_what_it_draws_over_the_dict(written):
    data, examples, _, run = written
    shard = open_shard(run, 0, 3)
    ex = shard.examples[0]
    a = NegativeSampler(sorted(data.corpus), data.positives, num_negatives=4, mode="random", seed=3)
    b = NegativeSampler(doc_ids(shard.data.corpus), shard.data.positives, num_negatives=4, mode="random", seed=3,
                        queries={e.query_id for e in shard.examples})
    assert [a.sample(ex, i, 0) for i in range(5)] == [b.sample(ex, i, 0) for i in range(5)]
    b.set_pool({ex.query_id: ["d1"], "someone-else": ["d2"]}, 1)
    assert set(b.pool) == {ex.query_id}  # a shard keeps its own queries' pool


def test_a_store_for_other_workers_or_none_at_all_is_refused(written, tmp_path):
    _, _, _, run = written
    with pytest.raises(RuntimeError, match="written for 3 workers, this run has 2"):
        open_shard(run, 0, 2)
    with pytest.raises(RuntimeError, match="manifest.json: missing"):
        open_shard(tmp_path / "elsewhere", 0, 1)


def test_the_digest_follows_the_rows(written, topic_beir, tmp_path):
    data, examples, manifest, _ = written
    again = write_store(tmp_path / "b", data, list(reversed(examples)), world_size=3)
    assert again["digest"] == manifest["digest"]  # the canonical order, not the given one
    fewer = write_store(tmp_path / "c", data, examples[1:], world_size=3)
    assert fewer["digest"] != manifest["digest"]
    assert json.loads((tmp_path / "c" / STORE_DIR / "manifest.json").read_text()) == fewer


def test_classification_rows_carry_no_query(topic_beir, tmp_path):
    data = load_training_data(DataConfig(path=str(topic_beir)))
    rows = [Example("", "d1", label="a"), Example("", "d2", label="b")]
    write_store(tmp_path, data, rows, world_size=1)
    shard = open_shard(tmp_path, 0, 1)
    assert list(shard.examples) == canonical_order(rows) and dict(shard.data.positives) == {}


def test_every_shard_knows_each_tasks_totals(topic_beir, tmp_path):
    """A classifier head has one output per label of the whole task and the task schedule weighs
    tasks by their row counts: every rank must see the same totals, not its shard's."""
    data = load_training_data(DataConfig(path=str(topic_beir)))
    rows = ([Example("", f"d{i}", label="a" if i < 3 else "b", task="sections") for i in range(1, 5)]
            + [Example("q1", "d1", task="topics"), Example("q2", "d2", task="topics")])
    write_store(tmp_path, data, rows, world_size=4)
    shards = [open_shard(tmp_path, r, 4) for r in range(4)]
    assert any({e.label for e in s.examples if e.task == "sections"} != {"a", "b"} for s in shards)
    for s in shards:
        assert s.tasks == {"sections": {"rows": 4, "labels": ["a", "b"]}, "topics": {"rows": 2, "labels": []}}
