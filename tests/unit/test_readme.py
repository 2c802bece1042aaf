"""The README never lies: its Python snippets and its ```bash test``` blocks are executed."""
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
PYTHON = re.findall(r"```python\n(.*?)```", README, re.S)
SHELL = re.findall(r"```bash test\n(.*?)```", README, re.S)


def test_readme_has_the_two_commands_first():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


@pytest.mark.parametrize("snippet", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_snippet_runs(snippet, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    exec(compile(snippet, "README.md", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("snippet", SHELL, ids=[f"bash-{i}" for i in range(len(SHELL))])
def test_shell_snippet_runs(snippet):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", snippet], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
