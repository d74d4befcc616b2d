"""Every command has --help with a description and at least two examples; every option has help text."""

from __future__ import annotations

import argparse

import pytest

from vaelens.cli import build_parser


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMANDS = sorted(_subparsers())


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_a_description_and_two_examples(name):
    sp = _subparsers()[name]
    assert sp.description and len(sp.description) > 20, name
    text = sp.format_help()
    examples = [line for line in text.split("examples:", 1)[-1].splitlines() if line.strip().startswith("vaelens ")]
    assert "examples:" in text and len(examples) >= 2, text


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help_text(name):
    missing = [a.option_strings or a.dest for a in _subparsers()[name]._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not missing, f"vaelens {name}: options without help: {missing}"


def test_help_exits_zero_for_every_command(cli):
    for name in COMMANDS:
        r = cli(name, "--help")
        assert r.code == 0 and "usage: vaelens " + name in r.out and "examples:" in r.out
