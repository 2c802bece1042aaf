"""The Ray connection helpers that need no cluster: the auth token file and loopback addresses."""
from __future__ import annotations

import stat

import pytest

from embedray.cluster.runtime import ensure_auth_token, is_loopback_address, token_path


def test_token_is_created_once_with_mode_0600(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    path = ensure_auth_token()
    assert path == tmp_path / ".ray" / "auth_token" == token_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_text()) == 64
    assert f"created a Ray auth token at {path}" in capsys.readouterr().err
    token = path.read_text()
    assert ensure_auth_token() == path and path.read_text() == token  # kept, not replaced
    assert "created" not in capsys.readouterr().err
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def test_token_from_the_environment_or_its_path_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "f" * 64)
    assert ensure_auth_token() is None and not (tmp_path / ".ray").exists()
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "cluster" / "token"))
    assert ensure_auth_token(announce=False) == tmp_path / "cluster" / "token"
    (tmp_path / "cluster" / "token").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        ensure_auth_token()


def test_loopback_addresses():
    for address in ("127.0.0.1:6379", "localhost:1234", "ray://127.0.0.1:10001", "[::1]:6379", "127.0.0.2:1"):
        assert is_loopback_address(address), address
    for address in ("10.0.0.5:6379", "head.example.org:6379", "ray://192.0.2.2:10001", "auto"):
        assert not is_loopback_address(address), address
