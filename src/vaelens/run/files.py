"""`vaelens encode` and `vaelens decode` as library calls: files in, files out, typed results.

images | folder | glob | one video -> encode_files(...) -> latent file (vaelens' or ComfyUI's) + EncodeRun
latent file -> decode_file(...) -> images or MP4 (+ frames) + DecodeRun
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaelens.errors import ChoiceRequiredError, WeightsError
from vaelens.options import Posterior
from vaelens.progress import Bar, null_bar
from vaelens.run.inputs import check_batch_size, check_fps, expand, loaded, read_inputs, weights_paths
from vaelens.run.steps import StepReport, Upcast, merge_steps


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodeRun:
    """What encode_files did: the file written, its metadata, each input's info, one report per call."""

    output: Path
    format: str  # "vaelens safetensors" | "comfyui.latent (raw latents)"
    vae: Any  # LoadedVae
    metadata: Any  # LatentMetadata
    latent: Any  # [B,C,(F',)h,w] float32 CPU, as written
    infos: tuple[Any, ...]  # ImageInfo per image | one VideoInfo
    reports: tuple[StepReport, ...]
    tiling: Any = None  # the TilingPlan of the last call (with a budget)
    counts: Any = None  # what that call's exact run copied (RunCounts; None untiled or approximate)
    warnings: tuple[str, ...] = field(default=())

    @property
    def nonfinite(self) -> int:
        return sum(r.nonfinite for r in self.reports)


def encode_files(
    inputs: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    vae: Any = "demo",
    normalized: bool = True,
    comfy: bool = False,
    posterior: Posterior | str = Posterior.MODE,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    batch_size: int = 4,
    video: bool = False,
    fps: float | None = None,
    max_frames: int | None = None,
    upcast: Upcast | str = Upcast.AUTO,
    budget: int | str | None = None,
    device_profile: Any = None,
    spill_dir: Any = None,
    force: bool = False,
    progress: Bar | None = None,
) -> EncodeRun:
    """image files / folder / glob / one video -> one latent file [B,C,(F',)h,w] (or [1,C,F',h,w] for a clip).

    vae: LoadedVae, diffusers module, Weights or a source ("demo", a folder, a file, a cached repo id).
    comfy=True writes ComfyUI's .latent (raw latents). size=(H, W) resizes every image first. Item i's
    posterior sample is seeded seed + i. The output is checked before any work and written atomically.
    budget / device_profile / spill_dir: every call inside the budget (vaelens.encode); `tiling` and
    `counts` are the last call's plan and what its run copied.

    >>> run = encode_files("demo", "coffee.safetensors", vae="demo")  # doctest: +SKIP
    """
    from vaelens.latents import LatentMetadata
    from vaelens.outputs import prepare_outputs
    from vaelens.run.steps import posterior_label
    from vaelens.run.verbs import budgeted, encode
    from vaelens.weights.load import weights_sha256

    batch_size, fps = check_batch_size(batch_size), check_fps(fps)
    posterior = Posterior.parse(posterior)
    _check_tiling(budget, device_profile, spill_dir)
    files = expand(inputs)
    prepare_outputs([output], inputs=files + weights_paths(vae), force=force, kind="comfy" if comfy else "latent")
    vae = loaded(vae)
    read = read_inputs(files, vae.spec, size=size, video=video, fps=fps, max_frames=max_frames)
    normalized = normalized and not comfy
    notes = [*(n for i in read.infos for n in i.warnings), *read.warnings]
    if posterior is Posterior.SAMPLE and posterior_label(vae, posterior) == "deterministic":
        notes.append(f"a posterior sample was asked for, but {vae.family} ({vae.spec.diffusers_class}) has no "
                     "posterior: its one deterministic latent is stored (recorded as posterior: deterministic)")
    elif seed and posterior is Posterior.MODE:
        notes.append(f"seed {seed} has no effect without a posterior sample: the posterior's mode is stored")
    bar = progress or null_bar()
    import torch

    from vaelens.images import to_pixels

    groups = ([to_pixels(read.arrays).permute(1, 0, 2, 3).unsqueeze(0)] if read.clip else
              [to_pixels(read.arrays[s : s + batch_size]) for s in range(0, len(read.arrays), batch_size)])
    unit = "clip" if read.clip else "image"
    bar(0, 1 if read.clip else len(read.arrays), "")
    chunks, reports, done = [], [], 0
    with budgeted(vae.module, budget, device_profile=device_profile, spill_dir=spill_dir) as plans:
        for batch in groups:
            bar.stage(f"{unit} {done + 1}" + (f"-{done + len(batch)}" if len(batch) > 1 else ""))
            enc = encode(vae, batch, normalized=normalized, posterior=posterior, seed=seed + done, upcast=upcast)
            chunks.append(enc.latent)
            reports.append(enc.report)
            done += len(batch)
            bar.advance(len(batch))
    latent = torch.cat(chunks)
    h, w = read.arrays[0].shape[:2]
    label = posterior_label(vae, posterior)
    metadata = LatentMetadata(
        family=vae.family, diffusers_class=vae.spec.diffusers_class, normalized=normalized,
        normalization=vae.spec.normalization,
        pixel_shape=(1, 3, len(read.arrays), h, w) if read.clip else (len(read.arrays), 3, h, w),
        latent_shape=tuple(latent.shape), sources=tuple(i.path for i in read.infos), vae_source=vae.source,
        weights_sha256=weights_sha256(vae), posterior=label, seed=seed if label == "sample" else None,
        dtype=vae.dtype.value, extra={"fps": read.fps, "frames": len(read.arrays)} if read.clip else {},
    )
    out, fmt = _write_latents(Path(output), latent, metadata, comfy=comfy)
    if comfy and out.suffix != ".latent":
        notes.append(f"ComfyUI's LoadLatent lists files ending in .latent; wrote {out}")
    tiling, counts = plans.last()
    notes += plans.warnings()
    return EncodeRun(output=out, format=fmt, vae=vae, metadata=metadata, latent=latent, infos=tuple(read.infos),
                     reports=tuple(reports), tiling=tiling, counts=counts, warnings=tuple(dict.fromkeys(notes)))


def _check_tiling(budget: Any, device_profile: Any, spill_dir: Any) -> None:
    """budget= / device_profile= / spill_dir= refused before any work (a profile or a spill folder without a
    budget, an unknown profile, a spill folder that is missing or not writable)."""
    from vaelens.run.verbs import check_tiling

    check_tiling(budget, device_profile, spill_dir)


def _write_latents(out: Path, latent, metadata, *, comfy: bool) -> tuple[Path, str]:
    from vaelens.latents import save_comfy_latent, save_latents
    from vaelens.outputs import atomic_write

    with atomic_write(out) as tmp:
        if comfy:
            save_comfy_latent(tmp, latent)
            return out, "comfyui.latent (raw latents)"
        save_latents(tmp, latent, metadata=metadata)
    return out, "vaelens safetensors"


# ------------------------------------------------------------------------------------------ decode


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeRun:
    """What decode_file did: the latent file read, how it was treated, the files written."""

    source: str
    latents: Any  # LatentFile
    vae: Any
    normalized: bool
    pixel_shape: tuple[int, ...]
    outputs: tuple[Path, ...]
    report: StepReport  # the decode calls merged
    tiling: Any = None  # the TilingPlan of the last call (with a budget)
    counts: Any = None  # what that call's exact run copied (RunCounts; None untiled or approximate)
    warnings: tuple[str, ...] = field(default=())


def decode_file(
    latents: str | Path,
    output: str | Path,
    *,
    vae: Any = "demo",
    normalized: bool | None = None,
    batch_size: int | None = None,
    save_frames: bool = False,
    fps: float | None = None,
    upcast: Upcast | str = Upcast.AUTO,
    budget: int | str | None = None,
    device_profile: Any = None,
    spill_dir: Any = None,
    strict: bool = False,
    force: bool = False,
    progress: Bar | None = None,
) -> DecodeRun:
    """latent file [B,C,(F',)h,w] (vaelens' or ComfyUI's) -> images (FILE, or FILE_<source>.png per item)
    or, for video latents and FILE.mp4, one MP4 per item (+ its frames with save_frames).

    normalized: None takes what the file says (a file that does not say is refused). A file encoded with
    other weights (its recorded weights_sha256 or family differ) is a warning, refused with strict=True.
    budget / device_profile / spill_dir: as encode_files.
    """
    from vaelens.latents import load_latents
    from vaelens.outputs import prepare_outputs
    from vaelens.run.naming import output_names, write_item
    from vaelens.run.verbs import budgeted, decode, recorded_normalization

    fps = check_fps(fps)
    _check_tiling(budget, device_profile, spill_dir)
    lf = load_latents(latents)
    names = output_names(Path(output), lf, save_frames=save_frames, source=str(latents))
    prepare_outputs([p for _, files in names for p in files], inputs=[latents, *weights_paths(vae)], force=force)
    vae = loaded(vae)
    notes = list(lf.warnings) + _provenance(lf, vae, str(latents), strict=strict)
    if normalized is None:
        if lf.normalized is None:
            raise ChoiceRequiredError(f"{latents} does not say whether its latents are normalised",
                                      param="normalized", choices=(True, False))
        normalized = lf.normalized
    norm, note = recorded_normalization(lf.info.normalization, vae) if normalized else (None, None)
    notes += [note] if note else []
    total = lf.latent.shape[0]
    batch = check_batch_size(batch_size) if batch_size is not None else total
    bar = progress or null_bar()
    bar(0, total, "")
    reports, paths, pixel_shape = [], [], None
    mp4 = Path(output).suffix.lower() == ".mp4"
    frame_rate = fps if fps is not None or not mp4 or lf.metadata.get("fps") is None else check_fps(lf.metadata["fps"])
    with budgeted(vae.module, budget, device_profile=device_profile, spill_dir=spill_dir) as plans:
        for start in range(0, total, batch):
            bar.stage(f"items {start + 1}-{min(start + batch, total)} of {total}")
            dec = decode(vae, lf.latent[start : start + batch], normalized=normalized, normalization=norm,
                         upcast=upcast)
            reports.append(dec.report)
            pixel_shape = (total, *dec.pixels.shape[1:])
            for j in range(dec.pixels.shape[0]):
                base, planned = names[start + j]
                paths.extend(write_item(dec.pixels[j], base, planned=planned, inputs=[latents], force=force,
                                        save_frames=save_frames, fps=frame_rate))
            bar.advance(dec.pixels.shape[0])
    recorded = lf.info.pixel_shape
    if recorded and pixel_shape and tuple(recorded[-2:]) != tuple(pixel_shape[-2:]):
        notes.append(f"decoded size {pixel_shape[-1]}x{pixel_shape[-2]} differs from the {recorded[-1]}x"
                     f"{recorded[-2]} the file records as its pixel_shape")
    tiling, counts = plans.last()
    notes += plans.warnings()
    return DecodeRun(source=str(latents), latents=lf, vae=vae, normalized=normalized,
                     pixel_shape=tuple(pixel_shape or ()), outputs=tuple(paths), report=merge_steps(reports),
                     tiling=tiling, counts=counts, warnings=tuple(dict.fromkeys(notes)))


def _provenance(lf, vae, source: str, *, strict: bool) -> list[str]:
    """The weights a file records vs those given: a difference is a warning, an error when strict."""
    from vaelens.weights.load import weights_sha256

    problems = []
    if lf.family and lf.family != vae.family:
        problems.append(f"{source} was encoded with {lf.family}; decoding with {vae.family}")
    recorded = lf.info.weights_sha256
    if recorded and vae.files:
        given = weights_sha256(vae)
        if tuple(recorded) != given:
            problems.append(f"{source} was encoded with other weights (sha256 {recorded[0][:12]}…), not "
                            f"{Path(vae.files[0]).name} (sha256 {given[0][:12]}…); the decoded pixels are not "
                            "what its encoder meant")
    if problems and strict:
        raise WeightsError(problems[-1] + " (strict: refused)", param="vae", value=str(vae.source))
    return problems

