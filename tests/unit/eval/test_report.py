"""format_table and write_json_atomic."""
from __future__ import annotations

import json
import os

import pytest

from embedray.atomic import write_json_atomic
from embedray.eval.report import format_table


def test_format_table_is_aligned_markdown():
    rows = {"minilm-l6": {"ndcg@10": 0.64508, "recall@100": 0.9250, "mrr@10": 0.6, "docs/s": 41.234},
            "a-much-longer-model-name": {"ndcg@10": 0.7, "recall@100": None}}
    table = format_table(rows, ("ndcg@10", "recall@100", "mrr@10", "docs/s"))
    lines = table.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1  # fixed width
    assert lines[0].split("|")[1:-1] == [" model                    ", " nDCG@10 ",
                                         " Recall@100 ", " MRR@10 ", " docs/s "]
    assert set(lines[1]) <= {"|", "-", ":"}
    assert "0.6451" in lines[2] and "0.9250" in lines[2] and "41.2" in lines[2]
    assert lines[3].count(" - ") == 3  # None and missing values


def test_write_json_atomic(tmp_path):
    path = write_json_atomic({"a": [1, 2]}, tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    write_json_atomic({"a": 3}, path)
    assert json.loads(path.read_text()) == {"a": 3}
    with pytest.raises(ValueError):  # NaN is not JSON: the old file survives, no temp left
        write_json_atomic({"a": float("nan")}, path)
    assert json.loads(path.read_text()) == {"a": 3}
    assert os.listdir(path.parent) == ["r.json"]
