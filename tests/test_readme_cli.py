"""The README's real-weights shell examples run as written, in order, in an empty folder.

Every `$ vaelens …` line of the section "Real weights" is run through the CLI in one temporary working
directory (so a file an example writes is there for the next one). A block that ends in `(exit code N)`
must exit N; any other must exit 0 and write every file its output says it wrote.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

README = Path(__file__).resolve().parent.parent / "README.md"


def _plain_blocks(lines: list[str]) -> list[tuple[int, list[str]]]:
    """lines -> (index of the first line inside, lines) of every fenced block without a language."""
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang, j = lines[i][3:].strip(), i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if not lang:
                blocks.append((i + 1, lines[i + 1 : j]))
            i = j + 1
        else:
            i += 1
    return blocks


def real_weights_examples(text: str) -> list[tuple[int, str, int, list[str]]]:
    """README -> (line, command, expected exit code, files it says it wrote) per `$ vaelens` line."""
    start = text.index("## Real weights")
    end = text.index("\n## ", start + 1)
    first_line = text[:start].count("\n") + 1
    out = []
    for at, block in _plain_blocks(text[start:end].splitlines()):
        code = next((int(m.group(1)) for b in block if (m := re.fullmatch(r"\(exit code (\d+)\)", b))), 0)
        for i, line in enumerate(block):
            if not line.startswith("$ vaelens "):
                continue
            rest = []
            for follow in block[i + 1 :]:
                if follow.startswith("$ "):
                    break
                rest.append(follow)
            wrote = [r[len("wrote ") :].split(" (")[0] for r in rest if r.startswith("wrote ")]
            out.append((first_line + at + i, line[2:], code, wrote))
    return out


EXAMPLES = real_weights_examples(README.read_text(encoding="utf-8"))


def test_the_section_has_the_four_commands():
    commands = {shlex.split(c)[1] for _, c, _, _ in EXAMPLES}
    assert {"encode", "decode", "roundtrip", "inspect"} <= commands


def test_readme_real_weights_examples_run_as_written(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for line, command, code, wrote in EXAMPLES:
        r = cli(*shlex.split(command)[1:])
        assert r.code == code, f"README.md:{line}: `{command}` exited {r.code}, README says {code}\n{r.err}"
        missing = [w for w in wrote if not (tmp_path / w).is_file()]
        assert not missing, f"README.md:{line}: `{command}` did not write {missing}"
