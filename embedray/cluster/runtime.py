"""Connecting to Ray: a running cluster (``RAY_ADDRESS`` / ``ray job submit``) or a local one
that listens on 127.0.0.1 only, with token auth on and the offline-model environment
propagated to every worker.

Two Ray 2.60 behaviours this module works around (both read off Ray's source):

* **Loopback.** ``ray.init(_node_ip_address="127.0.0.1")`` and ``ray start --node-ip-address
  127.0.0.1`` replace the loopback address with the machine's routable one
  (``ray._private.services.resolve_ip_for_localhost``), and the GCS, raylet, core-worker,
  dashboard-agent, runtime-env-agent, metrics and client servers then bind every interface.
  Only when ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (``ray_constants.ENABLE_RAY_CLUSTER``)
  does Ray keep 127.0.0.1 as the node IP, and its C++ servers bind loopback when the node IP
  is 127.0.0.1. The same switch makes ``ray start --address`` refuse to join: a loopback-only
  head is a single-node cluster by construction. Clusters from ``cluster.yaml`` never set it.
* **Token file.** Ray's own ``ray get-auth-token --generate`` writes ``~/.ray/auth_token``
  with the process umask (0644 here); :func:`ensure_auth_token` writes it 0600, atomically.
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import ray

from embedray.atomic import write_text_atomic

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_DATASETS_OFFLINE": "1"}
#: Makes a local Ray keep 127.0.0.1 as its node IP, so that every server it starts binds loopback.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"


def token_path() -> Path:
    """Where Ray reads the auth token: ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    return Path(os.environ.get(TOKEN_PATH_ENV) or Path.home() / ".ray" / "auth_token").expanduser()


def ensure_auth_token(announce: bool = True) -> Path | None:
    """Make sure Ray has an auth token, creating one (mode 0600) when there is none.

    ``RAY_AUTH_TOKEN`` in the environment wins and nothing is written. Otherwise the token file
    (:func:`token_path`) is created with Ray's own generator when missing.

    Args:
        announce: print where a new token was written (to stderr).

    Returns:
        The token file, or ``None`` when the token comes from ``RAY_AUTH_TOKEN``.

    Raises:
        ValueError: the token file exists but is empty.
    """
    from ray._private.authentication.authentication_token_generator import (
        generate_new_authentication_token,
    )

    if os.environ.get(TOKEN_ENV, "").strip():
        return None
    path = token_path()
    if path.is_file():
        if not path.read_text().strip():
            raise ValueError(f"{path}: the Ray auth token file is empty; delete it (a new one is then "
                             f"created) or put the cluster's token in it")
        if path.stat().st_mode & 0o077 and announce:
            print(f"warning: {path} is readable by other users; `chmod 600 {path}`", file=sys.stderr)
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_text_atomic(generate_new_authentication_token(), path, mode=0o600)
    if announce:
        print(f"created a Ray auth token at {path} (mode 0600); every Ray client of this cluster needs it",
              file=sys.stderr)
    return path


def _token_auth_on() -> None:
    """Turn token auth on for this process and the Ray processes it starts."""
    from ray._raylet import Config

    if os.environ.get(AUTH_MODE_ENV) != "token":
        os.environ[AUTH_MODE_ENV] = "token"
        Config.initialize("")  # Ray caches its config at import; re-read RAY_AUTH_MODE (as ray.init does)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """While a local Ray starts: keep 127.0.0.1 as its node IP (see the module docstring).

    The switch is read once at import, so the imported constant is set too; both are put back
    once the local node is up (its processes have their environment by then).
    """
    from ray._private import ray_constants

    saved_env = {k: os.environ.get(k) for k in LOOPBACK_ENV}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(LOOPBACK_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: Ray Train's placement-group cleaner asks the State API, which the dashboard serves, whether the
#: train controller is alive; a local Ray runs without a dashboard, so every check fails and logs
#: this each second of a training run.
_NO_STATE_API = "State API may be temporarily unavailable"


def quiet_local_worker_logs() -> None:
    """``worker_process_setup_hook`` of a local Ray: drops the cleaner's "State API unavailable"
    warning (nothing else it logs), which a Ray without a dashboard would print every second."""
    import logging

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").addFilter(
        lambda record: _NO_STATE_API not in record.getMessage())


def init_local_ray(num_cpus: int | None = None, env_vars: dict[str, str] | None = None, **kwargs) -> None:
    """Start a local Ray instance on 127.0.0.1 only, token auth on, offline models in every worker.

    Args:
        num_cpus: CPUs the instance offers (``None``: all of the machine's).
        env_vars: extra environment for every worker (the offline-model variables are always set).
        **kwargs: passed on to ``ray.init`` (e.g. ``log_to_driver``, ``include_dashboard``).
    """
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    ensure_auth_token()
    _token_auth_on()
    kwargs.setdefault("include_dashboard", False)
    with _loopback_only():
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": {**OFFLINE_ENV, **(env_vars or {})},
                              "worker_process_setup_hook": f"{__name__}.quiet_local_worker_logs"}, **kwargs)


def is_loopback_address(address: str) -> bool:
    """Whether a Ray address (``host:port``, ``ray://host:port``) names this machine's loopback."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_ray(num_cpus: int | None = None) -> None:
    """``ray.init`` once: joins ``RAY_ADDRESS`` when set, else starts :func:`init_local_ray`."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        init_local_ray(num_cpus=num_cpus)
        return
    # Ray turns token auth on for an explicit address only when told; a token present says so.
    if AUTH_MODE_ENV not in os.environ and (os.environ.get(TOKEN_ENV) or token_path().is_file()):
        _token_auth_on()
    # A loopback head (scripts/ray-head.sh): without the switch Ray would dial 127.0.0.1 as the
    # machine's routable address, where nothing listens, and retry forever.
    joining = _loopback_only() if is_loopback_address(address) else contextlib.nullcontext()
    with joining:
        ray.init(address=address, runtime_env={"env_vars": dict(OFFLINE_ENV)}, log_to_driver=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m embedray.cluster.runtime token|env``: create the auth token if missing and
    print its path, or print the environment a loopback-only ``ray start`` needs (for scripts)."""
    parser = argparse.ArgumentParser(prog="python -m embedray.cluster.runtime")
    parser.add_argument("what", choices=["token", "env"])
    args = parser.parse_args(argv)
    if args.what == "token":
        print(ensure_auth_token() or f"${TOKEN_ENV}")
    else:
        print(" ".join(f"{k}={v}" for k, v in {**LOOPBACK_ENV, AUTH_MODE_ENV: "token", **OFFLINE_ENV}.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
