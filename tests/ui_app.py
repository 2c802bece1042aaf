"""The Gradio demo (``ui/app.py``) loaded in the test process: it lives outside the package,
which never imports it, so the tests load it by path."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

UI_APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"


def load_ui_module():
    name = "embedray_ui_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, UI_APP)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
