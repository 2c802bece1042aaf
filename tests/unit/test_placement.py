"""Resource requests of a Ray run: ``auto`` resolved against the cluster, shortfalls named up front."""
import json
import os
import subprocess
import sys

import pytest

from embedray.cluster import placement
from embedray.config import ConfigError, build_config
from embedray.pipeline.config import TrainJobConfig


def _job(**sections):
    base = {"data": {"path": "data/x"}, "model": {"name_or_path": "tiny-bert"},
            "cluster": {"num_workers": 2, "cpus_per_worker": 1.0}, "refresh": {"mode": "async", "num_cpus": 0.5}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return build_config(TrainJobConfig, base)


def test_auto_gpus_follow_the_cluster():
    cpu = placement.resolve(_job(), {"CPU": 8})
    assert (cpu.cluster.use_gpu, cpu.refresh.num_gpus) == (False, 0.0)
    two = placement.resolve(_job(), {"CPU": 8, "GPU": 2})  # a GPU per worker, none left for the refresher
    assert (two.cluster.use_gpu, two.refresh.num_gpus) == (True, 0.0)
    three = placement.resolve(_job(), {"CPU": 8, "GPU": 3})
    assert (three.cluster.use_gpu, three.refresh.num_gpus) == (True, 1.0)
    one = placement.resolve(_job(), {"CPU": 8, "GPU": 1})  # too few for the workers: the refresher takes it
    assert (one.cluster.use_gpu, one.refresh.num_gpus) == (False, 1.0)
    static = placement.resolve(_job(refresh={"mode": "static"}), {"CPU": 8, "GPU": 2})
    assert (static.cluster.use_gpu, static.refresh.num_gpus) == (True, 1.0)  # pool v1 first, alone on a GPU
    assert placement.resolve(_job(refresh={"mode": "static"}), {"CPU": 8}).refresh.num_gpus == 0.0
    forced = placement.resolve(_job(cluster={"use_gpu": False}, refresh={"num_gpus": 0.25}), {"GPU": 4})
    assert (forced.cluster.use_gpu, forced.refresh.num_gpus) == (False, 0.25)
    assert _job().cluster.use_gpu == "auto"  # resolve copies; the config itself is untouched


def test_requests_carry_cpus_gpus_and_custom_resources():
    job = placement.resolve(_job(cluster={"resources_per_worker": {"trainer": 1}},
                                 refresh={"resources": {"head": 1}}), {"CPU": 4, "GPU": 3})
    assert placement.worker_resources(job) == {"CPU": 1.0, "GPU": 1.0, "trainer": 1}
    assert placement.refresher_resources(job) == {"CPU": 0.5, "GPU": 1.0, "head": 1}


def test_a_ray_data_encoder_shares_the_refreshers_gpu():
    # The encoder's actors start while the refresher holds its GPU: they split it rather than wait for it.
    alone = placement.resolve(_job(), {"CPU": 8, "GPU": 3})
    assert placement.refresher_gpus(alone) == (1.0, 0.0)
    pooled = placement.resolve(_job(refresh={"ray_data_encode": True}), {"CPU": 8, "GPU": 3})
    assert placement.refresher_gpus(pooled) == (0.5, 0.5)
    assert placement.refresher_resources(pooled)["GPU"] == 1.0  # what check_fits counts: the two together
    shared = placement.resolve(_job(refresh={"ray_data_encode": True, "num_gpus": 0.5}), {"GPU": 2})
    assert placement.refresher_gpus(shared) == (0.25, 0.25)
    cpu = placement.resolve(_job(refresh={"ray_data_encode": True}), {"CPU": 8})
    assert placement.refresher_gpus(cpu) == (0.0, 0.0)


def test_a_ray_data_encoder_shares_the_refreshers_cpus():
    # The two together ask for refresh.num_cpus, what check_fits counts; alone, the actor has all of it.
    alone = placement.resolve(_job(refresh={"num_cpus": 1}), {"CPU": 8})
    assert placement.refresher_cpus(alone) == (1.0, 0.0)
    pooled = placement.resolve(_job(refresh={"num_cpus": 1, "ray_data_encode": True}), {"CPU": 8})
    assert placement.refresher_cpus(pooled) == (0.5, 0.5)
    assert placement.refresher_resources(pooled)["CPU"] == sum(placement.refresher_cpus(pooled))


def test_shortfalls_are_named_with_their_settings():
    have = {"CPU": 2, "GPU": 1, "trainer": 1}
    placement.check_fits(placement.resolve(_job(cluster={"cpus_per_worker": 0.75}), have), have)
    with pytest.raises(ValueError) as e:
        job = _job(cluster={"use_gpu": True, "resources_per_worker": {"trainer": 1}}, refresh={"resources": {"head": 1}})
        placement.check_fits(placement.resolve(job, have), have)
    msg = str(e.value)
    assert "CPU: this run needs 2.5 (cluster.num_workers 2 × cluster.cpus_per_worker 1 + refresh.num_cpus 0.5)" in msg
    assert "GPU: this run needs 2 (cluster.num_workers 2 × cluster.use_gpu) but the Ray cluster has 1" in msg
    assert "trainer: this run needs 2" in msg and "head: this run needs 1" in msg and "has 0" in msg
    assert "ray start --resources '{\"head\": N}'" in msg
    off = _job(refresh={"mode": "off", "num_cpus": 5})
    placement.check_fits(placement.resolve(off, {"CPU": 2}), {"CPU": 2})  # no refresher: its CPUs don't count
    # a static run's refresher mines pool v1 before the workers start: it only has to fit alone
    static = _job(refresh={"mode": "static", "num_cpus": 1.5, "resources": {"head": 1}})
    placement.check_fits(placement.resolve(static, {"CPU": 2, "head": 1}), {"CPU": 2, "head": 1})
    with pytest.raises(ValueError) as e:
        placement.check_fits(placement.resolve(static, {"CPU": 2}), {"CPU": 2})
    assert "head: this run needs 1 (refresh.resources.head 1) but the Ray cluster has 0" in str(e.value)
    with pytest.raises(ValueError, match=r"CPU: this run needs 3 \(refresh.num_cpus 3\)"):
        big = _job(refresh={"mode": "static", "num_cpus": 3}, cluster={"cpus_per_worker": 0.5})
        placement.check_fits(placement.resolve(big, {"CPU": 2}), {"CPU": 2})


@pytest.mark.parametrize("section,values,match", [
    ("cluster", {"resources_per_worker": {"GPU": 1}}, "GPU has its own setting"),
    ("cluster", {"resources_per_worker": {"trainer": -1}}, "trainer: must be >= 0"),
    ("refresh", {"resources": {"CPU": 1}}, "refresh.resources: CPU has its own setting"),
    ("refresh", {"num_gpus": -0.5}, "refresh.num_gpus must be >= 0"),
    ("cluster", {"collective_timeout_s": 5}, "cluster.collective_timeout_s must be >= 60 seconds, got 5"),
])
def test_bad_resource_settings(section, values, match):
    with pytest.raises(ConfigError, match=match):
        _job(**{section: values})


def test_reports_merge_into_placement_json(tmp_path):
    placement.record(tmp_path, "worker-0", {"node_ip": "10.0.0.2", "node_id": "abcdef0123", "gpu_ids": ["0"]})
    placement.record(tmp_path, "refresher", {"node_ip": "10.0.0.1", "node_id": "9876543210", "gpu_ids": []})
    merged = placement.collect(tmp_path)
    assert json.loads((tmp_path / "placement.json").read_text()) == merged
    assert placement.describe(merged) == ("refresher on 10.0.0.1 (node 98765432…); "
                                          "worker-0 on 10.0.0.2 (node abcdef01…, GPUs 0)")


_YIELD = r"""
import json, os, sys, threading
import torch
from embedray.cluster import placement

torch.set_num_threads(2)
torch.randn(256, 256) @ torch.randn(256, 256)  # OpenMP starts its worker threads at this priority
stop = threading.Event()
threading.Thread(target=stop.wait, daemon=True).start()
before = {t: os.getpriority(os.PRIO_PROCESS, t) for t in map(int, os.listdir("/proc/self/task"))}
after = placement.yield_cpu(sys.argv[1] if sys.argv[1] == "idle" else int(sys.argv[1]))
threads = {t: (os.getpriority(os.PRIO_PROCESS, t), os.sched_getscheduler(t) == os.SCHED_IDLE)
           for t in map(int, os.listdir("/proc/self/task"))}
print(json.dumps({"before": before, "threads": threads, "after": after}))
"""


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE") or not os.path.isdir("/proc/self/task"), reason="Linux only")
@pytest.mark.parametrize("niceness", ["4", "idle"])
def test_yield_cpu_lowers_every_thread(niceness):
    """``refresh.niceness`` reaches all of the refresher's threads, not only the caller's (Linux
    keeps a nice value per thread: ``os.nice`` alone leaves the OpenMP workers where they were).
    A child process: a priority lowered can't be raised back."""
    out = subprocess.run([sys.executable, "-c", _YIELD, niceness], capture_output=True, text=True, timeout=120,
                         check=True)
    got = json.loads(out.stdout)
    before = {int(t): n for t, n in got["before"].items()}
    assert len(before) >= 3  # main, an OpenMP worker, the Python thread
    threads = {int(t): v for t, v in got["threads"].items()}
    assert set(before) <= set(threads)
    for tid, base in before.items():
        nice, idle = threads[tid]
        if niceness == "idle":
            assert idle and nice == base
        else:
            assert nice == min(19, base + 4) and not idle
    assert got["after"] == ({"niceness": min(before.values()), "scheduler": "idle"} if niceness == "idle" else
                            {"niceness": min(19, min(before.values()) + 4), "scheduler": "normal"})


def test_niceness_setting():
    assert _job(refresh={"niceness": "idle"}).refresh.niceness == "idle"
    assert _job(refresh={"niceness": 19}).refresh.niceness == 19
    for bad in (-1, 20, "low"):
        with pytest.raises(ConfigError, match="niceness"):
            _job(refresh={"niceness": bad})
