"""Issue 18 item 4: errors carry data. The remedy of an error is in its fields, so the CLI says it in flag
words without editing the library's message; a refusal names the parameter at fault in `param`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from vaelens.errors import ChoiceRequiredError, OutputError, OutputExistsError, VaeLensError

SRC = Path(__file__).resolve().parents[1] / "src" / "vaelens"


def _calls_on_message(tree: ast.AST):
    """-> (line, text) of every `str(exc).<method>(...)` / `exc.args[0].<method>(...)`: a message being edited."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        target = node.func.value
        if node.func.attr in ("replace", "split", "partition", "removesuffix", "removeprefix") and (
            isinstance(target, ast.Call) and isinstance(target.func, ast.Name) and target.func.id == "str"
            and target.args and isinstance(target.args[0], ast.Name) and target.args[0].id in ("exc", "err", "e")
        ):
            yield node.lineno, ast.unparse(node)


def test_the_cli_never_edits_a_library_message():
    found = [f"{p.relative_to(SRC)}:{line}: {text}" for p in sorted((SRC / "cli").glob("*.py"))
             for line, text in _calls_on_message(ast.parse(p.read_text()))]
    assert found == []
    # the scanner does find an edit when there is one (so the empty list above means something)
    assert list(_calls_on_message(ast.parse("str(exc).replace('a', 'b')")))


def test_output_exists_carries_its_remedy_as_fields(tmp_path):
    from vaelens.outputs import check_output

    p = tmp_path / "a.png"
    p.write_bytes(b"x")
    with pytest.raises(OutputExistsError) as err:
        check_output(p, kind="image")
    e = err.value
    assert (e.param, e.value, e.path, e.reason, e.effect) == ("output", str(p), str(p), "already exists", "replace it")
    assert str(e) == f"output {str(p)!r} already exists; pass force=True to replace it"
    assert check_output(p, kind="image", force=True) == p


def test_choice_required_says_the_remedy_from_param_and_choices():
    e = ChoiceRequiredError("x does not say", param="normalized", choices=(True, False))
    assert (e.param, e.value, e.choices, e.reason) == ("normalized", None, (True, False), "x does not say")
    assert str(e) == "x does not say; pass normalized=True or normalized=False"


def test_a_latent_file_that_does_not_say_is_a_choice_required(tmp_path):
    from safetensors.torch import save_file

    from vaelens.latents import raw_latent_from_file

    bare = tmp_path / "bare.safetensors"
    save_file({"latent": torch.randn(1, 4, 8, 8)}, str(bare))
    with pytest.raises(ChoiceRequiredError) as err:
        raw_latent_from_file(bare)
    assert err.value.param == "normalized" and err.value.choices == (True, False)


def test_cache_out_refusals_carry_param_and_the_cli_names_its_flag(tmp_path, cli):
    from test_datasets import make_images
    from vaelens.datasets.store import check_out

    data, full, afile = tmp_path / "data", tmp_path / "full", tmp_path / "afile"
    make_images(data, 2)
    full.mkdir()
    (full / "x").write_text("not a cache")
    afile.write_text("x")
    with pytest.raises(OutputExistsError) as err:
        check_out(full)
    assert (err.value.param, err.value.value, err.value.effect) == ("out", str(full), "write into it anyway")
    check_out(full, force=True)  # force=True is the remedy the fields name
    for out in (afile, data / "sub"):
        with pytest.raises(OutputError) as err:
            check_out(out, data_root=data)
        assert not isinstance(err.value, OutputExistsError) and err.value.param == "out"
    r = cli("cache", str(data), "-o", str(full), "--vae", "demo")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "argument --output:" in r.err and "not a vaelens cache" in r.err
    assert "pass --force to write into it anyway" in r.err and "force=True" not in r.err
    r = cli("cache", str(data), "-o", str(afile), "--vae", "demo")
    assert r.code == 2 and "argument --output: out" in r.err and "is a file" in r.err, r.err


def test_a_library_error_prints_its_message_with_the_flag_of_its_param(cli):
    r = cli("stats", "/nonexistent-h18b", "--engine", "ray", "--address", "nope", "--vae", "demo")
    assert r.code == 2 and "argument --address: address 'nope' is not host:port" in r.err, r.err


def test_errors_are_value_errors_with_fields():
    e = VaeLensError("m", param="p", value=1, choices=[1, 2])
    assert isinstance(e, ValueError) and e.choices == (1, 2) and e.needed_bytes is None
