"""bench/gpu_recipe.py's bookkeeping: the small-size overrides fit the GPU recipe's schema, nvidia-smi's
samples are parsed and counted in the stage that was running, and without a GPU it says so."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from embedray.config import load_config
from embedray.pipeline.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
GPU_YAML = ROOT / "jobs" / "configs" / "gpu.yaml"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu_recipe", ROOT / "bench" / "gpu_recipe.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize("finetune", [None, "qlora"])
def test_the_small_overrides_load_into_the_gpu_recipe(bench, tmp_path, finetune):
    recipe = yaml.safe_load(GPU_YAML.read_text())
    overrides = bench.small_overrides(recipe, gpus=1, cpus=16, docs=5000, steps=300, teacher="minilm-l6",
                                      finetune=finetune)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_config(PipelineConfig, GPU_YAML, [f"output_dir={tmp_path}", *overrides])
    assert cfg.teacher.train.max_steps == cfg.student.train.max_steps == 300
    assert cfg.refresh.every == 100 and cfg.teacher.tasks is None
    assert cfg.cluster.num_workers == 1 and cfg.cluster.use_gpu in (True, "auto")
    assert cfg.prepare.source == "debian" and cfg.prepare.debian_max_docs == 5000
    assert cfg.pretrain is not None and cfg.pretrain.train.max_steps == 75
    assert cfg.teacher.model.name_or_path == cfg.cross_encoder.base_model == "minilm-l6"
    assert cfg.teacher.model.finetune == (finetune or "full")
    assert cfg.mining.index_factory == "IVF125,Flat"  # ~40 training points per list


def test_a_recipe_without_pretraining_gets_none_and_a_beir_folder_replaces_the_build(bench, tmp_path):
    recipe = yaml.safe_load((ROOT / "jobs" / "configs" / "tiny-test.yaml").read_text())
    overrides = bench.small_overrides(recipe, gpus=0, cpus=2, docs=40, steps=6, data=str(tmp_path))
    assert not any(o.startswith("pretrain.") for o in overrides)
    cfg = load_config(PipelineConfig, ROOT / "jobs" / "configs" / "tiny-test.yaml", overrides)
    assert cfg.pretrain is None and cfg.prepare.source == "beir" and cfg.data.path == str(tmp_path.resolve())
    assert cfg.cluster.num_workers == 1 and cfg.cluster.cpus_per_worker == 1


def test_nvidia_smi_lines(bench):
    assert bench.parse_smi_line("0, 87, 10240\n") == (0, 87.0, 10240.0)
    assert bench.parse_smi_line("3, [N/A], 512") is None
    assert bench.parse_smi_line("Failed to initialize NVML") is None


def _stage(run: Path, name: str, seconds: float, end: float) -> None:
    marker = run / "stages" / f"{name}.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"stage": name, "seconds": seconds}))
    os.utime(marker, (end, end))


def test_samples_count_in_the_stage_that_ran_and_the_busiest_gpu_speaks(bench, tmp_path):
    _stage(tmp_path, "teacher", 10.0, 1000.0)   # 990..1000
    _stage(tmp_path, "prepare", 5.0, 985.0)     # 980..985
    _stage(tmp_path, "evaluate", 2.0, 1010.0)   # 1008..1010: no samples
    samples = [(981.0, 0, 0.0, 100.0), (984.0, 0, 10.0, 200.0),
               (991.0, 0, 90.0, 5000.0), (995.0, 0, 70.0, 6000.0), (991.0, 1, 10.0, 7000.0),
               (987.0, 0, 99.0, 9999.0)]  # between stages: in none
    windows = bench.stage_windows(tmp_path)
    assert list(windows) == ["prepare", "teacher", "evaluate"]  # in the order they ran
    assert windows["teacher"] == pytest.approx((990.0, 1000.0))
    rows = bench.per_stage(windows, samples)
    assert rows["prepare"] == {"seconds": 5.0, "gpu_util_mean": 5.0, "gpu_util_max": 10.0,
                               "gpu_mem_max_mib": 200.0, "samples": 2}
    assert rows["teacher"]["gpu_util_mean"] == 80.0 and rows["teacher"]["gpu_util_max"] == 90.0
    assert rows["teacher"]["gpu_mem_max_mib"] == 7000.0 and rows["teacher"]["samples"] == 3
    assert rows["evaluate"]["gpu_util_mean"] is None and rows["evaluate"]["samples"] == 0


def test_without_a_gpu_it_stops_and_says_why(bench, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # as on a machine without one
    assert bench.main([]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_the_sampler_reads_nvidia_smi_until_it_is_done(bench, tmp_path, monkeypatch):
    """A stand-in ``nvidia-smi`` on PATH (two GPUs, a line each per tick): the sampler stamps
    what it prints and stops it on exit."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nwhile true; do echo '0, 40, 1000'; echo '1, [N/A], 0'; sleep 0.02; done\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    import time

    t0 = time.time()
    with bench.GpuSampler(every_ms=20) as sampler:
        time.sleep(0.5)
    assert sampler.missing is None and sampler._proc.poll() is not None
    assert len(sampler.samples) >= 5
    assert all(gpu == 0 and util == 40.0 and mem == 1000.0 and t0 <= t <= time.time()
               for t, gpu, util, mem in sampler.samples)
