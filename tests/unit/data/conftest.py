import json
from pathlib import Path

import pytest


@pytest.fixture
def write_lines(tmp_path):
    """Write a file from lines (dicts become JSON) and return its path."""

    def write(name: str, *lines) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join((json.dumps(x) if isinstance(x, (dict, list)) else x) + "\n"
                                for x in lines), encoding="utf-8")
        return path

    return write
