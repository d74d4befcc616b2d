"""`vaelens inspect` as a library call: latent files or images -> the latent's channels, drawn and scored.

latent files (.safetensors / ComfyUI .latent) | images (encoded with the VAE) -> raw latent z
-> LatentInspection (vaelens.latents) and where its figures go (PREFIX_channels.png, PREFIX_rgb_approx.png);
vaelens.render.latents.draw_inspection(run) draws them (the engine returns data; the CLI draws).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.run.steps import Upcast

LATENT_SUFFIXES = (".safetensors", ".latent")


@dataclass(frozen=True, slots=True, kw_only=True)
class InspectItem:
    """One input inspected: the inspection, the batch item to draw, where its figures go (`files`:
    channels, rgb_approximation when there is one) and, once drawn, the channel grid (GridInfo)."""

    source: str
    inspection: Any  # LatentInspection
    files: dict[str, str]
    prefix: str = ""  # PREFIX of the figures
    index: int = 0
    grid: Any = None  # vaelens.render.figures.GridInfo, set by vaelens.render.latents.draw_inspection


@dataclass(frozen=True, slots=True, kw_only=True)
class InspectRun:
    """inspect_files' result: the items, and the inputs skipped (path -> reason)."""

    items: tuple[InspectItem, ...]
    skipped: dict[str, str] = field(default_factory=dict)


def is_latent_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in LATENT_SUFFIXES


def inspect_files(
    inputs: Any = "demo",
    prefix: str | Path = "inspect",
    *,
    vae: Any = None,
    normalized: bool | None = None,
    index: int = 0,
    upcast: Upcast | str = Upcast.AUTO,
    strict: bool = False,
    force: bool = False,
    progress: Any = None,
) -> InspectRun:
    """latent files / images / folders / globs -> InspectRun: each input's LatentInspection and where its
    figures go (PREFIX_channels.png and PREFIX_rgb_approx.png; several inputs: PREFIX_<name>_…), checked
    writable up front and drawn by vaelens.render.latents.draw_inspection(run).

    vae: needed to encode images (default then: the demo VAE) and to draw the RGB approximation of a latent
    file; a latent file alone gives its statistics. normalized: True/False overrides what a file says.
    Of several inputs, one that cannot be read is skipped and listed (strict=True: raised at the first);
    a single input's error is raised.
    """
    from vaelens.outputs import prepare_outputs
    from vaelens.progress import null_bar
    from vaelens.run.inputs import expand, loaded, stems, weights_paths

    sources = expand(inputs, extra_suffixes=LATENT_SUFFIXES)
    prefixes = [Path(prefix)] if len(sources) == 1 else [Path(f"{prefix}_{n}") for n in stems(sources)]
    planned = [Path(f"{p}_{k}.png") for p in prefixes for k in ("channels", "rgb_approx")]
    prepare_outputs(planned, inputs=[*sources, *weights_paths(vae or "demo")], force=force, kind="image")
    needs_vae = vae is not None or not all(is_latent_file(s) for s in sources)
    model = loaded(vae if vae is not None else "demo") if needs_vae else None
    bar = progress or null_bar()
    bar(0, len(sources), "")
    items, skipped = [], {}
    for source, pre in zip(sources, prefixes, strict=True):
        bar.stage(Path(source).name)
        try:
            use = model if vae is not None or not is_latent_file(source) else None  # a file: only the VAE given
            items.append(_inspect_one(source, pre, use, normalized=normalized, index=index, upcast=upcast))
        except VaeLensError as exc:
            if strict or len(sources) == 1 or param_is(exc, "index"):
                raise
            skipped[source] = str(exc)
        bar.advance(1)
    return InspectRun(items=tuple(items), skipped=skipped)


def param_is(exc: VaeLensError, name: str) -> bool:
    return getattr(exc, "param", None) == name


def _inspect_one(source: str, prefix: Path, vae, *, normalized, index: int, upcast) -> InspectItem:
    from vaelens.latents import inspect_latent, raw_latent_from_file

    if is_latent_file(source):
        raw, lf, notes = raw_latent_from_file(source, vae=vae, normalized=normalized)
        family = vae.family if vae is not None else lf.family
    else:
        from vaelens.images import read_for_family, to_pixels
        from vaelens.run.steps import encode_step

        arrays, infos = read_for_family([source], vae.spec)
        raw, _ = encode_step(vae, to_pixels(arrays), upcast=upcast)
        family, notes = vae.family, infos[0].warnings
    if not 0 <= index < raw.shape[0]:
        raise VaeLensError(f"index {index} is outside the batch of {raw.shape[0]}", param="index", value=index)
    insp = inspect_latent(raw, vae=vae, family=family, warnings=tuple(notes), upcast=upcast)
    files = {"channels": f"{prefix}_channels.png"}
    if insp.projection is not None and insp.approximation is not None:
        files["rgb_approximation"] = f"{prefix}_rgb_approx.png"
    return InspectItem(source=source, inspection=insp, files=files, prefix=str(prefix), index=index)
