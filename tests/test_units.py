"""vaelens.units: the one parser and formatter of byte counts (decimal and binary spelled apart, capped)."""

from __future__ import annotations

import pytest

from vaelens.errors import BudgetError, VaeLensError
from vaelens.units import MAX_BUDGET_BYTES, budget_bytes, human_bytes, parse_bytes

CASES = [("8GiB", 8 * 2**30), ("8GB", 8 * 10**9), ("8 gib", 8 * 2**30), ("512MiB", 512 * 2**20),
         ("1.5KB", 1500), ("1e9B", 10**9), ("1PiB", 2**50), ("1024B", 1024)]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_parse_bytes_units(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["1e30GiB", "2PiB", "1e16B", "1025TiB"])
def test_issue20_12_budget_cap(text):
    with pytest.raises(BudgetError, match="limit of 1 PiB") as exc:
        parse_bytes(text)
    assert (exc.value.param, exc.value.value) == ("budget", text)


@pytest.mark.parametrize(("text", "binary", "decimal"), [("8G", "8GiB", "8GB"), ("512m", "512MiB", "512MB"),
                                                          ("2T", "2TiB", "2TB")])
def test_issue20_12_bare_unit_letter_is_ambiguous(text, binary, decimal):
    with pytest.raises(BudgetError, match="ambiguous") as exc:
        parse_bytes(text)
    assert binary in str(exc.value) and decimal in str(exc.value)


@pytest.mark.parametrize("text", ["8", "lots", "24 bananas", "-1GiB", "0GiB"])
def test_parse_bytes_refuses(text):
    with pytest.raises(BudgetError, match=repr(text)):
        parse_bytes(text)


def test_budget_bytes_takes_bytes_or_a_size():
    assert budget_bytes(1000) == 1000
    assert budget_bytes("1KiB") == 1024
    for bad in (0, -5, MAX_BUDGET_BYTES + 1, 1.5, True, None):
        with pytest.raises(VaeLensError):
            budget_bytes(bad)


def test_human_bytes_round_trips_through_parse_bytes():
    for n in (1, 1023, 5 * 2**20, 3 * 2**30 + 2**29):
        text = human_bytes(n).replace(" ", "")
        assert parse_bytes(text) == pytest.approx(n, rel=0.01)


def test_issue20_12_budget_rule_in_help(capsys):
    from vaelens.cli import main

    for command in ("memory", "pipeline"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "GB = 10^9 bytes, GiB = 2^30 bytes" in out
    assert main(["memory", "sdxl", "--budget", "1e30GiB"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "limit of 1 PiB" in err
