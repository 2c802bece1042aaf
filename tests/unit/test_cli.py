"""`embedray` as a user meets it: help texts, fast clear errors, overrides after flags."""
import subprocess
import sys
import time

import pytest

from embedray.cli import build_parser, main
from embedray.models.bundled import UnknownModelError, resolve_model

SUBCOMMANDS = {"data debian": "--max-docs", "eval": "--ignore-identical-ids", "train": "--local",
               "mine": "--output", "pipeline": "overrides", "rotate": "--max-texts", "export": "--quantize", "serve": "--api-key-file", "ui": "--api", "models": "--resolve"}


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("data", "eval", "train", "mine", "pipeline", "rotate", "export", "serve", "ui", "models"):
        assert f"    {cmd}" in out


@pytest.mark.parametrize("cmd,flag", SUBCOMMANDS.items())
def test_subcommand_help(cmd, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd.split(), "--help"])
    assert e.value.code == 0
    assert flag in capsys.readouterr().out


def test_unknown_model_fails_fast_and_lists_bundled_names():
    t0 = time.perf_counter()
    with pytest.raises(UnknownModelError, match="minilm-l6.*mpnet-base.*tiny-bert"):
        resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert time.perf_counter() - t0 < 0.5


def test_eval_with_unknown_model_exits_2_with_message(topic_beir):
    done = subprocess.run([sys.executable, "-m", "embedray.cli", "eval", "--model", "no-such-model",
                           "--data", str(topic_beir)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no-such-model" in done.stderr and "Traceback" not in done.stderr


def test_overrides_may_follow_flags():
    args, extra = build_parser().parse_known_args(["train", "r.yaml", "--local", "train.lr=1e-5"])
    assert args.local and extra == ["train.lr=1e-5"]


def test_the_parser_imports_neither_torch_nor_ray():
    """Each command's heavy imports wait inside its ``run``: ``embedray --help`` stays fast."""
    probe = "import sys; from embedray.cli import build_parser; build_parser(); print(sorted(m for m in ('torch', 'ray', 'gradio') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_export_flag_choices_are_the_exporters():
    from embedray.cli import export as export_cli
    from embedray.models import export as exporter
    assert (export_cli.FORMATS, export_cli.QUANTIZE) == (exporter.FORMATS, exporter.QUANTIZE)


def test_ui_command_runs_the_app_as_its_own_process(monkeypatch):
    """``embedray ui`` starts ``ui/app.py`` with this Python; the key never appears in argv."""
    from embedray.cli import ui
    cmd = ui.ui_command("http://127.0.0.1:8000", None, "127.0.0.1", 7861)
    assert cmd[:2] == [sys.executable, str(ui.UI_APP)] and ui.UI_APP.is_file()
    assert ui._env("secret")["EMBEDRAY_API_KEY"] == "secret" and "secret" not in cmd
    monkeypatch.setattr(ui.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"\[ui\]"):
        ui.ui_command("http://127.0.0.1:8000", None, "127.0.0.1", 7861)
