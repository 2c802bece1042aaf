"""``embedray pipeline RECIPE [key=value ...]``: the end-to-end job on Ray — baseline →
cross-encoder → teacher (refreshed negatives) → student → evaluation → export → report."""
from __future__ import annotations

import argparse

from embedray.cli.train import add_job_arguments, localize_data
from embedray.cluster.shared import check_output_kept
from embedray.config import load_config
from embedray.pipeline.config import PipelineConfig

HELP = "the end-to-end job: baseline → cross-encoder → teacher → student → report"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return add_job_arguments(p)


def run(args: argparse.Namespace) -> int:
    from embedray.cluster.train import RayRuntime  # ray: only when the job runs
    from embedray.pipeline.stages import Pipeline, say

    cfg = load_config(PipelineConfig, args.config, args.overrides)
    check_output_kept("output_dir", str(cfg.output_dir))
    localize_data(cfg, cfg.output_dir)
    report = Pipeline(cfg, RayRuntime()).run_all()
    say(f"report: {report['paths']['report_md']}")
    say(f"model:  {report['paths']['model']}   (embedray serve {report['paths']['model']})")
    return 0
