"""Pair builders: each one's output on small real-looking inputs, its counts by reason, its
file:line errors, its determinism; and the `embedray data build` command."""
import json

import numpy as np
import pytest

from embedray.cli import main
from embedray.data import DataError
from embedray.data import builders as b
from embedray.data.flag import iter_flag_jsonl


def _jsonl(path, *rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_nli_groups_by_premise_and_counts_what_it_leaves_out(tmp_path):
    path = _jsonl(tmp_path / "snli.jsonl",
                  {"premise": "A man plays a guitar.", "hypothesis": "A man makes music.", "label": 0},
                  {"premise": "A man plays a guitar.", "hypothesis": "A man sleeps.", "label": "contradiction"},
                  {"premise": "A man plays a guitar.", "hypothesis": "The man is famous.", "label": 1},
                  {"premise": "A child reads.", "hypothesis": "A child swims.", "label": 2},
                  {"sentence1": "Dogs run.", "sentence2": "Animals move.", "gold_label": "entailment"},
                  {"premise": "?", "hypothesis": "!", "label": "-"})
    rows, stats = b.build_nli(path)
    assert [(r.query, r.pos, r.neg) for r in rows] == [
        ("A man plays a guitar.", ["A man makes music."], ["A man sleeps."]), ("Dogs run.", ["Animals move."], [])]
    assert stats.read == 6 and stats.written == 2
    assert stats.dropped == {"neutral": 1, "without a gold label": 1, "premises without an entailment": 1}
    tsv = tmp_path / "mnli.tsv"
    tsv.write_text("sentence1\tsentence2\tgold_label\nA woman cuts bread.\tSomeone cuts food.\tentailment\n"
                   "A woman cuts bread.\tA woman drives.\tmaybe\n")
    with pytest.raises(DataError, match=r"mnli.tsv:3: field 'gold_label': expected entailment, neutral"):
        b.build_nli(tsv)
    rows, stats = b.build_nli(tsv, on_error="skip")
    assert rows[0].neg == [] and stats.report.total == 1


def test_logs_use_unclicked_shown_documents_else_seeded_random_ones(tmp_path):
    path = _jsonl(tmp_path / "logs.jsonl",
                  {"query": "http client", "clicked": "requests", "shown": ["requests", "urllib3", "flask"]},
                  {"query": "http client ", "clicked": ["requests", "httpx"]},
                  {"query": "json cli", "clicked": "jq"},
                  {"query": "yaml cli", "clicked": "yq"},
                  {"query": "bad", "clicked": 3})
    with pytest.raises(DataError, match=r"logs.jsonl:5: field 'clicked': expected a string or a list"):
        b.build_logs(path)
    rows, stats = b.build_logs(path, random_negatives=1, seed=0, on_error="skip")
    by_query = {r.query: r for r in rows}
    assert by_query["http client"].pos == ["requests", "httpx"] and by_query["http client"].neg == ["urllib3", "flask"]
    assert len(by_query["json cli"].neg) == 1 and by_query["json cli"].neg[0] != "jq"
    assert stats.dropped == {"repeated clicks": 1} and stats.report.total == 1
    again, _ = b.build_logs(path, random_negatives=1, seed=0, on_error="skip")
    assert again == rows


def test_nsp_pairs_consecutive_sentences_within_each_document(tmp_path):
    text = tmp_path / "docs.txt"
    text.write_text("Dr. Smith maintains the package since 2019. It ships the command line tools.\n"
                    "Version 2.5 adds a parser. Ok.\n\n"
                    "A second document that has only one long sentence in it.\n")
    rows, stats = b.build_nsp(text, min_chars=10)
    assert [(r.query, r.pos[0]) for r in rows] == [
        ("Dr. Smith maintains the package since 2019.", "It ships the command line tools."),
        ("It ships the command line tools.", "Version 2.5 adds a parser.")]
    assert stats.read == 2 and stats.dropped == {"short sentences": 1, "documents with fewer than two sentences": 1}


def test_span_views_lose_different_spans_and_depend_only_on_the_seed(tmp_path):
    words = [f"w{i}" for i in range(40)]
    path = _jsonl(tmp_path / "p.jsonl", {"text": " ".join(words)}, {"text": "too short"})
    rows, stats = b.build_span(path, ratio=0.15, seed=3)
    (row,) = rows
    a, c = row.query.split(), row.pos[0].split()
    assert len(a) == len(c) == 34 and a != c and set(a) | set(c) <= set(words)
    assert stats.dropped == {"short passages": 1}
    assert b.build_span(path, ratio=0.15, seed=3)[0] == rows and b.build_span(path, ratio=0.15, seed=4)[0] != rows


def test_simcse_rows_are_the_text_twice_without_duplicates(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("one sentence\nanother one\none sentence\n\n")
    rows, stats = b.build_simcse(path)
    assert [(r.query, r.pos) for r in rows] == [("one sentence", ["one sentence"]), ("another one", ["another one"])]
    assert stats.dropped == {"duplicates": 1}


def test_dedup_keeps_the_first_of_each_near_duplicate_chain():
    vecs = {"a": [1, 0, 0], "a'": [0.99, 0.14, 0], "a''": [0.98, 0.2, 0], "b": [0, 1, 0], "c": [0, 0, 1]}
    encode = lambda texts: np.array([vecs[t] for t in texts], dtype=np.float32)  # the unit, not a model
    found = b.find_near_duplicates(["a", "b", "a'", "c", "a''"], encode, threshold=0.95)
    assert [(i, j) for i, j, _ in found] == [(0, 2), (0, 4)] and all(c >= 0.95 for *_, c in found)
    from embedray.data import FlagExample

    kept, pairs, stats = b.dedup_examples([FlagExample(t, ["p"]) for t in ["a", "b", "a'"]], encode, 0.95)
    assert [e.query for e in kept] == ["a", "b"] and stats.written == 2 and stats.read == 3


def test_the_command_writes_flag_jsonl_and_refuses_foreign_flags(tmp_path, capsys):
    src = _jsonl(tmp_path / "nli.jsonl", {"premise": "P one.", "hypothesis": "H one.", "label": "entailment"})
    out = tmp_path / "out" / "pairs.jsonl"
    assert main(["data", "build", "nli", str(src), "--output", str(out)]) == 0
    assert "nli: 1 rows from 1 input rows" in capsys.readouterr().out
    assert [e.query for e in iter_flag_jsonl(out)] == ["P one."]
    assert main(["data", "build", "nli", str(src), "--output", str(out), "--threshold", "0.9"]) == 2
    assert "--threshold applies to dedup, not nli" in capsys.readouterr().err
