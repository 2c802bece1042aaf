"""The GPU recipe at a small size on this machine's GPUs: the time of each stage and how busy the GPUs were.

Runs ``jobs/configs/gpu.yaml`` through the pipeline, as ``ray job submit -- python
jobs/pipeline.py`` does (a local Ray on 127.0.0.1 unless ``RAY_ADDRESS`` is set), with the overrides
of :func:`small_overrides`: a Debian build of ``--docs`` documents (or the BEIR folder ``--data``),
a few hundred steps per training stage, one training worker per GPU, the run in ``--output-dir``.
``--teacher`` replaces mpnet-base (teacher and cross-encoder) where its packages are not installed;
``--finetune qlora`` trains the teacher with QLoRA (bitsandbytes), refresh and all.

Meanwhile ``nvidia-smi`` reports every GPU's utilisation and memory every ``--sample-ms``; each
sample is counted in the stage that was running when it was taken (a stage's window: from its
start to its ``stages/<stage>.json``, the pipeline's own record of its seconds).

Printed: a table, then one line per stage, ``stage <name> seconds <s> gpu_util_mean <pct>
gpu_util_max <pct> gpu_mem_max_mib <MiB>`` (the busiest GPU's), and the report's test nDCG@10
per model. Without a CUDA GPU it stops at once and says so (``--allow-cpu`` runs the same
bookkeeping without GPU figures, e.g. with ``--config jobs/configs/tiny-test.yaml``).

Run:  python bench/gpu_recipe.py [--docs 5000] [--teacher minilm-l6] [--finetune qlora] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMI_QUERY = ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits"]


def small_overrides(recipe: dict, gpus: int, cpus: int, docs: int, steps: int, data: str | None = None,
                    teacher: str | None = None, finetune: str | None = None) -> list[str]:
    """``key=value`` overrides that shrink ``recipe`` (``gpu.yaml`` as loaded from YAML) to minutes
    on ``gpus`` GPUs and ``cpus`` cores.

    The recipe's shape stays: its pretraining (where it has one), a refreshed and denoised teacher,
    distillation, the evaluation; its extra teacher tasks (SciFact and the Debian sections on
    ``/mnt/shared``) go.
    """
    every = max(steps // 3, 1)
    workers = max(gpus, 1)
    out = []
    if recipe.get("pretrain"):
        out += [f"pretrain.max_texts={docs}", f"pretrain.train.max_steps={max(steps // 4, 1)}",
                "pretrain.train.batch_size=256", "pretrain.train.mini_batch_size=64",
                f"pretrain.train.checkpoint_every={max(steps // 4, 1)}"]
    out += [f"teacher.train.max_steps={steps}", f"teacher.train.checkpoint_every={every}",
           f"teacher.train.eval_every={every}", "teacher.tasks=null",
           # an IVF index wants ~40 training points per list
           f"mining.index_factory=IVF{max(min(docs // 40, 1024), 1)},Flat",
           f"cross_encoder.max_steps={every}", f"refresh.every={every}",
           f"student.train.max_steps={steps}", f"student.train.checkpoint_every={every}",
           f"cluster.num_workers={workers}", f"cluster.cpus_per_worker={max(cpus // (workers + 1), 1)}"]
    if data:
        out += ["prepare.source=beir", f"data.path={Path(data).resolve()}"]
    else:
        out += [f"prepare.debian_max_docs={docs}", f"prepare.debian_max_queries={max(docs // 2, 10)}"]
    if teacher:
        out += [f"teacher.model.name_or_path={teacher}", f"cross_encoder.base_model={teacher}"]
    if finetune:
        out.append(f"teacher.model.finetune={finetune}")
    return out


def parse_smi_line(line: str) -> tuple[int, float, float] | None:
    """``"0, 87, 10240"`` → ``(0, 87.0, 10240.0)`` (GPU index, utilisation %, memory MiB); None
    for a line that is not a sample (``[N/A]``, a warning)."""
    parts = [p.strip() for p in line.split(",")]
    try:
        return int(parts[0]), float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        return None


@dataclass
class GpuSampler:
    """``nvidia-smi -lms`` in the background; each sample stamped with this process's wall clock."""

    every_ms: int = 500
    samples: list[tuple[float, int, float, float]] = field(default_factory=list)
    missing: str | None = None

    def __enter__(self) -> "GpuSampler":
        if shutil.which("nvidia-smi") is None:
            self.missing = "nvidia-smi is not on PATH"
            return self
        self._proc = subprocess.Popen([*SMI_QUERY, f"-lms={self.every_ms}"], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            if (s := parse_smi_line(line)) is not None:
                self.samples.append((time.time(), *s))

    def __exit__(self, *exc) -> None:
        if self.missing is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._reader.join(timeout=10)


def stage_windows(run: Path) -> dict[str, tuple[float, float]]:
    """``{stage: (start, end)}`` in wall-clock seconds from the run's ``stages/<stage>.json``: its
    time of writing is the end, its ``seconds`` the length."""
    out = {}
    for marker in (run / "stages").glob("*.json"):
        seconds = json.loads(marker.read_text()).get("seconds")
        if seconds is not None:
            end = marker.stat().st_mtime
            out[marker.stem] = (end - float(seconds), end)
    return dict(sorted(out.items(), key=lambda kv: kv[1][0]))


def per_stage(windows: dict[str, tuple[float, float]], samples) -> dict[str, dict]:
    """Each stage's seconds and, over the samples taken in its window, the busiest GPU's mean and
    peak utilisation and its peak memory (``None`` where no sample fell in it)."""
    out = {}
    for stage, (start, end) in windows.items():
        by_gpu: dict[int, list[tuple[float, float]]] = {}
        for t, gpu, util, mem in samples:
            if start <= t <= end:
                by_gpu.setdefault(gpu, []).append((util, mem))
        row = {"seconds": round(end - start, 1), "gpu_util_mean": None, "gpu_util_max": None,
               "gpu_mem_max_mib": None, "samples": sum(len(v) for v in by_gpu.values())}
        if by_gpu:
            busiest = max(by_gpu.values(), key=lambda v: sum(u for u, _ in v) / len(v))
            row.update(gpu_util_mean=round(sum(u for u, _ in busiest) / len(busiest), 1),
                       gpu_util_max=max(u for u, _ in busiest),
                       gpu_mem_max_mib=max(m for v in by_gpu.values() for _, m in v))
        out[stage] = row
    return out


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "gpu.yaml"))
    p.add_argument("--docs", type=int, default=5000, help="Debian documents (and texts to pretrain on)")
    p.add_argument("--data", help="a BEIR folder to train on instead of a Debian build")
    p.add_argument("--steps", type=int, default=300, help="teacher and student steps")
    p.add_argument("--teacher", help="teacher and cross-encoder base instead of the recipe's (e.g. minilm-l6)")
    p.add_argument("--finetune", choices=("full", "lora", "qlora"), help="the teacher's finetune mode")
    p.add_argument("--output-dir", help="where the run goes (default: a temporary folder, removed after)")
    p.add_argument("--sample-ms", type=int, default=500)
    p.add_argument("--allow-cpu", action="store_true", help="run without a CUDA GPU (no GPU figures)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("extra", nargs="*", help="more key=value overrides, applied last")
    a = p.parse_args(argv)

    import torch
    import yaml

    gpus = torch.cuda.device_count()
    if gpus == 0 and not a.allow_cpu:
        print("gpu_recipe: no CUDA GPU visible to torch (torch.cuda.device_count() == 0); this bench measures "
              "the GPU recipe, so it needs one (--allow-cpu runs its bookkeeping without GPU figures)",
              file=sys.stderr)
        return 2
    tmp = None if a.output_dir else tempfile.mkdtemp(prefix="embedray-gpu-recipe-")
    out_dir = Path(a.output_dir or tmp).resolve()
    name = "gpu-small"
    recipe = yaml.safe_load(Path(a.config).read_text())
    overrides = [f"name={name}", f"output_dir={out_dir}",
                 *small_overrides(recipe, gpus, os.cpu_count() or 1, a.docs, a.steps, a.data, a.teacher, a.finetune),
                 *a.extra]
    device = ", ".join(torch.cuda.get_device_name(i) for i in range(gpus)) or "no GPU"
    print(f"gpu_recipe: {Path(a.config).name} on {device}, {os.cpu_count()} CPUs; overrides:\n  "
          + "\n  ".join(overrides), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.time()
    try:
        with GpuSampler(a.sample_ms) as sampler:
            rc = subprocess.call([sys.executable, "-m", "embedray.cli", "pipeline", a.config, *overrides],
                                 cwd=ROOT, env=env)
        wall = time.time() - t0
        run = out_dir / name
        if rc != 0:
            print(f"gpu_recipe: the pipeline exited with {rc} after {wall:.0f} s (its output is above; the run "
                  f"is in {run})", file=sys.stderr)
            return rc
        stages = per_stage(stage_windows(run), sampler.samples)
        report = json.loads((run / "report.json").read_text())
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nGPU recipe at a small size: {a.steps} steps per training stage, {wall:.0f} s in all, {device}"
          + (f" (no GPU samples: {sampler.missing})" if sampler.missing else ""))
    print(f"  {'stage':<14}{'seconds':>9}{'GPU util mean':>15}{'max':>6}{'GPU MiB max':>13}")
    for stage, r in stages.items():
        print(f"  {stage:<14}{r['seconds']:>9.1f}{_fmt(r['gpu_util_mean']):>15}{_fmt(r['gpu_util_max']):>6}"
              f"{_fmt(r['gpu_mem_max_mib']):>13}")
    for stage, r in stages.items():
        print(f"stage {stage} seconds {r['seconds']} gpu_util_mean {_fmt(r['gpu_util_mean'])} "
              f"gpu_util_max {_fmt(r['gpu_util_max'])} gpu_mem_max_mib {_fmt(r['gpu_mem_max_mib'])}")
    for model, row in report["rows"].items():
        print(f"ndcg@10 {model.replace(' ', '_')} {row['ndcg@10']:.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": device, "gpus": gpus, "cpus": os.cpu_count(),
                                            "overrides": overrides, "wall_s": round(wall, 1), "stages": stages,
                                            "test_ndcg@10": {m: r["ndcg@10"] for m, r in report["rows"].items()},
                                            "gpu_samples": len(sampler.samples)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
