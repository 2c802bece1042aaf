import json
import math

import pytest

from embedray.data import DataError, FlagExample, SkipReport, flag_to_beir, iter_flag_jsonl, write_flag_jsonl
from embedray.data.flag import text_id

GOOD = {"query": "what is a cat", "pos": ["a small feline"], "neg": ["a dog"]}


def test_roundtrip_keeps_every_field(tmp_path):
    examples = [FlagExample("q1", ["p1", "p2"], ["n1"], [0.9, 0.8], [0.1], "Represent: "),
                FlagExample("q2", ["p3"], [], None, None, None)]
    out = tmp_path / "sub" / "pairs.jsonl"
    assert write_flag_jsonl(examples, out) == 2
    assert list(iter_flag_jsonl(out)) == examples
    assert not list(out.parent.glob(".*.tmp"))


def test_optional_fields_default(write_lines):
    path = write_lines("pairs.jsonl", {"query": "q", "pos": ["p"], "type": "ignored"})
    (ex,) = iter_flag_jsonl(path)
    assert ex.neg == [] and ex.pos_scores is None and ex.neg_scores is None and ex.prompt is None


BAD_ROWS = [
    ('{"query": "q", "pos": [', None, "malformed JSON"),
    ('["query", "pos"]', None, "expected a JSON object"),
    ({"pos": ["p"]}, "query", "missing field"),
    ({"query": "   ", "pos": ["p"]}, "query", "empty text"),
    ({"query": 3, "pos": ["p"]}, "query", "expected a string"),
    ({"query": "q"}, "pos", "missing field"),
    ({"query": "q", "pos": []}, "pos", "needs at least 1"),
    ({"query": "q", "pos": "p"}, "pos", "expected a list"),
    ({"query": "q", "pos": ["p", ""]}, "pos[1]", "empty text"),
    ({"query": "q", "pos": ["p"], "neg": ["n", 7]}, "neg[1]", "expected str, got int"),
    ({"query": "q", "pos": ["p"], "pos_scores": [1.0, 2.0]}, "pos_scores", "2 score(s) for 1"),
    ({"query": "q", "pos": ["p"], "neg": ["n"], "neg_scores": []}, "neg_scores", "0 score(s) for 1"),
    ({"query": "q", "pos": ["p"], "pos_scores": ["high"]}, "pos_scores[0]", "expected float"),
    ({"query": "q", "pos": ["p"], "pos_scores": [math.nan]}, "pos_scores[0]", "finite"),
    ({"query": "q", "pos": ["p"], "prompt": ["x"]}, "prompt", "expected a string"),
]


@pytest.mark.parametrize("row,field,reason", BAD_ROWS)
def test_bad_row_names_file_line_field(write_lines, row, field, reason):
    path = write_lines("pairs.jsonl", GOOD, "", row)  # line 2 is blank: the bad row is line 3
    with pytest.raises(DataError) as info:
        list(iter_flag_jsonl(path))
    err = info.value
    prefix = f"{path}:3: " + (f"field '{field}': " if field else "")
    assert str(err).startswith(prefix), str(err)
    assert reason in str(err)
    assert (err.path, err.line, err.field) == (str(path), 3, field)


def test_skip_mode_counts_every_bad_row(write_lines):
    rows = [GOOD] + [r for r, _, _ in BAD_ROWS] + [GOOD]
    path = write_lines("pairs.jsonl", *rows)
    report = SkipReport()
    got = list(iter_flag_jsonl(path, on_error="skip", report=report))
    assert len(got) == 2
    assert report.total == len(BAD_ROWS)
    assert report.skipped["empty text"] == 2 and report.skipped["missing field"] == 2
    assert f"{path}:2" in report.summary()


def test_flag_to_beir_dedupes_with_stable_ids():
    examples = [FlagExample("q one", ["doc a", "doc b"], ["doc c"]),
                FlagExample("q two", ["doc c"], ["doc a"]),
                FlagExample("q one", ["doc d"], [])]
    corpus, queries, qrels = flag_to_beir(examples)
    assert [d.text for d in corpus] == ["doc a", "doc b", "doc c", "doc d"]
    assert len({d.id for d in corpus}) == 4
    assert [t for _, t in queries] == ["q one", "q two"]
    q1, q2 = (qid for qid, _ in queries)
    ids = {d.text: d.id for d in corpus}
    assert qrels[q1] == {ids["doc a"]: 1, ids["doc b"]: 1, ids["doc d"]: 1}
    assert qrels[q2] == {ids["doc c"]: 1}
    # ids depend on the text only: a second conversion of other data agrees
    corpus2, queries2, _ = flag_to_beir([FlagExample("q two", ["doc a"])])
    assert corpus2[0].id == ids["doc a"] and queries2[0][0] == q2
    assert ids["doc a"].startswith("d:") and q1.startswith("q:") and text_id("doc a") == ids["doc a"]


def test_a_flag_folder_keeps_negatives_scores_and_prompts_and_drops_leaked_queries(topic_beir, tmp_path):
    import json

    from embedray.data import load_beir
    from embedray.data.flag import write_flag_folder
    from tests.conftest import make_topic_flag

    files = make_topic_flag(topic_beir, tmp_path / "flag", leak=2)
    stats = write_flag_folder(files, tmp_path / "beir")
    assert stats.queries == {"train": 34, "dev": 8, "test": 6}  # 8 test queries, 2 of them also in train
    assert len(stats.leaked["test"]) == 2 and "dev" not in stats.leaked
    assert stats.leaked["test"][0].startswith("Find the package: ")
    assert "leakage: 2 test queries also in train, dropped from test" in stats.summary()
    rows = [json.loads(line) for line in (tmp_path / "beir" / "train_pairs.jsonl").read_text().splitlines()]
    assert len(rows) == stats.train_pairs == stats.given_negatives == stats.scored_pairs == 34
    assert all(len(r["neg_ids"]) == 6 and r["pos_score"] == 4.0 and r["neg_scores"] == [0.0, -1.0, -1.0, -2.0, -2.0, -3.0]
               for r in rows)
    test = load_beir(tmp_path / "beir", "test")
    assert len(test.qrels) == 6 and all(test.queries[q].startswith("Find the package: ") for q in test.qrels)
    assert not set(test.qrels) & {r["query_id"] for r in rows}

    kept = write_flag_folder(files, tmp_path / "kept", leakage="keep")
    assert kept.queries["test"] == 8 and "kept in test (its figures include them)" in kept.summary()
    with pytest.raises(ValueError, match=r"test.jsonl: 2 queries also in .*train.jsonl .*prepare.leakage"):
        write_flag_folder(files, tmp_path / "strict", leakage="error")


def test_a_beir_folder_reports_query_texts_shared_by_train_and_test(topic_beir, tmp_path):
    import shutil

    from embedray.data.beir import held_out_leakage

    beir = tmp_path / "beir"
    shutil.copytree(topic_beir, beir)
    assert held_out_leakage(beir, "train", ["dev", "test"]) == {}
    queries = (beir / "queries.jsonl").read_text().splitlines()
    test_q = (beir / "qrels" / "test.tsv").read_text().splitlines()[1].split("\t")[0]
    text = next(json.loads(line)["text"] for line in queries if json.loads(line)["_id"] == test_q)
    (beir / "queries.jsonl").write_text("\n".join(queries + [json.dumps({"_id": "copy", "text": f" {text.upper()} "})]) + "\n")
    with open(beir / "qrels" / "train.tsv", "a") as f:
        f.write("copy\td0\t1\n")
    assert held_out_leakage(beir, "train", ["dev", "test"]) == {"test": [text]}
