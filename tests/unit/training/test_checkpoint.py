import pytest
import torch

from embedray.training import checkpoint as ckpt


def _state(step):
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters())
    lin(torch.randn(4, 3)).sum().backward()
    opt.step()
    return dict(model_state=lin.state_dict(), optimizer_state=opt.state_dict(), scheduler_state={"x": 1},
                trainer_state={"step": step, "state": {}})


def test_roundtrip_and_pruning(tmp_path):
    for step in (10, 20, 30):
        ckpt.save_local(tmp_path, step, num_to_keep=2, **_state(step))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-000020", "checkpoint-000030"]
    loaded = ckpt.read_state(ckpt.latest_complete(tmp_path))
    assert loaded["trainer_state"]["step"] == 30
    assert set(loaded["model"]) == {"weight", "bias"} and loaded["rng"] is not None


def test_interrupted_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_local(tmp_path, 10, num_to_keep=3, **_state(10))
    real_save = torch.save

    def crash_midway(obj, path, *a, **k):
        if str(path).endswith("optimizer.pt"):
            with open(path, "wb") as f:
                f.write(b"half a file")
            raise OSError("disk vanished")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError):
        ckpt.save_local(tmp_path, 20, num_to_keep=3, **_state(20))
    monkeypatch.undo()
    assert ckpt.latest_complete(tmp_path).name == "checkpoint-000010"
    assert ckpt.read_state(ckpt.latest_complete(tmp_path))["trainer_state"]["step"] == 10


def test_corrupt_file_is_detected(tmp_path):
    folder = ckpt.save_local(tmp_path, 5, num_to_keep=2, **_state(5))
    ckpt.save_local(tmp_path, 6, num_to_keep=2, **_state(6))
    with open(tmp_path / "checkpoint-000006" / "model.safetensors", "r+b") as f:
        f.truncate(10)  # a partly copied checkpoint
    assert ckpt.latest_complete(tmp_path) == folder
    with pytest.raises(ValueError, match="incomplete or corrupt"):
        ckpt.read_state(tmp_path / "checkpoint-000006")


def _ray_session(monkeypatch, run_dir, rank=0, world_size=1):
    """A RayTrainSession outside a Ray Train worker: get_checkpoint() returns Ray's newest
    checkpoint of ``run_dir`` (as Ray Train would after a restart)."""
    import ray.train

    from embedray.cluster.train import RayTrainSession

    def newest():
        found = ckpt.list_checkpoints(run_dir)
        return ray.train.Checkpoint.from_directory(str(found[-1])) if found else None

    monkeypatch.setattr(ray.train, "get_checkpoint", newest)
    session = object.__new__(RayTrainSession)
    session.rank, session.world_size, session.run_dir = rank, world_size, run_dir
    return session


def test_ray_session_restore_loads_and_leaves_no_copy(tmp_path, monkeypatch):
    """Ray Train hands the loop a checkpoint it copies locally; the copy goes once loaded."""
    run = tmp_path / "run"
    ckpt.save_local(run, 7, num_to_keep=2, **_state(7))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    session = _ray_session(monkeypatch, run)
    assert session.restore()["trainer_state"]["step"] == 7
    assert list(scratch.iterdir()) == []


def test_ray_session_falls_back_past_a_corrupt_newest_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    for step in (4, 8, 12):
        ckpt.save_local(run, step, num_to_keep=3, **_state(step))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    with open(run / "checkpoint-000012" / "optimizer.pt", "r+b") as f:
        f.truncate(5)
    (run / "checkpoint-000008" / "rng_rank0.pt").write_bytes(b"torn")
    session = _ray_session(monkeypatch, run)
    assert session.restore()["trainer_state"]["step"] == 4
    out = capsys.readouterr().out
    assert "checkpoint-000012 (optimizer.pt does not match its hash" in out
    assert "checkpoint-000008 (rng_rank0.pt does not match" in out and "resuming from" in out
    assert list(scratch.iterdir()) == []
    (run / "checkpoint-000004" / "manifest-rank0.json").unlink()
    assert session.restore() is None  # nothing complete is left: from step 0, said so
    assert "no complete checkpoint left" in capsys.readouterr().out
    monkeypatch.setattr("ray.train.get_checkpoint", lambda: None)
    assert session.restore() is None


def _rank_share(folder, rank, world_size, step=3):
    """One rank's share of a checkpoint, written into its own folder as a Ray Train worker does."""
    state = _state(step)
    state["trainer_state"].update(world_size=world_size, seed=0)
    ckpt.write_state(folder, rank=rank, **state)
    return folder


def test_the_manifests_cover_every_ranks_files(tmp_path):
    """Ray Train merges each worker's folder into one checkpoint: complete only when every
    rank's manifest is there and all their files verify."""
    import shutil

    merged = tmp_path / "checkpoint-000003"
    for rank in range(2):
        shutil.copytree(_rank_share(tmp_path / f"rank{rank}", rank, 2), merged, dirs_exist_ok=True)
    assert ckpt.verify(merged) is None and ckpt.read_state(merged, rank=1)["rng"] is not None

    only_rank0 = tmp_path / "only0"
    shutil.copytree(tmp_path / "rank0", only_rank0)
    assert "rank(s) [1] of 2 is missing" in ckpt.verify(only_rank0)
    with open(merged / "rng_rank1.pt", "r+b") as f:  # a worker's own file, torn
        f.truncate(3)
    assert "rng_rank1.pt does not match its hash in manifest-rank1.json" in ckpt.verify(merged)
    assert ckpt.latest_complete(tmp_path) is None


def test_files_and_folders_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    import os

    synced = []
    real_fsync = os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    final = ckpt.save_local(tmp_path, 5, num_to_keep=2, **_state(5))
    staging = str(tmp_path / ".checkpoint-000005.tmp")
    files = {p.name for p in final.iterdir()}
    assert files == {"model.safetensors", "optimizer.pt", "trainer_state.json", "rng_rank0.pt", "manifest-rank0.json"}
    assert {f"{staging}/{n}" for n in files} <= set(synced)  # every file, under its staging name
    assert synced.index(staging) > max(synced.index(f"{staging}/{n}") for n in files)  # then the folder
    assert synced[-1] == str(tmp_path)  # and, after the rename, the folder holding it


def test_resuming_with_other_workers_or_seed_is_refused(tmp_path):
    state = _state(6)
    state["trainer_state"].update(world_size=1, seed=7)
    folder = ckpt.save_local(tmp_path, 6, num_to_keep=2, **state)
    assert ckpt.read_state(folder, world_size=1, seed=7)["trainer_state"]["step"] == 6
    refused = (r"cluster.num_workers=1 train.seed=7, but the run resuming it has cluster.num_workers 2.*"
               r"Re-run with cluster.num_workers=1.*new cluster.run_name")
    with pytest.raises(ValueError, match=refused):
        ckpt.read_state(folder, world_size=2, seed=7)
    with pytest.raises(ValueError, match=r"has train.seed 8.*Re-run with train.seed=7"):
        ckpt.read_state(folder, world_size=1, seed=8)
