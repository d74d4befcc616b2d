"""Shared fixtures: run the CLI in-process and capture its output."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def cli(capsys):
    """cli("shapes", "sdxl", ...) -> CliResult(code, stdout, stderr)."""
    from vaelens.cli import main

    def run(*argv: str) -> CliResult:
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse exits on --help / usage errors
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def check_golden(name: str, text: str, update: bool) -> None:
    """Compare text with tests/golden/<name>; write it instead when --update-golden is given."""
    path = GOLDEN / name
    if update or not path.exists():
        path.write_text(text)
        if not update:
            pytest.fail(f"golden file {path} did not exist; written now — review and commit it")
    assert text == path.read_text(), f"output differs from {path}; rerun with --update-golden if intended"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/* files")


@pytest.fixture
def golden(request):
    update = request.config.getoption("--update-golden")
    return lambda name, text: check_golden(name, text, update)
