"""Checkpoints that are complete or absent: files go to a staging folder, a manifest with each
file's sha256 is written last, and only then is the folder renamed into place.

A checkpoint holds everything a resume needs: model, optimizer, scheduler, RNG states, the step
(which is also the data cursor, see batches.py), and the negative-pool version.
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

MANIFEST = "manifest.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_state(folder: Path, *, model_state: dict, optimizer_state: dict | None,
                scheduler_state: dict | None, trainer_state: dict, rank: int = 0) -> None:
    """Write one rank's share of a checkpoint into ``folder`` (rank 0 writes the model too)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               folder / f"rng_rank{rank}.pt")
    if rank != 0:
        return
    save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()},
              folder / "model.safetensors")
    torch.save({"optimizer": optimizer_state, "scheduler": scheduler_state}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    files = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST and p.is_file())
    manifest = {"step": trainer_state["step"], "files": {n: _sha256(folder / n) for n in files}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))  # last: marks completeness


def is_complete(folder: Path) -> bool:
    """True if the manifest exists and every file it lists is present with the right hash."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return all(_sha256(folder / n) == h for n, h in manifest["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def read_state(folder: Path, rank: int = 0) -> dict[str, Any]:
    """Load a complete checkpoint (tensors via safetensors / ``weights_only=True``)."""
    if not is_complete(folder):
        raise ValueError(f"{folder}: incomplete or corrupt checkpoint (manifest mismatch)")
    opt = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    rng_file = folder / f"rng_rank{rank}.pt"
    rng = torch.load(rng_file, map_location="cpu", weights_only=True) if rng_file.exists() else None
    return {"model": load_file(folder / "model.safetensors"), "optimizer": opt["optimizer"],
            "scheduler": opt["scheduler"], "rng": rng,
            "trainer_state": json.loads((folder / "trainer_state.json").read_text())}


def restore_rng(rng: dict | None) -> None:
    if rng:
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def save_local(run_dir: Path, step: int, num_to_keep: int, **state) -> Path:
    """Stage ``run_dir/.checkpoint-N.tmp``, then rename to ``checkpoint-N``; prune old ones."""
    final = run_dir / f"checkpoint-{step:06d}"
    staging = run_dir / f".checkpoint-{step:06d}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    write_state(staging, **state)
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    for old in list_checkpoints(run_dir)[:-num_to_keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders of a run, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("checkpoint-*")
             if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_complete(run_dir: Path) -> Path | None:
    """The newest checkpoint whose manifest verifies; a half-written one is passed over."""
    for folder in reversed(list_checkpoints(run_dir)):
        if is_complete(folder):
            return folder
    return None
