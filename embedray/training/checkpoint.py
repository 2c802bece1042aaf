"""Checkpoints that are complete or absent: files go to a staging folder, each rank writes a
manifest of its own files (with their sha256) last, everything is fsynced, and only then is the
folder renamed into place. A checkpoint is complete when the manifests of all ``world_size``
ranks are there and every file they list has its hash.

A checkpoint holds everything a resume needs: model, optimizer, scheduler, RNG states, the step
(which is also the data cursor, see batches.py), the negative-pool version and the steps at
which the run switched pools.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from embedray.atomic import fsync_path

LEGACY_MANIFEST = "manifest.json"  # one manifest by rank 0 (checkpoints written before per-rank manifests)
_NAME = re.compile(r"^checkpoint-(\d+)$")
_RANK_MANIFEST = re.compile(r"^manifest-rank(\d+)\.json$")


def manifest_name(rank: int) -> str:
    """File name of rank ``rank``'s manifest inside a checkpoint folder."""
    return f"manifest-rank{rank}.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_state(folder: Path, *, model_state: dict, optimizer_state: dict | None,
                scheduler_state: dict | None, trainer_state: dict, rank: int = 0) -> None:
    """Write one rank's share of a checkpoint into ``folder`` (rank 0 writes the model too),
    then that rank's manifest, each file fsynced before it and the folder after it."""
    folder.mkdir(parents=True, exist_ok=True)
    own = [f"rng_rank{rank}.pt"]
    # The CUDA generator of this rank's own GPU (the current device): a restarted worker group may
    # see another set of the node's GPUs, so the states of all of them could not be put back.
    torch.save({"torch": torch.get_rng_state(),
                "cuda_current": torch.cuda.get_rng_state() if torch.cuda.is_available() else None},
               folder / own[0])
    if rank == 0:
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()},
                  folder / "model.safetensors")
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler_state}, folder / "optimizer.pt")
        (folder / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        own += ["model.safetensors", "optimizer.pt", "trainer_state.json"]
    for name in own:
        fsync_path(folder / name)
    manifest = {"step": trainer_state["step"], "rank": rank, "world_size": int(trainer_state.get("world_size", 1)),
                "files": {n: _sha256(folder / n) for n in own}}
    (folder / manifest_name(rank)).write_text(json.dumps(manifest, indent=2))  # last: marks this rank complete
    fsync_path(folder / manifest_name(rank))
    fsync_path(folder)


def verify(folder: Path) -> str | None:
    """What is wrong with the checkpoint in ``folder`` (a missing rank's manifest, a file whose
    hash differs, ...), or None when it is complete."""
    folder = Path(folder)
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as e:
        return f"cannot list it ({e})"
    ranks = [n for n in names if _RANK_MANIFEST.match(n)]
    if not ranks:
        if LEGACY_MANIFEST in names:
            return _verify_files(folder, LEGACY_MANIFEST)
        return "no manifest (an unfinished write)"
    manifests = {}
    for name in ranks:
        try:
            manifests[int(_RANK_MANIFEST.match(name).group(1))] = json.loads((folder / name).read_text())
        except (OSError, ValueError) as e:
            return f"{name} is unreadable ({e})"
    sizes = sorted({str(m.get("world_size")) for m in manifests.values()})
    world = next(iter(manifests.values())).get("world_size")
    if len(sizes) != 1 or not isinstance(world, int):
        return f"the rank manifests disagree on world_size ({', '.join(sizes)})"
    missing = sorted(set(range(world)) - set(manifests))
    if missing:
        return f"the manifest of rank(s) {missing} of {world} is missing (a worker's files never arrived)"
    if len({m.get("step") for m in manifests.values()}) != 1:
        return "the rank manifests disagree on the step"
    for rank in sorted(manifests):
        if (problem := _verify_files(folder, manifest_name(rank))) is not None:
            return problem
    return None


def _verify_files(folder: Path, manifest: str) -> str | None:
    try:
        files = json.loads((folder / manifest).read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"{manifest} is unreadable ({e})"
    for name, digest in files.items():
        if not (folder / name).is_file():
            return f"{name} (listed in {manifest}) is missing"
        if _sha256(folder / name) != digest:
            return f"{name} does not match its hash in {manifest} (truncated or corrupt)"
    return None


def is_complete(folder: Path) -> bool:
    """True if the manifests of all ranks exist and every file they list has the right hash."""
    return verify(folder) is None


def read_state(folder: Path, rank: int = 0, *, world_size: int | None = None,
               seed: int | None = None) -> dict[str, Any]:
    """Load a complete checkpoint (tensors via safetensors / ``weights_only=True``).

    With ``world_size`` / ``seed`` (the resuming job's), a checkpoint written with others is
    refused: its batches, negatives and RNG streams belong to that layout and seed.
    """
    if (problem := verify(folder)) is not None:
        raise ValueError(f"{folder}: incomplete or corrupt checkpoint ({problem})")
    trainer_state = json.loads((folder / "trainer_state.json").read_text())
    check_resumable(folder, trainer_state, world_size=world_size, seed=seed)
    opt = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    rng_file = folder / f"rng_rank{rank}.pt"
    rng = torch.load(rng_file, map_location="cpu", weights_only=True) if rng_file.exists() else None
    return {"model": load_file(folder / "model.safetensors"), "optimizer": opt["optimizer"],
            "scheduler": opt["scheduler"], "rng": rng, "trainer_state": trainer_state, "path": str(folder)}


def check_resumable(folder: Path, trainer_state: dict, *, world_size: int | None, seed: int | None) -> None:
    """Raise ``ValueError`` when ``trainer_state`` was written by another number of workers or
    another seed than the resuming job's (a field the checkpoint lacks is not compared)."""
    saved = {"cluster.num_workers": trainer_state.get("world_size"), "train.seed": trainer_state.get("seed")}
    wanted = {"cluster.num_workers": world_size, "train.seed": seed}
    differ = [k for k in saved if saved[k] is not None and wanted[k] is not None and saved[k] != wanted[k]]
    if differ:
        was = " ".join(f"{k}={saved[k]}" for k in saved if saved[k] is not None)
        now = ", ".join(f"{k} {wanted[k]}" for k in differ)
        raise ValueError(
            f"{folder}: this checkpoint was written with {was}, but the run resuming it has {now}: an exact "
            f"resume needs the same workers and seed. Re-run with {' '.join(f'{k}={saved[k]}' for k in differ)}, "
            f"or start afresh under a new cluster.run_name (or delete the checkpoint-* folders in "
            f"{Path(folder).parent})")


def restore_rng(rng: dict | None) -> None:
    if rng:
        torch.set_rng_state(rng["torch"])
        if not torch.cuda.is_available():
            return
        if rng.get("cuda_current") is not None:
            torch.cuda.set_rng_state(rng["cuda_current"])
        elif rng.get("cuda") and len(rng["cuda"]) == torch.cuda.device_count():  # an older checkpoint's: every GPU's
            torch.cuda.set_rng_state_all(rng["cuda"])


def loadable_model_state(module: torch.nn.Module, state: dict) -> dict:
    """``state`` without what ``module.load_state_dict`` can't take back: a 4-bit (QLoRA) base
    layer saves its quantisation state beside its weight (``….weight.absmax``, ``….weight.quant_map``,
    ``….weight.quant_state.…``) but loads the packed weight alone, which holds the same values.
    Any other unknown key is left in, for the load to refuse."""
    own = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
    return {k: v for k, v in state.items()
            if k in own or not (".weight." in k and k.rsplit(".weight.", 1)[0] + ".weight" in own)}


def save_local(run_dir: Path, step: int, num_to_keep: int, **state) -> Path:
    """Stage ``run_dir/.checkpoint-N.tmp``, then rename to ``checkpoint-N``; prune old ones."""
    final = run_dir / f"checkpoint-{step:06d}"
    staging = run_dir / f".checkpoint-{step:06d}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    write_state(staging, **state)  # files and folder fsynced: the rename below never exposes a torn one
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    fsync_path(run_dir)
    for old in list_checkpoints(run_dir)[:-num_to_keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders of a run, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("checkpoint-*")
             if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_complete(run_dir: Path) -> Path | None:
    """The newest checkpoint whose manifests verify; a half-written or corrupt one is passed over."""
    for folder in reversed(list_checkpoints(run_dir)):
        if is_complete(folder):
            return folder
    return None
