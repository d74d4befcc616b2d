"""Library messages speak in parameter names (`frames=`, `family=NAME`, `allow_pickle=True`); the CLI
shows its flags. One table maps a parameter to its flag, and `cli_message` rewrites a message with it.

    name=True    -> --flag            (a switch)
    name=VALUE   -> --flag VALUE      (the value as written, quotes included)
    name=        -> --flag [METAVAR]  (a bare mention: the flag, with its metavar where one helps)

Only the names in the table are rewritten, and only where `name=` starts a word, so `weights_only=True`
or `torch.load(...)` in a message stay as they are.
"""

from __future__ import annotations

import re

# parameter -> (flag, what a bare mention shows after the flag)
PARAM_FLAGS: dict[str, tuple[str, str]] = {
    "source": ("--vae", ""),  # load_vae(source) is --vae in every command that loads weights
    "vae": ("--vae", ""),
    "family": ("--family", ""),
    "device": ("--device", ""),
    "dtype": ("--dtype", ""),
    "frames": ("--frames", ""),
    "batch": ("--batch", ""),
    "size": ("--size", "WxH"),
    "op": ("--op", ""),
    "upcast": ("--upcast", ""),
    "allow_pickle": ("--allow-pickle", ""),
    "offload": ("--offload", ""),
    "vae_tiling": ("--vae-tiling", ""),
    "tiled": ("--tiled", ""),
    "sliced": ("--sliced", ""),
    "measure": ("--measure", ""),
    "budget": ("--budget", ""),
    "image": ("--image", ""),
    "pipeline": ("--pipeline", ""),
}

_PARAM = re.compile(
    r"(?<![\w.\-])(" + "|".join(sorted(PARAM_FLAGS, key=len, reverse=True)) + r")="
    r"(True\b|'[^']*'|\"[^\"]*\"|[^\s,;)\]]+)?"
)


def _flag(match: re.Match[str]) -> str:
    flag, metavar = PARAM_FLAGS[match.group(1)]
    value = match.group(2)
    if value == "True":
        return flag
    if value is None:
        return f"{flag} {metavar}" if metavar else flag
    return f"{flag} {value}"


def cli_message(text: str) -> str:
    """A library message -> the same message in CLI flags.

    >>> cli_message("frames= applies to video families; pass family=NAME or allow_pickle=True")
    '--frames applies to video families; pass --family NAME or --allow-pickle'
    """
    return _PARAM.sub(_flag, text)
