"""docs/datasets.md: its ```python blocks (a small cache, then the worked training loop) run in order, in a
fresh folder, and print what a reader would expect."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"


def test_the_training_loop_in_docs_datasets_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 2
    loop = blocks[1].strip().splitlines()
    assert len([ln for ln in loop if ln.strip() and not ln.lstrip().startswith("#")]) <= 30
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for n, code in enumerate(blocks):
        exec(compile(code, f"docs/datasets.md block {n}", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "6"  # six photos encoded
    assert out[1].startswith("6 samples, ") and "captions like 'photo number" in out[1]
    assert namespace["loss"].isfinite()
