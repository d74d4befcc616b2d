"""A griffe extension for the API reference: doctest runs in a docstring become fenced `pycon` blocks.

vaelens' docstrings hold doctests in plain text (pytest runs them: `--doctest-modules` in pyproject.toml);
Markdown would read their output, e.g. `[('', (1, 8))]`, as link syntax. mkdocs.yml loads this file
(`extensions:` of the mkdocstrings python handler); it changes only the rendered text, not the source.
"""

from __future__ import annotations

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    """docstring text -> the same text with each run of `>>>` lines and their output fenced as pycon.

    A run ends at the first blank line (doctest's own rule); tests/test_docs.py checks it.
    """
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        starts = line.lstrip().startswith(">>>")
        if starts and not inside:
            out.append("```pycon")
            inside = True
        elif inside and not line.strip():
            out.append("```")
            inside = False
        out.append(line)
    if inside:
        out.append("```")
    return "\n".join(out)


class FenceDoctests(griffe.Extension):
    """Fence the doctests of every object's docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Object (with its docstring) -> the docstring's doctests fenced, in place."""
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
