"""Blocks of a VAE in call order, the upcast (blocks kept in fp32) applied to a real module, and the
two lines of Python that apply it in diffusers.

A *block* is a child of the VAE's encoder/decoder (`decoder.mid_block`, `decoder.conv_out`), or an item of
a ModuleList/Sequential there (`decoder.up_blocks.3`, `decoder.layers.5` for AutoencoderTiny), or a
top-level module without children (`post_quant_conv`): the units diffusers itself upcasts
(pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py upcast_vae keeps post_quant_conv,
decoder.conv_in and decoder.mid_block in the pipeline dtype and the rest in fp32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_CONTAINERS = ("ModuleList", "Sequential", "ModuleDict")


def block_names(module: Any, calls: Sequence[str]) -> tuple[str, ...]:
    """module + module paths in order of first call -> the blocks that ran, in call order.

    >>> import torch
    >>> m = torch.nn.Module(); m.decoder = torch.nn.Module()
    >>> m.decoder.conv_in = torch.nn.Conv2d(1, 1, 1); m.decoder.up = torch.nn.ModuleList([torch.nn.ReLU()])
    >>> block_names(m, ["decoder", "decoder.conv_in", "decoder.up.0"])
    ('decoder.conv_in', 'decoder.up.0')
    """
    blocks: set[str] = set()
    for name, child in module.named_children():
        grand = list(child.named_children())
        if not grand:
            blocks.add(name)
            continue
        for gname, g in grand:
            path = f"{name}.{gname}"
            if type(g).__name__ in _CONTAINERS and list(g.children()):
                blocks.update(f"{path}.{n}" for n, _ in g.named_children())
            else:
                blocks.add(path)
    return tuple(p for p in calls if p in blocks)


def block_of(path: str, blocks: Sequence[str]) -> int | None:
    """A module path -> index of the block it is (or lies inside), or None (outside every block)."""
    for i, b in enumerate(blocks):
        if path == b or path.startswith(b + "."):
            return i
    return None


def _cast_hook(dtype: Any):
    import torch

    def cast(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.to(dtype)
        if isinstance(x, tuple):
            return tuple(cast(v) for v in x)
        return x

    def hook(mod: Any, args: Any, kwargs: Any):
        return cast(args), {k: cast(v) for k, v in kwargs.items()}

    return hook


def apply_upcast(module: Any, upcast: Sequence[str], after: str | None, dtype: Any) -> list[Any]:
    """A module already at `dtype` (fp16) -> the `upcast` blocks cast to fp32, each casting its inputs to
    fp32, and the block `after` them casting its inputs back to `dtype`; returns the hook handles
    (handle.remove() takes the casts off; the blocks stay fp32). What `snippet` writes, done."""
    import torch

    from vaelens.build import quiet_diffusers

    handles = []
    with quiet_diffusers():
        for name in upcast:
            sub = module.get_submodule(name).to(torch.float32)
            handles.append(sub.register_forward_pre_hook(_cast_hook(torch.float32), with_kwargs=True))
    if after is not None:
        handles.append(module.get_submodule(after).register_forward_pre_hook(_cast_hook(dtype), with_kwargs=True))
    return handles


def snippet(upcast: Sequence[str], after: str | None, *, dtype: str = "float16", cls: str = "AutoencoderKL") -> str:
    """-> the two lines of Python that keep `upcast` in fp32 in a diffusers VAE loaded at `dtype`
    (with the load line above them as a comment)."""
    half = {"float16": "half", "bfloat16": "bfloat16"}[dtype]
    names = ", ".join(f'"{n}"' for n in upcast)
    lines = [
        f"# vae = {cls}.from_pretrained(..., torch_dtype=torch.{dtype})",
        f"for n in [{names}]: vae.get_submodule(n).float().register_forward_pre_hook("
        "lambda m, a: tuple(t.float() if torch.is_tensor(t) else t for t in a))",
    ]
    if after is not None:
        lines.append(f'vae.get_submodule("{after}").register_forward_pre_hook('
                     f"lambda m, a: tuple(t.{half}() if torch.is_tensor(t) else t for t in a))")
    else:
        lines.append("# (the upcast blocks end the call: its output is fp32)")
    return "\n".join(lines)
