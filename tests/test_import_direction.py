"""Imports point down (docs/ARCHITECTURE.md, "Import direction"): no library module imports render/ or cli/,
at the top or inside a function; the run engine returns data and the CLI draws (issue 18 item 6)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "vaelens"
TOP = ("vaelens.render", "vaelens.cli")
# The package root's lazy name map serves explain_family from render.narrate (a string, not an import);
# __main__ is the CLI's entry point.
ALLOWED = {"vaelens/__main__.py"}


def imports(path: Path, package: str | None = None) -> set[str]:
    """Every module a file imports, at the top or inside a function (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    if package is None:
        package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def upward_arrows() -> list[tuple[str, str]]:
    arrows = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).as_posix()
        if rel.startswith(("vaelens/render/", "vaelens/cli/")) or rel in ALLOWED:
            continue
        arrows += [(rel, m) for m in sorted(imports(path)) if m.startswith(TOP)]
    return arrows


def test_no_library_module_imports_render_or_cli():
    assert upward_arrows() == []


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import json\n\ndef f():\n    from ..render import figures\n    import vaelens.cli.main\n")
    found = imports(f, package="vaelens.run")
    assert {"vaelens.render.figures", "vaelens.cli.main"} <= found
