"""The `vaelens` command: a thin shell over the Python API. Every command has --json.

Each command lives in its own module `vaelens.cli.<name>` with `register(subparsers)`; the module
sets `func` (args -> exit code) as the parser default. Bad input raises VaeLensError, which is
printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vaelens import __version__
from vaelens.cli import examples
from vaelens.cli.flags import error_line
from vaelens.errors import VaeLensError

# Order is the order of `vaelens --help`. A module that is not there yet is skipped.
COMMAND_MODULES = (
    "families",
    "shapes",
    "explain",
    "trace",
    "memory",
    "pipeline",
    "encode",
    "decode",
    "roundtrip",
    "inspect",
    "precision",
    "report",
    "stats",
    "cache",
    "validate",
    "env",
)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"vaelens {self.prog.split(' ', 1)[-1] if ' ' in self.prog else ''}: error: "
                  f"{message} (see --help)\n".replace("vaelens : ", "vaelens: "))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="vaelens",
        description="See what a diffusion model's VAE does to an image: shapes, latents, tokens, memory.",
    )
    parser.add_argument("--version", action="version", version=f"vaelens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"vaelens.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"vaelens.cli.{name}":
                continue
            raise
        module.register(sub)
        examples.apply(sub, name, module)
    return parser


_VALUE_OPTIONS = ("--size", "--width", "--height", "--frames", "--batch", "--budget")


def _glue_negative_values(argv: list[str]) -> list[str]:
    """`--size -8x8` -> `--size=-8x8`, so that a negative size reaches our validator (which names
    the value) instead of argparse reading it as an unknown option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if tok in _VALUE_OPTIONS and len(nxt) > 1 and nxt[0] == "-" and nxt[1].isdigit():
            out.append(f"{tok}={nxt}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices.get(command) or parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(_glue_negative_values(list(sys.argv[1:] if argv is None else argv)))
    if extra:  # say it as the subcommand: `vaelens encode: error: unrecognized arguments: …`
        _subparser(parser, getattr(args, "command", None)).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VaeLensError as exc:
        print(error_line(args.command, _subparser(parser, args.command), exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaelens: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
