"""The package order of the README's Layout section holds for every import in the tree.

Every module's imports are read with ``ast`` (module level and inside functions, relative
ones resolved): a package may import only itself and the packages before it in
:data:`ORDER`, ray only inside ``embedray/cluster``, and nothing in ``embedray`` imports the
``ui/`` app or gradio. ``jobs/`` are thin drivers over ``embedray.cli``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "embedray"


def _order_from_readme() -> list[str]:
    """The ``package order:`` line of the README's Layout section (``a → b → c``)."""
    layout = ROOT.joinpath("README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"^package order[^:]*:\s*(.+)$", layout, re.M)
    assert m, "README's Layout section has no 'package order: a → b → ...' line"
    return [re.sub(r"\s*\(.*\)", "", part).strip() for part in m.group(1).split("→")]


#: Lowest first; ``embedray`` stands for the package's own top-level modules (atomic, config).
ORDER = _order_from_readme()
RAY_PACKAGE = "cluster"


def unit_of(module: str) -> str | None:
    """``embedray.mining.index`` → ``mining``; ``embedray.atomic`` / ``embedray`` → ``embedray``."""
    parts = module.split(".")
    if parts[0] != "embedray":
        return None
    if len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "embedray"


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path``, function-level ones included."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] + ["__init__"]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:-node.level]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            # ``from embedray import cli`` names a package too
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names if unit_of(f"{mod}.{a.name}") not in
                    (None, "embedray")]
    return out


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_order_names_every_package_once():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert ORDER[0] == "embedray", ORDER
    assert len(ORDER) == len(set(ORDER)), f"a package is listed twice: {ORDER}"
    assert set(ORDER) - {"embedray"} == packages, (
        f"README's package order and the tree differ: not listed {sorted(packages - set(ORDER))}, "
        f"listed but absent {sorted(set(ORDER) - packages - {'embedray'})}")


def test_the_layout_block_describes_every_package():
    layout = ROOT.joinpath("README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    missing = [p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists() and f"embedray/{p.name}/" not in layout]
    assert not missing, f"README's Layout section does not describe {missing}"


def test_every_import_follows_the_package_order():
    rank = {u: i for i, u in enumerate(ORDER)}
    wrong = []
    for path in modules():
        here = unit_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for line, mod in imports(path):
            there = unit_of(mod)
            if there is not None and rank[there] > rank[here]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {here} imports {mod} ({there} comes after {here})")
    assert not wrong, "imports against the package order (README, Layout):\n" + "\n".join(wrong)


def test_no_package_cycle():
    edges: dict[str, set[str]] = {}
    for path in modules():
        here = unit_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for _, mod in imports(path):
            there = unit_of(mod)
            if there not in (None, here):
                edges.setdefault(here, set()).add(there)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(u for u in edges if u in reach(u))
    assert not cycles, f"packages on an import cycle: {cycles}"


def test_ray_only_in_the_cluster_package():
    found = [f"{p.relative_to(ROOT)}:{line}: {mod}" for p in modules() for line, mod in imports(p)
             if mod.split(".")[0] == "ray" and unit_of(".".join(p.relative_to(ROOT).with_suffix("").parts)) != RAY_PACKAGE]
    assert not found, "ray imported outside embedray/cluster:\n" + "\n".join(found)


def test_the_package_never_imports_the_ui_app_or_gradio():
    found = [f"{p.relative_to(ROOT)}:{line}: {mod}" for p in modules() for line, mod in imports(p)
             if mod.split(".")[0] in ("ui", "gradio")]
    found += [str(p.relative_to(ROOT)) for p in modules() if "spec_from_file_location" in p.read_text()]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("job", sorted(ROOT.joinpath("jobs").glob("*.py")), ids=lambda p: p.name)
def test_jobs_are_thin_drivers_over_the_cli(job):
    own = [mod for _, mod in imports(job) if mod.startswith("embedray")]
    assert own and all(m == "embedray.cli" or m.startswith("embedray.cli.") for m in own), own


def test_the_check_sees_function_level_and_relative_imports(tmp_path):
    """The reader itself: an import inside a function and a relative import are both found."""
    fake = PACKAGE / "data" / "_order_probe.py"
    try:
        fake.write_text("def f():\n    from embedray.cluster import train\n\nfrom ..serve import app\n")
        found = {mod for _, mod in imports(fake)}
    finally:
        fake.unlink()
    assert {"embedray.cluster", "embedray.serve"} <= found
