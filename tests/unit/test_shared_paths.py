"""A multi-node run checks up front that every node sees the driver's storage and data."""
import pytest

from embedray.cluster import shared
from embedray.config import build_config
from embedray.pipeline.config import TrainJobConfig


def _job(tmp_path, **data):
    corpus = tmp_path / "beir"
    corpus.mkdir(exist_ok=True)
    (corpus / "corpus.jsonl").write_text("{}\n")
    return build_config(TrainJobConfig, {
        "data": {"path": str(corpus), **data}, "model": {"name_or_path": "tiny-bert"},
        "cluster": {"storage_path": str(tmp_path / "runs")}})


NODES = [{"NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1", "Alive": True},
         {"NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2", "Alive": True},
         {"NodeID": "c" * 56, "NodeManagerAddress": "10.0.0.3", "Alive": False}]


def test_one_node_needs_no_check(tmp_path):
    assert shared.check_shared(_job(tmp_path), nodes=NODES[:1]) == 1
    assert not (tmp_path / "runs").exists()


def test_every_node_sees_the_same_storage(tmp_path):
    seen = []

    def run_probe(node, storage, token, paths):
        seen.append(node)
        return shared.probe(storage, token, paths)  # the same filesystem everywhere

    assert shared.check_shared(_job(tmp_path), nodes=NODES, run_probe=run_probe) == 2
    assert seen == [NODES[0]["NodeID"], NODES[1]["NodeID"]]  # the dead node is not asked
    assert not (tmp_path / "runs" / shared.PROBE_FILE).exists()  # the probe file is removed


def test_a_node_with_its_own_local_folder_is_named(tmp_path):
    local = tmp_path / "node-b-disk"  # what node b has at the same path: its own, older folder
    local.mkdir()
    (local / shared.PROBE_FILE).write_text("0" * 32)
    job = _job(tmp_path, train_pairs=str(tmp_path / "pairs.jsonl"))
    (tmp_path / "pairs.jsonl").write_text("{}\n")

    def run_probe(node, storage, token, paths):
        if node == NODES[0]["NodeID"]:
            return shared.probe(storage, token, paths)
        return shared.probe(str(local), token, {**paths, "data.train_pairs": str(local / "pairs.jsonl")})

    with pytest.raises(ValueError) as e:
        shared.check_shared(job, nodes=NODES, run_probe=run_probe)
    msg = str(e.value)
    assert "must name the same files on all 2 nodes" in msg
    assert "node 10.0.0.2 (bbbbbbbb…): cluster.storage_path:" in msg and "another one" in msg
    assert f"node 10.0.0.2 (bbbbbbbb…): data.train_pairs: {local / 'pairs.jsonl'} does not exist here" in msg
    assert "10.0.0.1" not in msg and "NFS" in msg


def test_paths_to_share_lists_what_workers_read(tmp_path):
    job = _job(tmp_path, train_pairs=str(tmp_path / "pairs.jsonl"))
    paths = shared.paths_to_share(job)
    assert paths == {"data.path": str(tmp_path / "beir"), "data.train_pairs": str(tmp_path / "pairs.jsonl")}
    assert "model.name_or_path" not in paths  # a bundled model resolves on each node
