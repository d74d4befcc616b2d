"""The docs site builds in strict mode, and the README and the pages agree with the code.

`mkdocs build --strict` (mkdocs.yml: Material theme, mkdocstrings) fails on a missing page, a page left out
of the nav, a broken relative link or anchor, and an API reference entry that does not resolve. The build
runs into a temporary folder. Without mkdocs, mkdocs-material and mkdocstrings installed (the `dev` extra)
the build tests are skipped, saying so.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (it comes with mkdocs, in the dev extra) reads mkdocs.yml")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
_MISSING = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
            if importlib.util.find_spec(m.split(".")[0]) is None]
needs_mkdocs = pytest.mark.skipif(
    bool(_MISSING), reason=f"{', '.join(_MISSING)} not installed: pip install -e '.[dev]' for the docs build")


def _build(config: Path, site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def _nav_pages(nav: list) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


def _config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


@needs_mkdocs
def test_the_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    r = _build(ROOT / "mkdocs.yml", site, ROOT)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    assert "WARNING" not in r.stderr, r.stderr
    for page in _nav_pages(_config()["nav"]):
        out = site / ("index.html" if page == "index.md" else f"{page.removesuffix('.md')}/index.html")
        assert out.is_file(), f"{page} was not built"
    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    assert 'id="vaelens.contract.shapes"' in reference  # mkdocstrings rendered the docstrings
    assert "class=\"gp\">&gt;&gt;&gt; " in reference  # doctests are fenced as pycon (docs/_ext)
    assert (site / "img" / "demo_roundtrip_compare.png").is_file()


@needs_mkdocs
def test_the_strict_build_fails_on_a_broken_link_or_anchor(tmp_path):
    """The same validation settings, on a two-page site with one broken link and one broken anchor."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](missing.md) and [no anchor](other.md#nowhere)\n")
    (docs / "other.md").write_text("# Other\n\n## Here\n")
    config = {"site_name": "t", "docs_dir": "docs", "validation": _config()["validation"],
              "nav": [{"Home": "index.md"}, {"Other": "other.md"}]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    r = _build(tmp_path / "mkdocs.yml", tmp_path / "site", tmp_path)
    assert r.returncode != 0
    assert "missing.md" in r.stderr and "nowhere" in r.stderr, r.stderr


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = _nav_pages(_config()["nav"])
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert sorted(nav) == pages
    for name in ("index.md", "shapes.md", "memory.md", "pipeline.md", "real-weights.md", "tiling.md",
                 "precision.md", "validate.md", "report.md", "datasets.md", "python-api.md", "ARCHITECTURE.md",
                 "reference.md"):
        assert name in pages, f"docs/{name} is missing"


def test_the_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert "make demo" in text and "make test" in text and "mkdocs serve" in text
    assert re.search(r"!\[[^\]]+\]\(docs/img/[^)]+\.png\)", text), "the README shows no picture"


def test_the_readme_command_table_lists_every_command():
    from vaelens.cli import COMMAND_MODULES

    table = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| `vaelens ")]
    listed = {re.match(r"\| `vaelens ([a-z]+)", line).group(1) for line in table}
    assert set(COMMAND_MODULES) <= listed, f"commands missing from the README's table: {set(COMMAND_MODULES) - listed}"
    assert {"precision", "validate", "env"} <= listed


def _links(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # not inside code blocks
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def _anchors(text: str) -> set[str]:
    """Headings -> GitHub's anchors (lower case, punctuation dropped, spaces to hyphens)."""
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return out


def test_the_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    links = [link for link in _links(text) if not link.startswith(("http://", "https://"))]
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else README
        assert target.is_file(), f"README.md links to {link}, which does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target.read_text(encoding="utf-8")), f"README.md: no anchor for {link}"


def test_every_image_is_used_and_every_used_image_exists():
    texts = {p: p.read_text(encoding="utf-8") for p in [README, *DOCS.glob("*.md")]}
    used = set()
    for page, text in texts.items():
        for src in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text):
            target = (page.parent / src).resolve()
            assert target.is_file(), f"{page.name} shows {src}, which does not exist"
            used.add(target)
    unused = sorted(p.name for p in (DOCS / "img").iterdir() if p.resolve() not in used)
    assert not unused, f"images no page shows: {unused}"


def test_the_api_reference_lists_every_public_name_where_it_is_defined():
    import vaelens

    text = (DOCS / "reference.md").read_text(encoding="utf-8")
    for name in vaelens.__all__:
        if name.startswith("_"):
            continue
        defined = f"{getattr(vaelens, name).__module__}.{name}"
        assert f"| `vaelens.{name}` | [`{defined}`][{defined}] |" in text, f"reference.md: no row for {name}"


def test_doctests_in_docstrings_are_fenced_for_the_reference():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        from griffe_doctest import fence_doctests
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    text = "Adds.\n\n>>> 1 + 1\n2\n\nThen:\n    >>> f(\n    ...     x)\n    [x][y]"
    assert fence_doctests(text) == (
        "Adds.\n\n```pycon\n>>> 1 + 1\n2\n```\n\nThen:\n```pycon\n    >>> f(\n    ...     x)\n    [x][y]\n```"
    )
    assert fence_doctests("No doctest here.") == "No doctest here."
