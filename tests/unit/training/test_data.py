"""Training pairs: validated once, skipped rows counted, errors at the file's own line numbers."""
import json

import pytest

from embedray.config import build_config
from embedray.data import DataError, SkipReport, TrainPair, write_pairs_parquet
from embedray.pipeline.config import TrainJobConfig
from embedray.training.config import DataConfig
from embedray.training.data import load_training_data, training_examples

# Lines of a pairs file over the topic_beir ids (queries q0..q47, documents d0..d47, x48..x87):
# 9 good rows, 3 bad ones among them, a blank line, and a bad row after the 6th good one.
PAIRS = [
    {"query_id": "q0", "pos_id": "d0"},                          # 1
    "",                                                          # 2
    {"query_id": "q1", "pos_id": "nope"},                        # 3 unknown document id
    "{not json",                                                 # 4 malformed JSON
    {"query_id": "q2", "pos_id": "d2", "neg_ids": ["x50"]},      # 5
    {"query_id": "qX", "pos_id": "d3"},                          # 6 unknown query id
    {"query_id": "q3", "pos_id": "d3"},                          # 7
    {"query_id": "q6", "pos_id": "d6"},                          # 8
    {"query_id": "q7", "pos_id": "d7"},                          # 9
    {"query_id": "q8", "pos_id": "d8"},                          # 10: the 6th good row
    {"query_id": "q9", "pos_id": ""},                            # 11 empty text (past 6 good rows)
    {"query_id": "q12", "pos_id": "d12"},                        # 12
    {"query_id": "q13", "pos_id": "d13"},                        # 13
]


def write_pairs(path, lines=PAIRS):
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


def test_skip_counts_bad_rows_at_file_lines_and_max_counts_valid_pairs(topic_beir, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    cfg = DataConfig(path=str(topic_beir), train_pairs=str(pairs), on_error="skip", max_train_pairs=6)
    data = load_training_data(cfg)
    examples = training_examples(cfg, data, data.report)
    assert [e.query_id for e in examples] == ["q0", "q2", "q3", "q6", "q7", "q8"]
    assert examples[1].neg_ids == ("x50",)
    assert data.report.as_dict()["by_reason"] == {"unknown document id": 1, "malformed JSON": 1,
                                                  "unknown query id": 1}  # line 11 is never read
    assert [e.split(": ")[0] for e in data.report.examples] == [f"{pairs}:{n}" for n in (3, 4, 6)]
    everything = training_examples(DataConfig(path=str(topic_beir), train_pairs=str(pairs), on_error="skip"),
                                   data, report := SkipReport())
    assert len(everything) == 8 and report.total == 4 and f"{pairs}:11: field 'pos_id'" in report.examples[-1]


def test_raise_names_the_file_line_not_the_row_ordinal(topic_beir, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS[:3])  # row 2 is on line 3
    cfg = DataConfig(path=str(topic_beir), train_pairs=str(pairs))
    with pytest.raises(DataError, match=rf"^{pairs}:3: field 'pos_id': unknown document id 'nope'"):
        training_examples(cfg, load_training_data(cfg))


def test_parquet_pairs_are_validated_by_row(topic_beir, tmp_path):
    pairs = tmp_path / "pairs.parquet"
    write_pairs_parquet([TrainPair("q0", "d0"), TrainPair("q1", "gone"), TrainPair("q2", "d2", ("x50",))], pairs)
    cfg = DataConfig(path=str(topic_beir), train_pairs=str(pairs))
    with pytest.raises(DataError, match=rf"^{pairs}:row 1: field 'pos_id': unknown document id 'gone'"):
        training_examples(cfg, load_training_data(cfg))
    cfg = DataConfig(path=str(topic_beir), train_pairs=str(pairs), on_error="skip")
    examples = training_examples(cfg, load_training_data(cfg))
    assert [(e.query_id, e.neg_ids) for e in examples] == [("q0", ()), ("q2", ("x50",))]


def test_qrels_pairs_name_the_qrels_line_and_bad_lines_count_once(topic_beir, tmp_path):
    import shutil

    beir = tmp_path / "beir"
    shutil.copytree(topic_beir, beir)
    qrels = beir / "qrels" / "train.tsv"
    lines = qrels.read_text().splitlines()
    # line 2 becomes a non-relevant judgement (no pair), line 3 names an unknown document,
    # line 4 has a non-integer score (read by load_training_data and again for the pairs).
    lines[1] = lines[1].rsplit("\t", 1)[0] + "\t0"
    lines[2] = lines[2].split("\t")[0] + "\tnope\t1"
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t0.5"
    qrels.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(path=str(beir))
    with pytest.raises(DataError, match=rf"^{qrels}:4: field 'score'"):
        load_training_data(cfg)
    cfg = DataConfig(path=str(beir), on_error="skip")
    data = load_training_data(cfg)
    examples = training_examples(cfg, data, data.report)
    assert len(examples) == len(lines) - 4  # header, the 0-score, the unknown and the bad-score line
    assert data.report.as_dict()["by_reason"] == {"expected a non-negative integer, got": 1, "unknown document id": 1}
    assert [e.split(": ")[0] for e in data.report.examples] == [f"{qrels}:4", f"{qrels}:3"]


def test_no_usable_pair_and_a_bad_max_are_clear_errors(topic_beir, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", [PAIRS[2], PAIRS[3]])
    cfg = DataConfig(path=str(topic_beir), train_pairs=str(pairs), on_error="skip")
    with pytest.raises(ValueError, match=rf"{pairs}: no usable training pairs \(skipped 2 bad rows"):
        training_examples(cfg, load_training_data(cfg), SkipReport())
    with pytest.raises(ValueError, match="data.max_train_pairs must be >= 1"):
        DataConfig(path=str(topic_beir), max_train_pairs=0)


def test_local_run_reports_the_skips_in_its_summary(topic_beir, tmp_path, capsys):
    from embedray.pipeline.runtime import run_local

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    job = build_config(TrainJobConfig, {
        "data": {"path": str(topic_beir), "train_pairs": str(pairs), "on_error": "skip", "max_train_pairs": 6,
                 "dev_split": None},
        "model": {"name_or_path": "tiny-bert"},
        "loss": {"name": "infonce", "temperature": 0.1},
        "train": {"max_steps": 2, "batch_size": 3, "num_negatives": 1, "checkpoint_every": 0, "eval_every": 0,
                  "max_doc_length": 32},
        "cluster": {"storage_path": str(tmp_path / "runs"), "run_name": "skips"},
    })
    summary = run_local(job)
    assert "[embedray] data: skipped 3 bad rows" in capsys.readouterr().out
    written = json.loads((tmp_path / "runs" / "skips" / "training_summary_report.json").read_text())
    for report in (summary, written):
        assert report["train_pairs"] == 6
        skipped = report["data_skipped"]
        assert skipped["total"] == 3 and sum(skipped["by_reason"].values()) == 3
        assert [e.split(": ")[0] for e in skipped["examples"]] == [f"{pairs}:{n}" for n in (3, 4, 6)]
    md = (tmp_path / "runs" / "skips" / "training_summary_report.md").read_text()
    assert "| training pairs | 6 (3 rows skipped) |" in md and "No dev figures: the run has no dev split" in md
    assert "- unknown document id: 1" in md and f"- e.g. `{pairs}:3: field 'pos_id'" in md


def test_a_training_row_with_a_test_query_is_refused_or_counted(topic_beir, tmp_path):
    # q5 and q11 are judged in topic_beir's qrels/test.tsv (q4 in dev, which may train)
    pairs = write_pairs(tmp_path / "pairs.jsonl", [{"query_id": "q0", "pos_id": "d0"},
                                                   {"query_id": "q5", "pos_id": "d5"},
                                                   {"query_id": "q4", "pos_id": "d4"},
                                                   {"query_id": "q11", "pos_id": "d0"}])
    cfg = DataConfig(path=str(topic_beir), train_pairs=str(pairs))
    with pytest.raises(DataError, match=rf"^{pairs}:2: field 'query_id': query 'q5' is judged in the test split "
                                        r"\(qrels/test.tsv\)"):
        training_examples(cfg, load_training_data(cfg))
    cfg = DataConfig(path=str(topic_beir), train_pairs=str(pairs), on_error="skip")
    data = load_training_data(cfg)
    assert [e.query_id for e in training_examples(cfg, data, data.report)] == ["q0", "q4"]
    assert data.report.as_dict()["by_reason"] == {"query is judged in the test split": 2}
    # another test split name moves the line
    cfg = DataConfig(path=str(topic_beir), train_pairs=str(pairs), test_split="dev", dev_split=None)
    with pytest.raises(DataError, match=r":3: field 'query_id': query 'q4' is judged in the test split \(qrels/dev"):
        training_examples(cfg, load_training_data(cfg))


def test_the_test_split_can_not_be_the_training_split():
    with pytest.raises(ValueError, match="data.train_split must not be the test split"):
        DataConfig(path="x", train_split="test")
