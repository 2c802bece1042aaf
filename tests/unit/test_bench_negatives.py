"""bench/negatives.py's bookkeeping: the held-out dev split of a folder without one, and one
cross-encoder gate verdict shared by the bench's runs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "negatives.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_negatives", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _beir(root: Path, train_queries: int) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text('{"_id": "d0", "text": "x"}\n')
    (root / "queries.jsonl").write_text('{"_id": "q0", "text": "y"}\n')
    rows = [f"q{i}\td{i}\t1" for i in range(train_queries)] + ["q0\td9\t1"]  # q0 has two judgements
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nt0\td0\t1\n")
    return root


def test_heldout_dev_splits_the_train_queries_and_links_the_rest(bench, tmp_path):
    src = _beir(tmp_path / "set", 20)
    dest = bench.heldout_dev(src, tmp_path / "out", 5, seed=0)
    split = {s: (dest / "qrels" / f"{s}.tsv").read_text().splitlines() for s in ("train", "dev")}
    assert all(lines[0].startswith("query-id") for lines in split.values())
    ids = {s: {r.split("\t")[0] for r in lines[1:]} for s, lines in split.items()}
    assert len(ids["dev"]) == 5 and len(ids["train"]) == 15 and not ids["dev"] & ids["train"]
    assert len(split["train"]) + len(split["dev"]) - 2 == 21  # every judgement kept, in one split
    for f in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        assert (dest / f).is_symlink() and (dest / f).resolve() == (src / f).resolve()
    assert bench.heldout_dev(src, tmp_path / "out", 5, seed=0) == dest  # built once
    assert bench.heldout_dev(dest, tmp_path / "out2", 5, seed=0) == dest.resolve()  # has a dev split: itself
    with pytest.raises(SystemExit, match="between 1 and 19"):
        bench.heldout_dev(src, tmp_path / "out3", 20, seed=0)


def test_a_later_run_takes_the_first_runs_gate_verdict(bench, tmp_path):
    from embedray.training.distill import GATE_FILE

    verdict = {"checked": True, "passed": True, "fusion": {"alpha": 0.3}}
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / GATE_FILE).write_text(json.dumps(verdict))
    assert not bench.reuse_gate(tmp_path, "refreshed", [])  # nothing finished yet
    assert bench.reuse_gate(tmp_path, "refreshed", ["static"])
    assert json.loads((tmp_path / "refreshed" / GATE_FILE).read_text()) == verdict
    assert not (tmp_path / "refreshed" / "cross_encoder_dev.json").exists()  # none to copy
    (tmp_path / "refreshed" / GATE_FILE).write_text(json.dumps({"passed": False}))
    assert not bench.reuse_gate(tmp_path, "refreshed", ["static"])  # its own verdict stays
    assert json.loads((tmp_path / "refreshed" / GATE_FILE).read_text()) == {"passed": False}


def test_only_cross_encoder_denoising_runs_need_the_cross_encoder(bench):
    assert [n for n in ("static", "refreshed-sync-every40", "static+positive-aware", "in-batch")
            if bench.denoising(n)] == []
    assert all(map(bench.denoising, ("static+denoised", "refreshed+denoised-sync", "static+denoised+refill")))


def test_curve_every_minus_one_leaves_dev_out_of_the_loop(bench, tmp_path):
    import argparse

    data = _beir(tmp_path / "set", 4)
    args = dict(max_doc_length=96, max_seq_length=None, steps=8, batch_size=2, every=4, ce_steps=1, ce_loss="bce",
                ce_lr=1e-5, denoise_margin=0.0, denoise_fused=True, seed=0, rescore_candidates=None)
    for curve, dev, every in ((-1, None, 0), (0, "dev", 0), (4, "dev", 4)):
        job = bench._job(argparse.Namespace(**args, curve_every=curve), data, tmp_path / "out", "static", None)
        assert (job.data.dev_split, job.train.eval_every) == (dev, every)
        assert job.refresh.cross_encoder is None and job.mining.candidates_per_query == 9
    job = bench._job(argparse.Namespace(**{**args, "rescore_candidates": 3}, curve_every=0), data, tmp_path / "out",
                     "static+denoised+refill", None)
    assert job.mining.rescore_candidates == 9  # the run's own setting wins
