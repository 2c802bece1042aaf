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


def test_ray_session_restore_loads_and_leaves_no_copy(tmp_path, monkeypatch):
    """Ray Train hands the loop a checkpoint it copies locally; the copy goes once loaded."""
    import ray.train

    from embedray.cluster.train import RayTrainSession

    folder = ckpt.save_local(tmp_path / "saved", 7, num_to_keep=2, **_state(7))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(folder)))
    session = object.__new__(RayTrainSession)
    session.rank = 0
    assert session.restore()["trainer_state"]["step"] == 7
    assert list(scratch.iterdir()) == []

    (folder / "model.safetensors").write_bytes(b"torn")
    with pytest.raises(RuntimeError, match="failed verification"):
        session.restore()
    assert list(scratch.iterdir()) == []
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    assert session.restore() is None
