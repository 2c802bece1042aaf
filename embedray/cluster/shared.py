"""What every node of a multi-node run must see, checked before any stage starts.

Training workers and the refresher may run on any node; they read the data (corpus, queries,
pairs) and the model folders by path, and they write checkpoints, pools and indexes under
``cluster.storage_path``, which the job driver reads back. So these paths must name the same
files on every node: one filesystem mounted at the same path everywhere (NFS, a shared disk, a
FUSE mount of a bucket). A folder of the same name on each node's local disk would let the run
start and then lose or mix files, so the driver writes a token file under ``storage_path`` and a
zero-CPU task pinned to each node must read the same token back.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from embedray.atomic import write_text_atomic

PROBE_FILE = ".embedray-shared-probe"
#: Ray unpacks a job's ``--working-dir`` into ``…/runtime_resources/working_dir_files/_ray_pkg_<hash>``.
RAY_COPY_PARENT, RAY_COPY_PREFIX = "working_dir_files", "_ray_pkg_"
#: Longest the per-node probe tasks may take (they need no CPU, so a busy node still runs them).
PROBE_TIMEOUT_S = 120.0


def ray_job_copy(cwd: str | Path | None = None) -> Path | None:
    """The folder of Ray's copy of a job's ``--working-dir`` that ``cwd`` lies in, else ``None``."""
    here = Path(cwd or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if folder.name.startswith(RAY_COPY_PREFIX) and folder.parent.name == RAY_COPY_PARENT:
            return folder
    return None


def check_output_kept(setting: str, value: str, cwd: str | Path | None = None) -> None:
    """Raise ``ValueError`` when output ``value`` would land in Ray's copy of the job's working
    directory: Ray unpacks ``ray job submit --working-dir .`` into a temporary folder of its own and
    runs the driver there, so a relative ``runs`` would put the run's results (and the checkpoints
    a re-submission resumes from) where the user never finds them and Ray deletes them."""
    if "://" in value:
        return
    copy = ray_job_copy(Path(cwd or os.getcwd()) / Path(value).expanduser())
    if copy is not None:
        raise ValueError(
            f"{setting}: {value!r} lies in Ray's temporary copy of the job's working directory ({copy}), "
            f"so the run's results would be lost with it: give an absolute path, e.g. {setting}=$PWD/{value} "
            "on the `ray job submit` line (a folder every node shares, on a cluster)")


def paths_to_share(job) -> dict[str, str]:
    """``{setting: path}`` of what the job's workers and refresher read by path."""
    out: dict[str, str] = {}
    datas = [(f"tasks[{t.name}].data", t.data) for t in job.tasks] if job.tasks else [("data", job.data)]
    for name, data in datas:
        out[f"{name}.path"] = data.path
        if data.train_pairs:
            out[f"{name}.train_pairs"] = data.train_pairs
        if data.train_labels:
            out[f"{name}.train_labels"] = data.train_labels
    for name, value in [("model.name_or_path", job.model.name_or_path), ("distill.teacher", job.distill.teacher),
                        ("refresh.cross_encoder", job.refresh.cross_encoder)]:
        if value and os.path.isabs(value):  # a bundled name resolves inside each node's installation
            out[name] = value
    return out


def probe(storage: str, token: str, paths: dict[str, str]) -> dict[str, str]:
    """On one node: ``{setting: problem}`` for each path it cannot see as the driver does."""
    problems = {}
    try:
        seen = (Path(storage) / PROBE_FILE).read_text()
    except OSError as e:
        seen = f"unreadable ({e.strerror})"
    if seen != token:
        problems["cluster.storage_path"] = (f"{storage} is not the driver's folder here (its probe file is "
                                            f"{'another one' if len(seen) == len(token) else seen})")
    for name, path in paths.items():
        if not os.path.exists(path):
            problems[name] = f"{path} does not exist here"
    return problems


def check_shared(job, nodes: list[dict] | None = None,
                 run_probe: Callable[[str, str, str, dict[str, str]], dict[str, str]] | None = None) -> int:
    """Raise ``ValueError`` naming each node and setting whose path is not shared; return the
    number of alive nodes. One node needs no check.

    Args:
        job: the train job, its paths already absolute.
        nodes: ``ray.nodes()`` (fetched when ``None``).
        run_probe: ``(node_id, storage, token, paths) -> problems``; default: a zero-CPU Ray task
            pinned to that node running :func:`probe`.
    """
    import ray

    alive = [n for n in (ray.nodes() if nodes is None else nodes) if n.get("Alive")]
    if len(alive) < 2:
        return len(alive)
    storage = job.cluster.storage_path
    token = secrets.token_hex(16)
    Path(storage).mkdir(parents=True, exist_ok=True)
    write_text_atomic(token, Path(storage) / PROBE_FILE)
    paths = paths_to_share(job)
    try:
        found = _run_probes(alive, storage, token, paths, run_probe)
    finally:
        (Path(storage) / PROBE_FILE).unlink(missing_ok=True)
    lines = [f"node {n.get('NodeManagerAddress')} ({n['NodeID'][:8]}…): {setting}: {problem}"
             for n in alive for setting, problem in found[n["NodeID"]].items()]
    if lines:
        raise ValueError(
            f"this run's paths must name the same files on all {len(alive)} nodes of the Ray cluster:\n  "
            + "\n  ".join(lines)
            + "\n  (put cluster.storage_path and the data on one filesystem mounted at the same path on every "
              "node, e.g. NFS; see the README, 'More than one node')")
    return len(alive)


def _run_probes(alive, storage, token, paths, run_probe) -> dict[str, dict[str, str]]:
    import ray

    if run_probe is None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(num_cpus=0)(probe)
        refs = {n["NodeID"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(storage, token, paths) for n in alive}
        found = dict(zip(refs, ray.get(list(refs.values()), timeout=PROBE_TIMEOUT_S)))
    else:
        found = {n["NodeID"]: run_probe(n["NodeID"], storage, token, paths) for n in alive}
    return found
