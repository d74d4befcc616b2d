"""The shell examples of the README and the docs run as written, in order, in an empty folder.

Every `$ vaelens …` line of a page in PAGES is run through the CLI, the page's lines in order in one
temporary working directory (so a file an example writes is there for the next one); a `# comment` after
the command is not part of it. A block that ends in `(exit code N)` must exit N; any other must exit 0 and
write every file its output says it wrote (`wrote FILE`).

Where a page's output is checked (CHECKS_OUTPUT: all but the real-weights page, whose timings vary), the
lines shown under a command that writes nothing must be what it prints — on stdout, or on stderr when it
fails: exactly, or, where the page abridges with a line `…`, every shown line in order.

A block right after a line `<!-- docs-test: skip (reason) -->` is not run (for the slow ones; keep these rare).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("README.md", "docs/shapes.md", "docs/memory.md", "docs/pipeline.md", "docs/real-weights.md")
CHECKS_OUTPUT = {"README.md", "docs/shapes.md", "docs/memory.md", "docs/pipeline.md"}
SKIP = re.compile(r"<!-- docs-test: skip \(.+\) -->")
ELIDED = "…"


def _plain_blocks(lines: list[str]) -> list[tuple[int, list[str]]]:
    """lines -> (index of the first line inside, lines) of every fenced block without a language that is
    not marked to be skipped."""
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang, j = lines[i][3:].strip(), i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            skipped = i > 0 and SKIP.fullmatch(lines[i - 1].strip())
            if not lang and not skipped:
                blocks.append((i + 1, lines[i + 1 : j]))
            i = j + 1
        else:
            i += 1
    return blocks


def shell_examples(text: str) -> list[tuple[int, str, int, list[str], list[str]]]:
    """page text -> (line, command, expected exit code, files it says it wrote, lines shown under it)
    per `$ vaelens` line."""
    out = []
    for at, block in _plain_blocks(text.splitlines()):
        code = next((int(m.group(1)) for b in block if (m := re.fullmatch(r"\(exit code (\d+)\)", b))), 0)
        for i, line in enumerate(block):
            if not line.startswith("$ vaelens "):
                continue
            rest = []
            for follow in block[i + 1 :]:
                if follow.startswith("$ "):
                    break
                rest.append(follow)
            while rest and not rest[-1].strip():
                rest.pop()
            wrote = [r[len("wrote ") :].split(" (")[0] for r in rest if r.startswith("wrote ")]
            shown = [r for r in rest if not re.fullmatch(r"\(exit code \d+\)", r)]
            out.append((at + i + 1, line[2:], code, wrote, shown))
    return out


def output_matches(printed: list[str], shown: list[str]) -> bool:
    """What a command printed against what the page shows: equal, or where the page has a line `…`,
    every other shown line among the printed ones, in order."""
    if ELIDED not in shown:
        return printed == shown
    rest = iter(printed)
    return all(any(p == s for p in rest) for s in shown if s != ELIDED)


EXAMPLES = {page: shell_examples((ROOT / page).read_text(encoding="utf-8")) for page in PAGES}


def test_the_parser_reads_commands_exit_codes_files_and_output():
    text = (
        "x\n```\n$ vaelens a -o f\nwrote f.png (thing)\n```\n```\n$ vaelens b\nerror\n(exit code 2)\n```\n"
        "<!-- docs-test: skip (slow) -->\n```\n$ vaelens c\n```\n```\n$ vaelens d\nout\n\n$ vaelens e\n```\n"
    )
    assert shell_examples(text) == [
        (3, "vaelens a -o f", 0, ["f.png"], ["wrote f.png (thing)"]),
        (7, "vaelens b", 2, [], ["error"]),
        (16, "vaelens d", 0, [], ["out"]),
        (19, "vaelens e", 0, [], []),
    ]
    assert shlex.split("vaelens inspect -o x   # a comment", comments=True) == ["vaelens", "inspect", "-o", "x"]


def test_abridged_output_matches_in_order():
    assert output_matches(["a", "b", "c"], ["a", "b", "c"])
    assert not output_matches(["a", "b", "c"], ["a", "c"])
    assert output_matches(["a", "b", "c", "d"], ["a", ELIDED, "c"])
    assert not output_matches(["a", "b", "c"], ["c", ELIDED, "a"])
    assert not output_matches(["a", "b"], ["a", ELIDED, "x"])


def test_the_pages_have_their_commands():
    def commands(page: str) -> set[str]:
        return {command.split()[1] for _, command, *_ in EXAMPLES[page]}

    assert {"encode", "decode", "roundtrip", "inspect"} <= commands("docs/real-weights.md")
    assert {"shapes", "memory", "roundtrip", "report"} <= commands("README.md")
    assert {"families", "shapes", "explain"} <= commands("docs/shapes.md")
    assert {"trace", "memory"} <= commands("docs/memory.md")


@pytest.mark.parametrize("page", PAGES)
def test_shell_examples_run_as_written(page, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for line, command, code, wrote, shown in EXAMPLES[page]:
        r = cli(*shlex.split(command, comments=True)[1:])
        where = f"{page}:{line}"
        assert r.code == code, f"{where}: `{command}` exited {r.code}, the page says {code}\n{r.err}"
        missing = [w for w in wrote if not (tmp_path / w).is_file()]
        assert not missing, f"{where}: `{command}` did not write {missing}"
        if page in CHECKS_OUTPUT and shown and not wrote:
            printed = (r.out if code == 0 else r.err).splitlines()  # an error is one line on stderr
            assert output_matches(printed, shown), (
                f"{where}: `{command}` printed other output than the page shows:\n" + "\n".join(printed))
