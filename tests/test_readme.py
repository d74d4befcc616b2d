"""Every ```python block in README.md and docs/*.md runs, offline, and prints what the page says it prints.

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

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SKIP = "# readme-test: skip"
_BLOCK = re.compile(r"^```python\n(.*?)^```\n(?:Output:\n```[a-z]*\n(.*?)^```)?", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """page text -> (line number, code, expected stdout or None) per ```python block."""
    return [(text[: m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in _BLOCK.finditer(text)]


BLOCKS = [
    (page.relative_to(ROOT).as_posix(), line, code, expected)
    for page in PAGES
    for line, code, expected in python_blocks(page.read_text(encoding="utf-8"))
]


def test_the_pages_have_python_blocks_and_few_are_skipped():
    assert any(name == "README.md" for name, *_ in BLOCKS), "the README has no python example"
    assert len(BLOCKS) >= 8
    assert sum(code.startswith(SKIP) for _, _, code, _ in BLOCKS) <= 2


def test_the_block_parser_pairs_a_block_with_its_output():
    text = "x\n```python\nprint(1)\n```\nOutput:\n```\n1\n```\n```python\npass\n```\n"
    assert python_blocks(text) == [(2, "print(1)\n", "1\n"), (9, "pass\n", None)]


@pytest.mark.parametrize("page,line,code,expected", BLOCKS, ids=[f"{p}:{n}" for p, n, _, _ in BLOCKS])
def test_page_python_block(page, line, code, expected, tmp_path, monkeypatch):
    if code.startswith(SKIP):
        pytest.skip(code.splitlines()[0])
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "__readme__"})  # noqa: S102
    if expected is not None:
        assert out.getvalue() == expected, f"{page}:{line}: the printed output differs from the page's"
