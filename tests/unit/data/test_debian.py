import argparse
import json
import shutil
from pathlib import Path

import pytest

from embedray.cli.data import add_arguments as add_data_debian_arguments
from embedray.cli.data import run as run_data_debian
from embedray.data import debian, load_beir
from embedray.data.debian import build_debian, find_translation_files, split_of, undo_debian_formatting
from embedray.data.flag import iter_flag_jsonl
from embedray.data.parquet import iter_pairs

LISTS = Path(__file__).resolve().parents[2] / "fixtures" / "debian"
SPLITS = ("train", "dev", "test")
USABLE = 26  # 31 packages - 1 empty description - 2 duplicate summary - 2 duplicate description


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("debian")
    stats = build_debian(out, lists_dir=LISTS)
    return out, stats


def _load(out):
    return {s: load_beir(out, s) for s in SPLITS}  # missing_docs="raise": every positive is in the corpus


def test_counts_and_drop_reasons(full):
    _, stats = full
    assert [p.split("_")[-1] for p in map(str, find_translation_files(LISTS))] == [
        "Translation-en.gz", "Translation-en"]  # the -de file is not read
    assert stats.entries_read == 34 and stats.repeated_entries == 2 and stats.packages == 31
    assert stats.dropped == {"empty description": 1, "duplicate summary": 2, "duplicate description": 2,
                             "entry without Package/Description-en": 1}
    assert stats.usable_pairs == USABLE == sum(stats.queries.values()) == stats.corpus
    assert "duplicate summary" in stats.summary() and "corpus: 26 docs" in stats.summary()


def test_formatting_undone_and_summary_not_in_doc(full):
    out, _ = full
    data = load_beir(out, "train")
    docs = data.corpus
    assert docs["aquaterm"].text == (
        "Aquaterm is a fast terminal emulator that draws text with OpenGL. It supports ligatures, "
        "true colour and scrollback search.\nFeatures:\n * split panes\n * URL detection\n"
        "This package contains the main program.")
    assert docs["dunlin"].text == (
        "Dunlin fetches forecasts from public weather services and prints them as a compact table.\n"
        "Example:\n   $ dunlin --city Oslo\n   Mon  4°C  rain\nIt needs no API key.")
    assert docs["lapwing"].text.split("\n") == [
        "Lapwing converts Markdown documents into typeset PDF files through LaTeX.",
        "It supports tables, footnotes and citations."]
    assert docs["kestrel"].text.startswith("Kestrel resizes")  # the updates file (sorted first) wins
    assert all(d.title == "" for d in docs.values())
    for s in SPLITS:
        queries = load_beir(out, s).queries
        for qid, text in queries.items():
            assert text.casefold() not in docs[qid.removeprefix("q:")].text.casefold()
    dropped = {"ibis-empty", "fennel-cli", "fennel-tools", "gannet-dbg", "libgannet0"}
    assert not dropped & set(docs) and not {f"q:{n}" for n in dropped} & set(data.queries)


def test_undo_formatting_edge_cases():
    assert undo_debian_formatting([" .cabal file is", " generated.", " .", "  verbatim", " tail"]) == \
        ".cabal file is generated.\n verbatim\ntail"
    assert undo_debian_formatting([" .", " ."]) == ""


def test_splits_disjoint_and_follow_the_hash(full):
    out, stats = full
    data = _load(out)
    qids = {s: set(d.qrels) for s, d in data.items()}
    assert not (qids["train"] & qids["dev"] or qids["train"] & qids["test"] or qids["dev"] & qids["test"])
    assert sum(map(len, qids.values())) == USABLE
    for s, ids in qids.items():
        assert all(split_of(q.removeprefix("q:")) == s for q in ids)
        assert all(data[s].qrels[q] == {q.removeprefix("q:"): 1} for q in ids)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["queries"] == stats.queries and meta["seed"] == 0 and "sha1" in meta["split_rule"]


def test_train_files_match_train_qrels(full):
    out, _ = full
    train = load_beir(out, "train")
    pairs = list(iter_pairs(out / "train_pairs.jsonl", query_ids=train.queries, doc_ids=train.corpus))
    assert {(p.query_id, p.pos_id) for p in pairs} == {(q, d) for q, ds in train.qrels.items() for d in ds}
    flag = list(iter_flag_jsonl(out / "train.jsonl"))
    assert sorted((ex.query, ex.pos[0]) for ex in flag) == sorted(
        (train.queries[p.query_id], train.corpus[p.pos_id].text) for p in pairs)


def _files(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_deterministic_and_python_fallback_agrees(full, tmp_path, monkeypatch):
    out, _ = full
    build_debian(tmp_path / "again", lists_dir=LISTS)
    assert _files(tmp_path / "again") == _files(out)
    monkeypatch.setattr(debian, "APT_HELPER", str(tmp_path / "no-apt-helper"))  # gzip + plain in Python
    build_debian(tmp_path / "python", lists_dir=LISTS)
    assert _files(tmp_path / "python") == _files(out)


def test_max_sizes(tmp_path):
    stats = build_debian(tmp_path / "a", max_docs=15, max_queries=10, lists_dir=LISTS)
    data = _load(tmp_path / "a")
    quota = {"train": 8, "dev": 1, "test": 1}
    assert all(stats.queries[s] == len(data[s].qrels) == quota[s] for s in SPLITS)  # fixture has enough
    assert stats.corpus == len(data["test"].corpus) == 15
    chosen = {q: s for s, d in data.items() for q in d.qrels}
    assert {q.removeprefix("q:") for q in chosen} <= set(data["test"].corpus)  # all positives kept
    other = build_debian(tmp_path / "b", max_docs=15, max_queries=10, seed=1, lists_dir=LISTS)
    chosen_b = {q: s for s, d in _load(tmp_path / "b").items() for q in d.qrels}
    assert other.corpus == 15 and other.queries == stats.queries
    assert set(chosen_b) != set(chosen)  # the seed picks other queries ...
    assert all(chosen[q] == s for q, s in chosen_b.items() if q in chosen)  # ... but never moves one
    assert all(split_of(q.removeprefix("q:")) == s for q, s in chosen_b.items())
    with pytest.raises(ValueError, match="max_docs=3 is below"):
        build_debian(tmp_path / "c", max_docs=3, max_queries=10, lists_dir=LISTS)
    with pytest.raises(ValueError, match="max_queries must be a positive integer"):
        build_debian(tmp_path / "c", max_queries=0, lists_dir=LISTS)


def test_absent_lists_non_root_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setattr(debian, "_is_root", lambda: False)
    monkeypatch.setattr(debian, "_run", lambda cmd: pytest.fail("must not run apt-get"))
    with pytest.raises(FileNotFoundError, match=r"Run `sudo apt-get update -o Acquire::Languages=en -o "
                                                r"Dir::State::Lists="):
        build_debian(tmp_path / "out", lists_dir=tmp_path / "lists")


def test_absent_lists_as_root_runs_apt_get(tmp_path, monkeypatch, capsys):
    lists = tmp_path / "lists"
    lists.mkdir()
    calls = []

    def fake_apt_get_update(cmd):
        calls.append(cmd)
        for f in LISTS.iterdir():
            shutil.copy(f, lists / f.name)

    monkeypatch.setattr(debian, "_is_root", lambda: True)
    monkeypatch.setattr(debian, "_apt_get", lambda: "/usr/bin/apt-get")
    monkeypatch.setattr(debian, "_run", fake_apt_get_update)
    stats = build_debian(tmp_path / "out", lists_dir=lists)
    assert calls == [["/usr/bin/apt-get", "update", "-o", "Acquire::Languages=en",
                      "-o", f"Dir::State::Lists={lists.resolve()}"]]
    assert "running: apt-get update -o Acquire::Languages=en" in capsys.readouterr().err
    assert stats.usable_pairs == USABLE
    monkeypatch.setattr(debian, "_run", lambda cmd: None)  # apt-get fetched nothing
    with pytest.raises(FileNotFoundError, match="fetched no"):
        build_debian(tmp_path / "out2", lists_dir=tmp_path / "empty")


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_data_debian_arguments(parser)
    args = parser.parse_args([str(tmp_path / "out"), "--max-queries", "10", "--lists-dir", str(LISTS)])
    assert run_data_debian(args) == 0
    assert "queries: train" in capsys.readouterr().out
    args = parser.parse_args([str(tmp_path / "out"), "--max-docs", "2", "--max-queries", "10",
                              "--lists-dir", str(LISTS)])
    assert run_data_debian(args) == 1
    assert "error: max_docs=2" in capsys.readouterr().err


def test_split_queries_sets_the_size_of_named_splits(tmp_path):
    base = build_debian(tmp_path / "a", max_docs=15, max_queries=10, lists_dir=LISTS)
    bigger = build_debian(tmp_path / "b", max_docs=15, max_queries=10, split_queries={"test": 3},
                          lists_dir=LISTS)
    assert bigger.queries == {"train": 8, "dev": 1, "test": 3}
    a, b = _load(tmp_path / "a"), _load(tmp_path / "b")
    assert set(a["test"].qrels) < set(b["test"].qrels)  # the same first test queries, and more
    assert a["train"].qrels == b["train"].qrels and a["dev"].qrels == b["dev"].qrels
    assert all(split_of(q.removeprefix("q:")) == "test" for q in b["test"].qrels)
    assert json.loads((tmp_path / "b" / "dataset.json").read_text())["split_queries"] == {"test": 3}
    only = build_debian(tmp_path / "c", split_queries={"train": 4, "dev": 2, "test": 2}, lists_dir=LISTS)
    assert only.queries == {"train": 4, "dev": 2, "test": 2} and base.queries["train"] == 8
    with pytest.raises(ValueError, match="unknown split"):
        build_debian(tmp_path / "d", split_queries={"validation": 3}, lists_dir=LISTS)
    with pytest.raises(ValueError, match="split_queries.test must be a positive integer"):
        build_debian(tmp_path / "d", split_queries={"test": 0}, lists_dir=LISTS)


def test_cli_split_queries(tmp_path, capsys):
    from embedray.cli import main
    assert main(["data", "debian", str(tmp_path / "out"), "--max-docs", "15", "--max-queries", "10",
                 "--split-queries", "test=3,dev=2", "--lists-dir", str(LISTS)]) == 0
    assert "test 3" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "debian", str(tmp_path / "x"), "--split-queries", "test:3"])


def test_labels_are_each_documents_section_with_its_split(full):
    out, stats = full
    rows = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    corpus = {json.loads(line)["_id"] for line in (out / "corpus.jsonl").read_text().splitlines()}
    sections = debian.read_sections(debian.find_packages_files(LISTS))
    assert stats.labelled == len(rows) > 0 and {r["_id"] for r in rows} == corpus & set(sections)
    assert all(r["label"] == sections[r["_id"]] and r["split"] == split_of(r["_id"]) for r in rows)
    assert "/" not in "".join(sections.values())  # contrib/net → net
    assert sections["lapwing"] == "net" and sections["merlin-data"] == "games"
    assert f"labels: {stats.labelled} docs in {stats.sections} sections" in stats.summary()
