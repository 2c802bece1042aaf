"""``embedray mine`` (run_mine) on a tiny BEIR folder with tiny-bert."""
from __future__ import annotations

import argparse
import json

import pytest

from embedray.cli.mine import add_arguments as add_mine_arguments
from embedray.cli.mine import run as run_mine
from embedray.data.beir import write_beir
from embedray.data.flag import iter_flag_jsonl
from embedray.mining.pool import NegativePool


@pytest.fixture
def beir_dir(tmp_path, tiny_data):
    qrels = {"train": {q: r for q, r in tiny_data.qrels.items() if q not in ("q6", "q7")},
             "dev": {q: tiny_data.qrels[q] for q in ("q6", "q7")}}
    return write_beir(tmp_path / "beir", tiny_data.corpus.values(), tiny_data.queries.items(), qrels)


def _args(*argv: str) -> argparse.Namespace:
    return add_mine_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_mine_writes_flag_jsonl_without_scores(beir_dir, tmp_path, tiny_data, capsys):
    out = tmp_path / "hn.jsonl"
    code = run_mine(_args("--model", "tiny-bert", "--data", str(beir_dir), "--output", str(out),
                          "--k", "10", "--num-negatives", "3", "--pool-output", str(tmp_path / "p.json")))
    assert code == 0
    rows = list(iter_flag_jsonl(out))
    assert len(rows) == 6
    for row in rows:
        assert len(row.neg) == 3 and row.pos[0] not in row.neg
        assert row.pos_scores is None and row.neg_scores is None
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 6 and summary["counts"]["negatives_kept"] == 18
    assert NegativePool.load(tmp_path / "p.json").num_negatives == 18


def test_mine_trains_a_cross_encoder_and_writes_scores(beir_dir, tmp_path, capsys):
    out = tmp_path / "hn.jsonl"
    code = run_mine(_args("--model", "tiny-bert", "--data", str(beir_dir), "--output", str(out),
                          "--k", "10", "--num-negatives", "2", "--rescore-candidates", "4",
                          "--train-cross-encoder", "--ce-base-model", "tiny-bert",
                          "--ce-max-steps", "2", "--ce-max-length", "64", "--eval-split", "dev",
                          "--denoise-margin", "0.0"))
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    ce = summary["cross_encoder"]
    assert (tmp_path / "hn.jsonl.cross-encoder" / "embedray.json").is_file()
    assert set(ce["rerank"]) == {"before", "after"}
    rows = list(iter_flag_jsonl(out))
    assert rows and all(len(r.pos_scores) == len(r.pos) and len(r.neg_scores) == len(r.neg) for r in rows)
    for r in rows:
        assert all(n < min(r.pos_scores) for n in r.neg_scores)  # denoised at margin 0
    c = summary["counts"]
    assert c["docs_encoded"] == 0  # the second round reused the first round's embeddings
    assert c["negatives_kept"] + c["negatives_removed"] <= 6 * 4


def test_bad_config_is_exit_code_2(beir_dir, tmp_path, capsys):
    code = run_mine(_args("--model", "tiny-bert", "--data", str(beir_dir), "--output",
                          str(tmp_path / "x.jsonl"), "--k", "3", "--num-negatives", "5"))
    assert code == 2
    assert "num_negatives" in capsys.readouterr().err
    assert run_mine({"model": "tiny-bert", "data": str(tmp_path / "nope"), "output": "x"}) == 2


def test_mine_keeps_the_prompt_counts_what_it_leaves_out_and_refuses_the_test_split(beir_dir, tmp_path, capsys):
    import shutil

    judged = tmp_path / "judged"  # q6 judged in train only as not relevant: no row, counted
    shutil.copytree(beir_dir, judged)
    with open(judged / "qrels" / "train.tsv", "a") as f:
        f.write("q6\td0\t0\n")
    out = tmp_path / "hn.jsonl"
    code = run_mine(_args("--model", "tiny-bert", "--data", str(judged), "--output", str(out), "--k", "10",
                          "--num-negatives", "3", "--query-prompt", "query: "))
    assert code == 0
    rows = list(iter_flag_jsonl(out))
    assert len(rows) == 6 and {r.prompt for r in rows} == {"query: "}
    captured = capsys.readouterr()
    assert json.loads(captured.out)["left_out"] == {"no positive judgement": 1}
    assert f"1 train queries left out of {out}: no positive judgement 1" in captured.err
    assert run_mine(_args("--model", "tiny-bert", "--data", str(judged), "--output", str(out),
                          "--split", "test")) == 2
    assert "--split test: mine writes training data" in capsys.readouterr().err
