"""embedray.atomic: the one set of atomic-write semantics every writer uses."""
import json
import os
import stat

import pytest

from embedray.atomic import (atomic_dir, atomic_open, atomic_path, replace_dir, write_bytes_atomic,
                             write_json_atomic, write_text_atomic)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_writes_replace_whole_files_and_leave_no_temporaries(tmp_path):
    path = write_text_atomic("one\n", tmp_path / "sub" / "a.txt")  # creates the folder
    assert path.read_text() == "one\n"
    write_bytes_atomic(b"two", path)
    assert path.read_bytes() == b"two"
    write_json_atomic({"k": "ü", "p": tmp_path}, tmp_path / "sub" / "a.json")
    data = json.loads((tmp_path / "sub" / "a.json").read_text(encoding="utf-8"))
    assert data == {"k": "ü", "p": str(tmp_path)}  # non-ASCII kept, paths written with str
    assert _leftovers(tmp_path / "sub") == []


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = write_text_atomic("old", tmp_path / "a.txt")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write("half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and _leftovers(tmp_path) == []
    with pytest.raises(ValueError):  # NaN is not JSON
        write_json_atomic({"x": float("nan")}, tmp_path / "a.txt")
    assert path.read_text() == "old" and _leftovers(tmp_path) == []


def test_atomic_path_for_writers_that_want_a_name_and_file_modes(tmp_path):
    with atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".")
        tmp.write_bytes(b"\x89PNG")
    assert (tmp_path / "plot.png").read_bytes() == b"\x89PNG"
    secret = write_text_atomic("token", tmp_path / "token", mode=0o600)
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600


def test_folders_are_swapped_in_one_rename(tmp_path):
    target = tmp_path / "index"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(FileExistsError):
        with atomic_dir(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "a").write_text("half")
            raise RuntimeError("killed")
    assert (target / "a").read_text() == "1" and _leftovers(tmp_path) == []
    new = tmp_path / "new"
    new.mkdir()
    (new / "b").write_text("2")
    replace_dir(new, target)
    assert sorted(p.name for p in target.iterdir()) == ["b"] and _leftovers(tmp_path) == []
