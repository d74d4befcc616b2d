"""The library's own vocabulary: typed fields instead of prose flags, one name lookup."""

from __future__ import annotations

import ast
import io
import re
from contextlib import redirect_stderr
from pathlib import Path

import pytest

import vaelens
from tiny_models import TINY_KL
from vaelens.contract import apply_size_rule, shapes
from vaelens.errors import UnknownFamilyError, VaeLensError, did_you_mean
from vaelens.families import FAMILIES, SpecOrigin, get_family
from vaelens.families.from_config import spec_from_config


def test_spec_origin_is_a_typed_field_not_a_note():
    derived = spec_from_config(dict(TINY_KL), source="tiny/config.json")
    assert derived.origin is SpecOrigin.CONFIG
    assert {s.origin for s in FAMILIES} == {SpecOrigin.REGISTRY}
    # The floor warning names who floors: VaeImageProcessor for a bare config, the pipeline otherwise,
    # whatever the notes say.
    _, bare = apply_size_rule(derived, "height", derived.spatial_factor + 1)
    assert bare is not None and "VaeImageProcessor" in bare
    _, flux = apply_size_rule(get_family("flux1"), "height", 1000)
    assert flux is not None and "as its pipeline does" in flux


@pytest.mark.parametrize(("name", "known", "hint"), [
    ("sdxll", ["sd15", "sdxl", "flux1"], "did you mean sdxl? "),
    ("zzz", ["sd15", "sdxl"], ""),
])
def test_did_you_mean(name, known, hint):
    assert did_you_mean(name, known) == hint


def test_unknown_family_and_pipeline_share_the_suggestion():
    from vaelens.pipelines import get_pipeline

    with pytest.raises(UnknownFamilyError, match="did you mean sdxl"):
        get_family("sdxll")
    with pytest.raises(ValueError, match="did you mean .*flux1-dev"):
        get_pipeline("flux1-devv")


# ------------------------------------------------------------------------------ no CLI flags in the library

SRC = Path(vaelens.__file__).parent
_FLAG = re.compile(r"(?<![\w-])--[a-zA-Z]")
_QUOTED_COMMAND = re.compile(r"`[^`]*`")  # another tool's command line, quoted as code (huggingface-cli …)


def _strings(node: ast.AST) -> list[tuple[int, str]]:
    """(id, text) of every string under `node`; an f-string is one text, its fields written {}."""
    fstrings = [n for n in ast.walk(node) if isinstance(n, ast.JoinedStr)]
    inner = {id(v) for f in fstrings for v in f.values}
    out = [(id(f), "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in f.values)) for f in fstrings]
    out += [(id(n), n.value) for n in ast.walk(node)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in inner]
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body:
            first = n.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _message_strings(path: Path) -> list[str]:
    """String constants that can reach a user as an error or a warning: everything raised or passed to
    an *Error / *Warning / warn(...) call; outside render/ (which owns presentation) every string that is
    not a docstring, since library results (notes, reasons) are shown by the CLI too."""
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    picked: dict[int, str] = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Raise) and n.exc is not None:
            picked.update(_strings(n.exc))
        elif isinstance(n, ast.Call):
            f = n.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name.endswith(("Error", "Warning")) or name == "warn":
                picked.update(_strings(n))
    if "render" not in path.relative_to(SRC).parts:
        picked.update((i, text) for i, text in _strings(tree) if i not in docs)
    return list(picked.values())


def test_library_messages_name_parameters_never_cli_flags():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).parts[0] == "cli":
            continue
        for text in _message_strings(path):
            if _FLAG.search(_QUOTED_COMMAND.sub("", text)):
                offenders.append(f"{path.relative_to(SRC)}: {text!r}")
    assert not offenders, "library strings name CLI flags (write name=, the CLI maps it):\n" + "\n".join(offenders)


@pytest.mark.parametrize(("argv", "flag", "message"), [
    (["shapes", "sdxl", "--frames", "9"], "--frames", "frames 9: sdxl is an image VAE; frames= applies"),
    (["shapes", "sdxl", "--dtype", "fp64"], "--dtype", "dtype 'fp64' is not supported; choose one of: fp32"),
    (["shapes", "sdxl", "--size", "big"], "--size", "size 'big' is not WIDTHxHEIGHT"),
    (["memory", "sdxl", "--budget", "8G"], "--budget", "budget '8G' is ambiguous"),
    (["shapes", "sdxll"], "MODEL", "unknown family 'sdxll'"),
    (["shapes", "/nonexistent/config.json"], "MODEL", "config path '/nonexistent/config.json' does not exist"),
    (["memory", "sdxl", "--plot", "m.txt"], "--plot", "plot 'm.txt': matplotlib cannot write .txt"),
])
def test_cli_names_the_flag_from_the_parser(argv, flag, message):
    """The error line is `argument FLAG: <the library's message>`: the flag read from the subcommand's parser
    by the error's `param`, the message as the library wrote it."""
    from vaelens.cli import main

    err = io.StringIO()
    with redirect_stderr(err):
        code = main(argv)
    assert code == 2
    line = err.getvalue()
    assert line.count("\n") == 1
    assert line.startswith(f"vaelens {argv[0]}: error: argument {flag}: {message}"), line


def test_flag_lookup_reads_the_parser():
    from vaelens.cli import _subparser, build_parser
    from vaelens.cli.flags import flag_for

    parser = build_parser()
    memory = _subparser(parser, "memory")
    assert [flag_for(memory, p) for p in ("frames", "budget", "plot", "force", "model", "allow_pickle")] == [
        "--frames", "--budget", "--plot", "--force", "MODEL", None]
    # an option added to a parser is found without any table to update
    memory.add_argument("--new-thing")
    assert flag_for(memory, "new_thing") == "--new-thing"


def test_an_error_without_param_is_printed_as_written():
    from vaelens.cli.flags import error_line

    line = error_line("shapes", __import__("argparse").ArgumentParser(), VaeLensError("x 1 is wrong", param="x"))
    assert line == "vaelens shapes: error: x 1 is wrong"
    with pytest.raises(VaeLensError, match="frames= applies to video families"):
        shapes("sdxl", vaelens.PixelRequest(width=64, height=64, frames=9))


def test_every_module_imports_first():
    """Each vaelens module imports on its own (no import cycle that works only in some order: `import
    vaelens.trace` first once failed, trace.dispatch -> memory -> memory.estimate -> trace)."""
    import subprocess
    import sys

    names = sorted(
        ".".join(("vaelens", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        for p in SRC.rglob("*.py")
    )
    script = (
        "import importlib, sys, torch, diffusers\n"
        "bad = []\n"
        f"for name in {names!r}:\n"
        "    for key in [k for k in sys.modules if k == 'vaelens' or k.startswith('vaelens.')]:\n"
        "        del sys.modules[key]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as exc:\n"
        "        bad.append(f'{name}: {exc}')\n"
        "print('\\n'.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""
