"""The report in a real browser: headless Chromium (Debian's `chromium`, installed by
scripts/install_browser.sh, which .ci/run calls) driven by Playwright, the page opened from disk with
every non-file request aborted. Fails — never skips — when the browser is missing, unless
VAELENS_NO_BROWSER=1 says this machine has none on purpose.

The full-page screenshot is kept in out/test-artefacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("VAELENS_CHROMIUM", "/usr/bin/chromium")
ARTEFACTS = Path(__file__).resolve().parents[1] / "out" / "test-artefacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-default-apps",
        "--disable-extensions"]


@dataclass
class PageCheck:
    """What the browser saw: console errors, page errors, requests blocked or failed, images, text."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    text: str = ""
    screenshot: Path | None = None

    @property
    def broken_images(self) -> list[dict]:
        return [i for i in self.images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]


def _browser_or_fail():
    if os.environ.get("VAELENS_NO_BROWSER") == "1":
        pytest.skip("VAELENS_NO_BROWSER=1: no browser on this machine by choice")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]' (or set VAELENS_NO_BROWSER=1)")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install_browser.sh (or set VAELENS_NO_BROWSER=1)")
    return sync_playwright


def open_offline(html_path: Path, screenshot: Path | None = None) -> PageCheck:
    """Open a file in headless Chromium with the network blocked; record everything that went wrong."""
    sync_playwright = _browser_or_fail()
    check = PageCheck()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})

            def route(r):
                if r.request.url.startswith(("file:", "data:")):
                    r.continue_()
                else:
                    check.blocked.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("console", lambda m: m.type == "error" and check.console_errors.append(m.text))
            page.on("pageerror", lambda e: check.page_errors.append(str(e)))
            page.on("requestfailed", lambda r: check.failed.append(f"{r.url[:80]} {r.failure}"))
            page.goto(html_path.resolve().as_uri(), wait_until="load")
            page.wait_for_load_state("networkidle")
            check.images = page.evaluate(
                "Array.from(document.images).map(i => ({src: i.src.slice(0, 40), complete: i.complete, "
                "width: i.naturalWidth, height: i.naturalHeight}))")
            check.text = page.inner_text("body")
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
                check.screenshot = screenshot
        finally:
            browser.close()
    return check


def _not_blank(path: Path) -> tuple[int, float]:
    """screenshot -> (distinct colours, fraction of pixels that are not the background)."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        background = max(colours)[1] if colours else (255, 255, 255)
        total = rgb.width * rgb.height
        other = total - sum(n for n, c in colours if c == background)
        return len(colours), other / total


def test_report_in_chromium_offline(tmp_path):
    from vaelens.options import PixelRequest
    from vaelens.render.report import render_report, save_report
    from vaelens.render.tables import human_bytes, shape_str
    from vaelens.report import build_report

    _browser_or_fail()  # before the minute of work, so a missing browser fails fast
    # the arguments of test_report.py's demo_report: traces are cached within one pytest run
    rep = build_report("sdxl", PixelRequest(width=256, height=256), vae="demo", budget_bytes=2**28,
                       pipeline="sd15")
    path = save_report(render_report(rep), tmp_path / "report.html")
    shot = ARTEFACTS / "report_full.png"
    check = open_offline(path, shot)
    assert check.console_errors == [] and check.page_errors == []
    assert check.blocked == [] and check.failed == []
    assert len(check.images) == 5 and check.broken_images == []
    for needle in (shape_str(rep.plan.latent_shape), human_bytes(rep.estimate("decode").peak_bytes),
                   human_bytes(rep.estimate("encode").peak_bytes), f"{rep.real.psnr:.2f} dB",
                   f"{rep.real.ssim:.4f}", rep.estimate("decode").peak_at, "APPROXIMATION",
                   f"diffusers {rep.versions['diffusers']}", f"torch {rep.versions['torch']}"):
        assert needle in check.text or needle.lower() in check.text.lower(), needle
    colours, covered = _not_blank(shot)
    assert colours > 200 and covered > 0.05, (colours, covered)
    shutil.copy(path, ARTEFACTS / "report.html")


def test_the_check_catches_broken_pages(tmp_path):
    """The checker itself can fail: a broken image, a network request and a console error are all seen."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><link rel='icon' href='data:,'></head><body>"
        "<img id=a src='data:image/png;base64,AAAA'>"
        "<img id=b src='https://example.invalid/x.png'>"
        "<script>console.error('boom')</script><p>hello</p></body></html>")
    check = open_offline(page)
    assert check.console_errors  # 'boom' (and the failed loads)
    assert any("example.invalid" in u for u in check.blocked)
    assert len(check.broken_images) == 2
    assert "hello" in check.text
