"""ServeConfig validation, the model card, and the serve/ui command-line flags."""
from __future__ import annotations

import argparse
import json

import pytest

from embedray.cli.serve import add_arguments as add_serve_arguments
from embedray.cli.serve import config_from_args
from embedray.cli.ui import add_arguments as add_ui_arguments
from embedray.serve.config import ServeConfig
from embedray.serve.model_card import ModelCard, read_model_card
from tests.ui_app import load_ui_module


def test_defaults_bind_loopback_without_auth(tiny_model, monkeypatch):
    monkeypatch.delenv("EMBEDRAY_API_KEY", raising=False)
    cfg = ServeConfig(str(tiny_model))
    assert (cfg.host, cfg.port, cfg.api_key) == ("127.0.0.1", 8000, None)
    assert cfg.model_name == tiny_model.name
    assert cfg.binds_loopback and cfg.exposure_warning() is None


def test_exposure_warning_and_env_key(tiny_model, monkeypatch):
    monkeypatch.delenv("EMBEDRAY_API_KEY", raising=False)
    cfg = ServeConfig(str(tiny_model), host="0.0.0.0")
    assert "without an API key" in cfg.exposure_warning()
    monkeypatch.setenv("EMBEDRAY_API_KEY", "k")
    cfg = ServeConfig(str(tiny_model), host="0.0.0.0")
    assert cfg.api_key == "k" and cfg.exposure_warning() is None


@pytest.mark.parametrize("kwargs,match", [
    ({"port": 0}, "port"), ({"replicas": 0}, "replicas"), ({"max_batch_tokens": 0}, "max_batch_tokens"),
    ({"max_queued_requests": 0}, "max_queued_requests"), ({"cpus_per_replica": -1}, "cpus_per_replica"),
    ({"corpus": "/nonexistent/corpus.jsonl"}, "corpus"), ({"cross_encoder": "/nonexistent"}, "cross_encoder"),
    ({"torch_threads": -2}, "torch_threads"),
])
def test_invalid_settings_name_the_field(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ServeConfig(str(tiny_model), **kwargs)


def test_missing_model_folder(tmp_path):
    with pytest.raises(ValueError, match="model_dir"):
        ServeConfig(str(tmp_path / "nope"))


def test_index_needs_a_corpus(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="needs a corpus"):
        ServeConfig(str(tiny_model), index=str(tmp_path))


def test_model_card(tmp_path):
    assert read_model_card(tmp_path) == ModelCard()
    (tmp_path / "embedray.json").write_text(json.dumps({"matryoshka_dims": [64, 256, 128], "metrics": {"x": 1}}))
    card = read_model_card(tmp_path)
    assert card.matryoshka_dims == [256, 128, 64]
    assert card.allowed_dims(384) == [384, 256, 128, 64]
    assert card.allowed_dims(128) == [128, 64]
    for bad in ({"matryoshka_dims": [0]}, {"matryoshka_dims": "64"}, {"metrics": [1]}, [1]):
        (tmp_path / "embedray.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="embedray.json"):
            read_model_card(tmp_path)
    (tmp_path / "embedray.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_model_card(tmp_path)


def test_serve_flags_build_the_config(tiny_model, corpus_file, monkeypatch):
    monkeypatch.delenv("EMBEDRAY_API_KEY", raising=False)
    parser = add_serve_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["tiny-bert", "--corpus", str(corpus_file), "--port", "8123", "--replicas", "2",
                              "--max-batch-tokens", "4096", "--cpus-per-replica", "0.25", "--access-log"])
    cfg = config_from_args(args)
    assert cfg.model_dir == str(tiny_model)
    assert (cfg.port, cfg.replicas, cfg.max_batch_tokens, cfg.cpus_per_replica) == (8123, 2, 4096, 0.25)
    assert cfg.corpus == str(corpus_file.resolve()) and cfg.access_log is True
    assert cfg.host == "127.0.0.1" and cfg.api_key is None and cfg.model_name == "tiny-bert"
    named = config_from_args(parser.parse_args([str(tiny_model), "--model-name", "student"]))
    assert named.model_name == "student"
    assert config_from_args(parser.parse_args([str(tiny_model)])).model_name == tiny_model.name
    help_text = parser.format_help()
    assert "--max-queued-requests" in help_text and "token budget" in help_text


def test_ui_flags_and_module():
    args = add_ui_arguments(argparse.ArgumentParser()).parse_args(["--base-api", "http://127.0.0.1:8001"])
    assert (args.api, args.base_api, args.host, args.port) == ("http://127.0.0.1:8000", "http://127.0.0.1:8001",
                                                               "127.0.0.1", 7860)
    ui = load_ui_module()
    assert callable(ui.build_ui) and callable(ui.serve_ui)
