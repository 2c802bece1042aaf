"""``embedray train RECIPE [key=value ...]``: one bi-encoder run on Ray Train (or ``--local``).
Re-running the same ``cluster.run_name`` resumes from its newest complete checkpoint."""
from __future__ import annotations

import argparse
import json

from embedray.cluster.shared import check_output_kept
from embedray.config import load_config
from embedray.pipeline.config import TrainJobConfig

HELP = "contrastive training on Ray Train (or --local)"
DESCRIPTION = ("Train a bi-encoder from a YAML recipe. Re-running the same cluster.run_name resumes from "
               "its newest complete checkpoint.")


def add_job_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The recipe and its dotted overrides (``train``, ``pipeline``)."""
    p.add_argument("config", help="YAML recipe (see jobs/configs/)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="dotted overrides, e.g. train.max_steps=50 model.name_or_path=tiny-bert")
    return p


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_job_arguments(p)
    p.add_argument("--local", action="store_true", help="run in this process without Ray (debugging)")
    return p


def localize_data(cfg, storage: str) -> None:
    """Point the config's data URIs (``s3://…``) at their mirrors under ``storage/.data``,
    which every node of a cluster shares (:mod:`embedray.data.remote`)."""
    from pathlib import Path

    from embedray.data.remote import MIRROR_DIR, localize

    for line in localize(cfg, Path(storage).expanduser() / MIRROR_DIR).lines():
        print(line, flush=True)


def run(args: argparse.Namespace) -> int:
    job = load_config(TrainJobConfig, args.config, args.overrides)
    check_output_kept("cluster.storage_path", str(job.cluster.storage_path))
    localize_data(job, job.cluster.storage_path)
    if args.local:
        from embedray.pipeline.runtime import LocalRuntime
        runtime = LocalRuntime()
    else:
        from embedray.cluster.train import RayRuntime  # ray: only for a cluster run
        runtime = RayRuntime()
    print(json.dumps(runtime.train(job), indent=2))
    return 0
