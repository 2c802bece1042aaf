"""Each stage asks Ray for what its config says: a local Ray with a fake GPU and custom resources
(``trainer`` for the training workers, ``head`` for the refresher); where each process ran is
read back from ``placement.json``, and a request the cluster cannot meet fails before Ray waits."""
import json

import pytest

from .conftest import sync_refresh_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_with_resources():
    import ray

    from embedray.cluster.runtime import init_local_ray

    # One "GPU" that is only a Ray resource on this CPU machine: Ray assigns it (CUDA_VISIBLE_DEVICES)
    # and torch, seeing no CUDA device, computes on the CPU.
    init_local_ray(num_cpus=2, num_gpus=1, resources={"trainer": 2, "head": 1})
    yield
    ray.shutdown()


def _job(beir, storage, name, **cluster):
    return sync_refresh_job(beir, storage, name, train={"max_steps": 6, "checkpoint_every": 6},
                            cluster={"resources_per_worker": {"trainer": 1}, **cluster},
                            refresh={"resources": {"head": 1}})


def test_workers_and_refresher_get_what_they_ask_for(ray_with_resources, topic_beir, tmp_path, capfd):
    from embedray.cluster.train import run_training

    summary = run_training(_job(topic_beir, tmp_path, "placed"))
    assert summary["steps"] == 6
    where = json.loads((tmp_path / "placed" / "placement.json").read_text())
    assert sorted(where) == ["pool-v1", "refresher", "worker-0", "worker-1"]
    # use_gpu auto: one GPU for two workers is too few, so the workers run without one and the
    # refresher's num_gpus auto takes it; pool v1 is mined there too, not in the driver
    assert where["refresher"]["gpu_ids"] == where["pool-v1"]["gpu_ids"] == ["0"]
    assert where["pool-v1"]["node_resources"]["head"] == 1
    # sync: the trainers wait for it, nothing to yield to
    assert where["refresher"]["niceness"] == where["worker-0"]["niceness"] == where["pool-v1"]["niceness"]
    assert where["worker-0"]["gpu_ids"] == where["worker-1"]["gpu_ids"] == []
    assert all({"trainer", "head"} <= set(p["node_resources"]) for p in where.values())
    out, err = capfd.readouterr()
    assert "[embedray] placement: pool-v1 on 127.0.0.1" in out and "; refresher on 127.0.0.1" in out
    # a local Ray has no dashboard: Ray Train's placement-group cleaner, asking its State API each
    # second, would print this all through the run (init_local_ray's worker setup hook drops it)
    assert "State API may be temporarily unavailable" not in out + err


def test_a_request_the_cluster_cannot_meet_fails_at_once(ray_with_resources, topic_beir, tmp_path):
    from embedray.cluster.train import run_training

    with pytest.raises(ValueError, match=r"fast: this run needs 2 \(cluster.num_workers 2 × "
                                         r"cluster.resources_per_worker.fast 1\) but the Ray cluster has 0"):
        run_training(_job(topic_beir, tmp_path, "unplaceable", resources_per_worker={"fast": 1}))
    with pytest.raises(ValueError, match=r"GPU: this run needs 2 \(cluster.num_workers 2 × cluster.use_gpu\) "
                                         r"but the Ray cluster has 1"):
        run_training(_job(topic_beir, tmp_path, "gpus", use_gpu=True))


def test_a_stage_task_gets_the_gpu_and_the_resources_it_asks_for(ray_with_resources, tmp_path, capfd):
    """The pipeline's encoding stages run as Ray tasks (``cluster.stage_*``): ``stage_gpus: auto``
    takes the cluster's GPU; a resource the cluster lacks is named before Ray waits."""
    from embedray.cluster import placement
    from embedray.cluster.train import run_stage_task
    from embedray.training.config import ClusterConfig

    got = run_stage_task("evaluate", placement.where, cluster=ClusterConfig(stage_resources={"head": 1}),
                         run_dir=tmp_path)
    assert got["gpu_ids"] == ["0"]
    assert json.loads((tmp_path / "placement.json").read_text())["evaluate"]["gpu_ids"] == ["0"]
    assert "[embedray] placement: evaluate on 127.0.0.1" in capfd.readouterr().out
    no_gpu = run_stage_task("baseline", placement.where, cluster=ClusterConfig(stage_gpus=0), run_dir=tmp_path)
    assert no_gpu["gpu_ids"] == []
    with pytest.raises(ValueError, match=r"fast: a stage task needs 1 \(cluster.stage_resources.fast\) but the "
                                         r"Ray cluster has 0"):
        run_stage_task("evaluate", placement.where, cluster=ClusterConfig(stage_resources={"fast": 1}),
                       run_dir=tmp_path)


def test_a_pipeline_names_what_the_cluster_can_not_place_before_any_stage(ray_with_resources, topic_beir,
                                                                         tmp_path, capsys):
    """A recipe for more GPUs than the cluster has stops before `prepare`, naming every training
    stage and the stage tasks, instead of after the stages before the first that needs them."""
    from pathlib import Path

    from embedray.cluster.train import RayRuntime
    from embedray.config import load_config
    from embedray.pipeline.config import PipelineConfig
    from embedray.pipeline.stages import Pipeline

    recipe = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny-test.yaml"
    cfg = load_config(PipelineConfig, str(recipe), [f"data.path={topic_beir}", f"output_dir={tmp_path}",
                                                    "cluster.use_gpu=true", "cluster.stage_gpus=2"])
    with pytest.raises(ValueError) as e:
        Pipeline(cfg, RayRuntime()).run_all()
    lines = str(e.value).splitlines()
    need = "GPU: this run needs 2 (cluster.num_workers 2 × cluster.use_gpu) but the Ray cluster has 1"
    assert lines[0] == "teacher: the Ray cluster cannot place this run:" and lines[1].strip() == need
    assert "student: the Ray cluster cannot place this run:" in lines and "pretrain" not in str(e.value)
    assert "GPU: a stage task needs 2 (cluster.stage_gpus) but the Ray cluster has 1" in str(e.value)
    assert not (tmp_path / "tiny" / "stages").exists() and "prepare: running" not in capsys.readouterr().out
