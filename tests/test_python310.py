"""Issue 20 item 1: the package promises Python >= 3.10 (pyproject `requires-python`), so nothing may use a
3.11+ name at run time. Checked with a real 3.10 interpreter where one is installed (pyenv or PATH), and by
an AST scan of every module everywhere."""

from __future__ import annotations

import ast
import glob
import shutil
import subprocess
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Standard-library names that first appeared in 3.11 or later (module, name).
NEWER = {
    ("typing", "Self"), ("typing", "Never"), ("typing", "LiteralString"), ("typing", "assert_never"),
    ("typing", "reveal_type"), ("typing", "Required"), ("typing", "NotRequired"), ("typing", "TypeVarTuple"),
    ("typing", "Unpack"), ("typing", "dataclass_transform"), ("typing", "override"), ("enum", "StrEnum"),
    ("datetime", "UTC"), ("enum", "verify"), ("enum", "member"), ("asyncio", "TaskGroup"),
}
NEWER_MODULES = {"tomllib", "wsgiref.types"}


def _python310() -> str | None:
    """A working 3.10 interpreter: pyenv's own builds first (its PATH shims may refuse), then PATH."""
    candidates = sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.10*/bin/python")))
    candidates.append(shutil.which("python3.10"))
    for c in filter(None, candidates):
        probe = subprocess.run([c, "-c", "import sys; assert sys.version_info[:2] == (3, 10)"], capture_output=True)
        if probe.returncode == 0:
            return c
    return None


def _runtime_imports(tree: ast.Module):
    """(module, name) imported at run time: skips `if TYPE_CHECKING:` blocks."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


def test_issue20_1_no_module_imports_a_311_name_at_run_time():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for module, name in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if (module, name) in NEWER or module in NEWER_MODULES:
                offenders.append(f"{path.relative_to(SRC)}: {module}.{name or ''}")
    assert not offenders, offenders


def test_issue20_1_python_310_compiles_everything_and_imports_the_core():
    python = _python310()
    if python is None:
        pytest.skip("no Python 3.10 interpreter on this machine (pyenv or PATH)")
    script = (
        "import pathlib, sys\n"
        f"src = pathlib.Path({str(SRC)!r})\n"
        "for f in sorted(src.rglob('*.py')):\n"
        "    compile(f.read_text(), str(f), 'exec')\n"
        "sys.path.insert(0, str(src))\n"
        "import vaelens, vaelens.contract, vaelens.options, vaelens.units, vaelens.errors\n"
        "print(sys.version_info[:2], vaelens.shapes('sdxl').latent_shape)\n"
    )
    out = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(3, 10) (1, 4, 128, 128)"
