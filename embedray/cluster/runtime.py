"""Connecting to Ray: a running cluster (``RAY_ADDRESS`` / ``ray job submit``) or a local one
pinned to 127.0.0.1, with the offline-model environment propagated to every worker."""
from __future__ import annotations

import os

import ray

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_DATASETS_OFFLINE": "1"}


def ensure_ray(num_cpus: int | None = None) -> None:
    """``ray.init`` once: joins ``RAY_ADDRESS`` when set, else starts a local instance on 127.0.0.1."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    if ray.is_initialized():
        return
    env = {"env_vars": dict(OFFLINE_ENV)}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=env, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=env,
                 _node_ip_address="127.0.0.1")
