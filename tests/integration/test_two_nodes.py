"""Two Ray nodes on this machine: a head (``head`` resource) and a worker node (``trainer``), both
on 127.0.0.1 with token auth. A sync-refresh train job puts its workers on the worker node and
the refresher on the head, checks up front that both nodes see its storage and data, and every
socket of both nodes listens on loopback.

Ray's ``ray start --address`` refuses to join a loopback-only head (the switch that keeps Ray
on 127.0.0.1 also marks it single-node, see ``embedray/cluster/runtime.py``), so the nodes are
started with Ray's own multi-node harness, ``ray.cluster_utils.Cluster``: the same raylet and
GCS processes, each node with its own resources and ports.
"""
import json
import os
import shutil
import tempfile

import psutil
import pytest

from .conftest import sync_refresh_job
from .test_loopback import _tree, assert_loopback_only, describe, listening

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    from embedray.cluster.runtime import OFFLINE_ENV, _loopback_only, _token_auth_on, ensure_auth_token

    ensure_auth_token(announce=False)
    _token_auth_on()
    short = tempfile.mkdtemp(prefix="er-", dir="/tmp")  # Ray's socket paths must stay short
    with _loopback_only():
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "resources": {"head": 1}, "node_ip_address": "127.0.0.1", "temp_dir": short,
            "include_dashboard": False})
        worker = cluster.add_node(num_cpus=2, resources={"trainer": 2}, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, runtime_env={"env_vars": dict(OFFLINE_ENV)}, log_to_driver=False)
    try:
        yield {"head": cluster.head_node.node_id, "worker": worker.node_id}
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(short, ignore_errors=True)


def test_workers_on_the_worker_node_refresher_on_the_head(two_nodes, topic_beir, tmp_path, capfd):
    import ray

    from embedray.cluster.train import run_training

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    job = sync_refresh_job(topic_beir, tmp_path, "two-nodes", train={"max_steps": 6, "checkpoint_every": 3},
                           cluster={"resources_per_worker": {"trainer": 1}}, refresh={"resources": {"head": 1}})
    summary = run_training(job)
    assert summary["steps"] == 6
    out = capfd.readouterr().out
    assert "[embedray] all 2 nodes see the run's storage_path and data" in out
    where = json.loads((tmp_path / "two-nodes" / "placement.json").read_text())
    assert where["worker-0"]["node_id"] == where["worker-1"]["node_id"] == two_nodes["worker"]
    assert where["refresher"]["node_id"] == two_nodes["head"] != two_nodes["worker"]
    assert all(p["node_ip"] == "127.0.0.1" for p in where.values())

    sockets = listening(_tree([psutil.Process(os.getpid())])[1:])  # the nodes' processes, not pytest's
    print(f"\ntwo nodes: {len(sockets)} listening sockets\n{describe(sockets)}")
    assert {"gcs_server", "raylet"} <= {name for _, name, _, _ in sockets}
    assert sum(name == "raylet" for _, name, _, _ in sockets) >= 2  # one raylet per node
    assert_loopback_only(sockets)


def test_each_node_names_the_paths_it_cannot_see(two_nodes, topic_beir, tmp_path):
    """The probe runs on each node as a Ray task pinned there and reports, per node, a path it
    cannot open (both nodes share this machine's disk, so the missing file is missing on both)."""
    from embedray.cluster import shared

    job = sync_refresh_job(topic_beir, tmp_path, "missing")
    job.data.train_pairs = str(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError) as e:
        shared.check_shared(job)
    msg = str(e.value)
    assert "on all 2 nodes" in msg and "…): cluster.storage_path" not in msg  # the storage is shared
    for node in two_nodes.values():
        assert f"({node[:8]}…): data.train_pairs: {tmp_path / 'missing.jsonl'} does not exist here" in msg
