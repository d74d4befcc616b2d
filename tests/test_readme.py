"""Every ```python block in README.md runs, offline, and prints what the README says it prints.

A block runs in a fresh namespace in a temporary working directory. When the block is followed by a line
`Output:` and a fenced block, its stdout must equal that block. A block whose first line is
`# readme-test: skip (reason)` is not run (for what needs a GPU or a file the reader has; keep these rare).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SKIP = "# readme-test: skip"
_BLOCK = re.compile(r"^```python\n(.*?)^```\n(?:Output:\n```[a-z]*\n(.*?)^```)?", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """README text -> (line number, code, expected stdout or None) per ```python block."""
    return [(text[: m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in _BLOCK.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks_and_few_are_skipped():
    assert len(BLOCKS) >= 4
    assert sum(code.startswith(SKIP) for _, code, _ in BLOCKS) <= 1


def test_the_block_parser_pairs_a_block_with_its_output():
    text = "x\n```python\nprint(1)\n```\nOutput:\n```\n1\n```\n```python\npass\n```\n"
    assert python_blocks(text) == [(2, "print(1)\n", "1\n"), (9, "pass\n", None)]


@pytest.mark.parametrize("line,code,expected", BLOCKS, ids=[f"README.md:{line}" for line, _, _ in BLOCKS])
def test_readme_python_block(line, code, expected, tmp_path, monkeypatch):
    if code.startswith(SKIP):
        pytest.skip(code.splitlines()[0])
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})  # noqa: S102
    if expected is not None:
        assert out.getvalue() == expected, f"README.md:{line}: the printed output differs from the README's"
