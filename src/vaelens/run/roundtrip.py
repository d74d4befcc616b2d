"""pixels -> latent -> pixels, scored: PSNR and SSIM on [0,1] images, a per-pixel error map.

pixels [B,3,H,W] in [-1,1] -> roundtrip(vae, pixels) -> Roundtrip (latent normalised as the family does,
reconstruction [B,H,W,3], error [B,H,W], psnr/ssim per item). SSIM is None, with the reason, for an image
thinner than its 11-px window (the rest is still scored).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vaelens.errors import VaeLensError
from vaelens.metrics import psnr, ssim, ssim_unavailable
from vaelens.options import Posterior
from vaelens.run.steps import StepReport, Upcast


@dataclass(frozen=True, slots=True, kw_only=True)
class Roundtrip:
    """pixels -> latent -> pixels, scored: PSNR/SSIM on [0,1] images, per-pixel error map."""

    latent: Any
    reconstruction: np.ndarray  # [B,H,W,3] in [0,1]
    error: np.ndarray  # [B,H,W] mean |input − reconstruction| over RGB, in [0,1] units
    psnr: tuple[float, ...]
    ssim: tuple[float | None, ...]  # None where the image is thinner than SSIM's window (ssim_reason)
    encode: StepReport
    decode: StepReport
    # The largest |input − reconstruction| of any pixel and channel (the map above averages RGB first,
    # so its max is smaller); NaN where the reconstruction is not finite.
    max_abs_error: tuple[float, ...] = ()
    ssim_reason: str | None = None
    tiling: dict[str, Any] = field(default_factory=dict)  # op -> TilingPlan the call ran under (with a budget)
    counts: dict[str, Any] = field(default_factory=dict)  # op -> what its exact run copied (RunCounts | None)

    def item(self, i: int) -> Roundtrip:
        """-> the Roundtrip of batch item i alone (its encode/decode reports are the whole call's)."""
        return replace(
            self,
            latent=self.latent[i : i + 1],
            reconstruction=self.reconstruction[i : i + 1],
            error=self.error[i : i + 1],
            psnr=self.psnr[i : i + 1],
            ssim=self.ssim[i : i + 1],
            max_abs_error=self.max_abs_error[i : i + 1],
        )

    @property
    def finite(self) -> bool:
        """False when a metric is NaN (the reconstruction holds NaN/Inf): the round trip failed."""
        values = (*self.psnr, *(s for s in self.ssim if s is not None), *self.max_abs_error)
        return not any(np.isnan(v) for v in values)

    def to_json(self) -> dict[str, Any]:
        reasons: dict[str, str] = {}

        def number(values, key: str, digits: int) -> list[float | None]:
            """JSON has no NaN/Infinity: such a value is null, with the reason under "null_reasons"."""
            out: list[float | None] = []
            for i, v in enumerate(values):
                if v is None:
                    out.append(None)
                    reasons[f"{key}[{i}]"] = self.ssim_reason or "not computed"
                    continue
                v = float(v)
                if np.isfinite(v):
                    out.append(round(v, digits))
                    continue
                out.append(None)
                reasons[f"{key}[{i}]"] = (
                    "infinite: the reconstruction equals the input exactly" if v == float("inf")
                    else "NaN: the reconstruction holds NaN/Inf values"
                )
            return out

        data = {
            "psnr_db": number(self.psnr, "psnr_db", 4),
            "ssim": number(self.ssim, "ssim", 5),
            "latent_shape": list(self.latent.shape),
            "mean_abs_error": number((e.mean() for e in self.error), "mean_abs_error", 6),
            "max_abs_error": number(self.max_abs_error, "max_abs_error", 6),
            "max_abs_error_map": number((e.max() for e in self.error), "max_abs_error_map", 6),
            "seconds": round(self.encode.seconds + self.decode.seconds, 4),
            "encode": self.encode.to_json(),
            "decode": self.decode.to_json(),
        }
        if reasons:
            data["null_reasons"] = reasons
        return data


def roundtrip(
    vae: Any,
    pixels: Any,
    *,
    posterior: Posterior | str = Posterior.MODE,
    seed: int = 0,
    upcast: Upcast | str = Upcast.AUTO,
    budget: int | str | None = None,
    device_profile: Any = None,
    spill_dir: Any = None,
    on_stage: Callable[[str], None] | None = None,
) -> Roundtrip:
    """pixels [B,3,H,W] in [-1,1] -> Roundtrip (the latent passes through the family's normalisation).

    budget / device_profile / spill_dir: both calls inside the budget (vaelens.encode); `tiling` and
    `counts` hold each op's plan and what its run copied.

    on_stage("encode" | "decode" | "metrics") is called as each stage starts (a progress display).
    """
    from vaelens.images import from_pixels
    from vaelens.run.verbs import as_loaded, budgeted, decode, encode

    loaded = as_loaded(vae)
    stage = on_stage or (lambda name: None)
    with budgeted(loaded.module, budget, device_profile=device_profile, spill_dir=spill_dir) as plans:
        stage("encode")
        enc = encode(loaded, pixels, normalized=True, posterior=posterior, seed=seed, upcast=upcast)
        stage("decode")
        dec = decode(loaded, enc.latent, normalized=True, upcast=upcast)
    stage("metrics")
    src, rec = from_pixels(pixels), from_pixels(dec.pixels)
    if rec.shape != src.shape:
        raise VaeLensError(f"decoder returned {list(dec.pixels.shape)} for input {list(pixels.shape)}",
                           param="pixels", value=list(pixels.shape))
    diff = np.abs(src - rec)
    reason = ssim_unavailable(src.shape[1:])
    runs = {op: plans.last(op) for op in ("encode", "decode")}
    return Roundtrip(
        max_abs_error=tuple(float(d.max()) for d in diff),
        latent=enc.latent,
        reconstruction=rec,
        error=diff.mean(axis=-1),
        psnr=tuple(psnr(s, r) for s, r in zip(src, rec, strict=True)),
        ssim=tuple(None if reason else ssim(s, r) for s, r in zip(src, rec, strict=True)),
        ssim_reason=reason,
        encode=enc.report,
        decode=dec.report,
        tiling={op: plan for op, (plan, _) in runs.items()} if budget is not None else {},
        counts={op: counts for op, (_, counts) in runs.items()} if budget is not None else {},
    )


# --------------------------------------------------------------------------------------------- files

FILES = {"reconstruction": "recon", "error_map": "error", "comparison": "compare"}


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundtripItem:
    """One image's round trip: its info, the scores, the pixels it went in as, and where its figures go
    (`files`: reconstruction, error_map, comparison; vaelens.render.codec.draw_roundtrip writes them)."""

    source: str
    info: Any  # ImageInfo
    result: Roundtrip
    pixel_shape: tuple[int, ...]
    files: dict[str, str]
    image: np.ndarray | None = None  # [H,W,3] in [0,1]: the input as it was encoded (the comparison's left panel)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundtripRun:
    """roundtrip_files' result: the items scored, and the inputs skipped (path -> reason)."""

    vae: Any
    items: tuple[RoundtripItem, ...]
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def group_same_size(items: list, shape_of, batch_size: int) -> list[list[int]]:
    """Consecutive items of equal shape_of(item), at most batch_size each -> lists of indices."""
    groups: list[list[int]] = []
    for i, item in enumerate(items):
        last = groups[-1] if groups else None
        if last and len(last) < batch_size and shape_of(items[last[0]]) == shape_of(item):
            last.append(i)
        else:
            groups.append([i])
    return groups


def roundtrip_files(
    inputs: Any = "demo",
    prefix: str | Any = "roundtrip",
    *,
    vae: Any = "demo",
    size: tuple[int, int] | None = None,
    posterior: Posterior | str = Posterior.MODE,
    seed: int = 0,
    batch_size: int = 1,
    upcast: Upcast | str = Upcast.AUTO,
    budget: int | str | None = None,
    device_profile: Any = None,
    spill_dir: Any = None,
    strict: bool = False,
    force: bool = False,
    progress: Any = None,
) -> RoundtripRun:
    """images / folder / glob -> RoundtripRun: a round trip per image, scored, and the figures each item's
    `files` names (PREFIX_recon.png, PREFIX_error.png and PREFIX_compare.png; several images:
    PREFIX_<name>_recon.png, …), checked writable up front and drawn by
    vaelens.render.codec.draw_roundtrip(run) (the engine returns data; the CLI draws).

    Of several inputs, one that cannot be read is skipped and listed in `skipped` (strict=True: raised at
    the first); a single input's error is raised.
    """
    from pathlib import Path

    from vaelens.images import from_pixels, read_for_family, to_pixels
    from vaelens.outputs import prepare_outputs
    from vaelens.progress import null_bar
    from vaelens.run.inputs import check_batch_size, expand, loaded, stems, weights_paths
    from vaelens.run.steps import posterior_label
    from vaelens.run.verbs import budgeted, check_tiling

    batch_size = check_batch_size(batch_size)
    check_tiling(budget, device_profile, spill_dir)
    posterior = Posterior.parse(posterior)
    images = expand(inputs)
    prefixes = [Path(prefix)] if len(images) == 1 else [Path(f"{prefix}_{n}") for n in stems(images)]
    paths = [{k: Path(f"{p}_{v}.png") for k, v in FILES.items()} for p in prefixes]
    prepare_outputs([p for d in paths for p in d.values()], inputs=images + weights_paths(vae), force=force,
                    kind="image")
    vae = loaded(vae)
    notes = []
    if posterior is Posterior.SAMPLE and posterior_label(vae, posterior) == "deterministic":
        notes.append(f"a posterior sample was asked for, but {vae.family} ({vae.spec.diffusers_class}) has no "
                     "posterior: its one deterministic latent is used")
    read, skipped = {}, {}
    for i, image in enumerate(images):
        try:
            arrays, infos = read_for_family([image], vae.spec, size=size)
            read[i] = (arrays[0], infos[0])
        except VaeLensError as exc:
            if strict or len(images) == 1:
                raise
            skipped[image] = str(exc)
    order = sorted(read)
    bar = progress or null_bar()
    bar(0, len(order), "")
    items = []
    with budgeted(vae.module, budget, device_profile=device_profile, spill_dir=spill_dir) as plans:
        for positions in group_same_size(order, lambda i: read[i][0].shape, batch_size):
            group = [order[k] for k in positions]
            pixels = to_pixels([read[i][0] for i in group])
            label = Path(images[group[0]]).name + (f" (+{len(group) - 1})" if len(group) > 1 else "")
            start = len(plans)
            rt = roundtrip(vae, pixels, posterior=posterior, seed=seed, upcast=upcast,
                           on_stage=lambda stage, label=label: bar.stage(f"{stage} {label}"))
            if budget is not None:
                runs = {op: plans.last(op, start) for op in ("encode", "decode")}
                rt = replace(rt, tiling={op: plan for op, (plan, _) in runs.items()},
                             counts={op: counts for op, (_, counts) in runs.items()})
            shown = from_pixels(pixels)
            for j, i in enumerate(group):
                items.append(RoundtripItem(source=images[i], info=read[i][1], result=rt.item(j),
                                           pixel_shape=tuple(pixels[j : j + 1].shape), image=shown[j],
                                           files={k: str(p) for k, p in paths[i].items()}))
                bar.advance(1)
    notes += plans.warnings()  # what the tiled runs said about themselves (RunCounts.warnings)
    return RoundtripRun(vae=vae, items=tuple(items), skipped=skipped, warnings=tuple(dict.fromkeys(notes)))

