"""Real-weights results -> text lines and JSON: encode, decode and round-trip step reports.

StepReport (one encode or decode call) -> `step_line` (text) | `steps_json` (the one JSON shape of an
`encode` / `decode` entry in `encode --json`, `decode --json` and `roundtrip --json`: an object, however
many calls made it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vaelens.run.steps import StepReport, merge_steps


def step_line(report: StepReport) -> str:
    """StepReport -> 'encode 0.41 s at fp32, peak 25.2 MB (CPU RSS)' (+ upcast / NaN notes)."""
    mem = report.memory.get("peak_bytes")
    where = "CUDA" if "cuda" in report.memory.get("method", "") else "CPU RSS"
    text = f"{report.op} {report.seconds:.2f} s at {report.dtype_used.value}"
    if mem is not None:
        text += f", peak {mem / 1e6:.1f} MB ({where})"
    if report.upcast_reason:
        text += f"; upcast: {report.upcast_reason}"
    if report.nonfinite:
        text += f"; WARNING {report.nonfinite} NaN/Inf values in the output"
    return text


def steps_json(reports: StepReport | Sequence[StepReport]) -> dict[str, Any]:
    """One call or several of one op -> {op, dtype_requested, dtype_used, upcast, nonfinite_first_attempt,
    nonfinite, seconds, memory, calls} (merged as merge_steps does; `calls` counts them)."""
    steps = [reports] if isinstance(reports, StepReport) else list(reports)
    return {**merge_steps(steps).to_json(), "calls": len(steps)}


def encode_json(vae, metadata, infos, reports: Sequence[StepReport], *, output, fmt: str) -> dict[str, Any]:
    """`vaelens encode --json`: LoadedVae + LatentMetadata + ImageInfo per image + encode calls -> dict."""
    from vaelens.normalization import normalization_to_json

    return {
        "output": str(output),
        "format": fmt,
        "family": vae.family,
        "vae": vae.to_json(),
        "pixel_shape": list(metadata.pixel_shape),
        "latent_shape": list(metadata.latent_shape),
        "normalized": metadata.normalized,
        "normalization": normalization_to_json(vae.spec.normalization),
        "posterior": metadata.posterior,
        "images": [i.to_json() for i in infos],
        "encode": steps_json(reports),
        "nonfinite": sum(r.nonfinite for r in reports),
    }


def render_encode(vae, metadata, reports: Sequence[StepReport], *, output, fmt: str) -> str:
    """`vaelens encode`: what went in, what came out, one line per encode call, the file written."""
    pixel, latent = list(metadata.pixel_shape), list(metadata.latent_shape)
    frames = metadata.extra.get("frames") if metadata.extra else None
    what = f"1 clip of {frames} frames" if frames else f"{pixel[0]} image" + ("" if pixel[0] == 1 else "s")
    lines = [
        f"{what} {pixel} -> latent {latent} "
        f"({'normalised' if metadata.normalized else 'raw'}) with {vae.family} [{vae.detection}]"
    ]
    lines += ["  " + step_line(r) for r in reports]
    lines.append(f"wrote {output} ({fmt})")
    return "\n".join(lines)


def decode_json(vae, lf, report: StepReport, *, normalized: bool, pixel_shape, outputs, source) -> dict[str, Any]:
    """`vaelens decode --json`: LoadedVae + LatentFile + the decode call + images written -> dict."""
    return {
        "input": str(source),
        "comfy": lf.comfy,
        "family": vae.family,
        "vae": vae.to_json(),
        "latent_shape": list(lf.latent.shape),
        "normalized": normalized,
        "pixel_shape": list(pixel_shape),
        "decode": steps_json(report),
        "nonfinite": report.nonfinite,
        "outputs": [str(p) for p in outputs],
    }


def render_decode(vae, lf, report: StepReport, *, normalized: bool, pixel_shape, outputs) -> str:
    """`vaelens decode`: latent file [B,C,(F,)h,w] -> pixels [B,3,(F,)H,W], the decode call, the files written."""
    kind = "ComfyUI .latent" if lf.comfy else "vaelens latent"
    lines = [
        f"{kind} {list(lf.latent.shape)} ({'normalised' if normalized else 'raw'}) -> pixels "
        f"{list(pixel_shape)} with {vae.family}",
        "  " + step_line(report),
    ]
    return "\n".join(lines + [f"wrote {p}" for p in outputs])


def roundtrip_json(vae, info, rt, *, pixel_shape, files: dict[str, str]) -> dict[str, Any]:
    """`vaelens roundtrip --json`: the Roundtrip's scores, with `encode` / `decode` in steps_json's shape."""
    return {
        "family": vae.family,
        "vae": vae.to_json(),
        "image": info.to_json(),
        "pixel_shape": list(pixel_shape),
        **rt.to_json(),
        "encode": steps_json(rt.encode),
        "decode": steps_json(rt.decode),
        "files": files,
    }


def _ssim_text(rt) -> str:
    return f"SSIM {rt.ssim[0]:.4f}" if rt.ssim[0] is not None else f"SSIM n/a ({rt.ssim_reason})"


def tiling_json(plans: dict[str, Any], counts: dict[str, Any] | None = None, *,
                roundtrip: bool = False) -> dict[str, Any]:
    """{op: TilingPlan | None} of a run with a budget (+ {op: the run's RunCounts | None}) -> the JSON's
    "tiling" block(s): the plan's figures beside what the run counted (`measured_transfer_bytes`,
    `measured_host_bytes`); null where the call ran untiled. `tiling` is decode's for a round trip, which
    adds `tiling_encode`."""
    from vaelens.run.verbs import run_tiling_json

    counts = counts or {}

    def block(op: str | None):
        return run_tiling_json(plans.get(op), counts.get(op)) if op is not None else None

    if roundtrip:
        return {"tiling": block("decode"), "tiling_encode": block("encode")}
    return {"tiling": block(next(iter(plans), None))}


def tiling_lines(plans: dict[str, Any], counts: dict[str, Any] | None = None) -> list[str]:
    """{op: TilingPlan | None} (+ {op: RunCounts | None}) -> one line per op that ran under a budget."""
    from vaelens.render.tiling import tiling_line

    counts = counts or {}
    return ["  " + tiling_line(plan, counts.get(op)) for op, plan in plans.items() if plan is not None]


def render_roundtrip(vae, rt, *, name: str, pixel_shape, files: dict[str, str]) -> str:
    """`vaelens roundtrip`: pixels -> latent -> pixels, the scores (PSNR, SSIM, errors), both calls, the files."""
    lines = [
        f"{name} {list(pixel_shape)} -> latent {list(rt.latent.shape)} -> pixels with "
        f"{vae.family} ({vae.detection}) on {vae.device}",
        f"  PSNR {rt.psnr[0]:.2f} dB   {_ssim_text(rt)}   mean |error| {rt.error[0].mean():.4f} "
        f"(0-1 scale)   max {rt.max_abs_error[0]:.4f} (error map's max {rt.error[0].max():.4f})",
        "  " + step_line(rt.encode),
        "  " + step_line(rt.decode),
    ]
    return "\n".join(lines + [f"wrote {path} ({name.replace('_', ' ')})" for name, path in files.items()])


def draw_roundtrip(run: Any) -> Any:
    """RoundtripRun (vaelens.run.roundtrip_files) -> the same run, after each item's `files` are written:
    reconstruction (the decoded image), error_map and comparison (input | reconstruction | error), each
    atomically (vaelens.outputs); titled with the family, the image, its size and its scores."""
    from pathlib import Path

    from vaelens.images import save_image
    from vaelens.outputs import atomic_write
    from vaelens.render.figures import plot_comparison, plot_error_map

    for item in run.items:
        rt, files = item.result, item.files
        h, w = item.pixel_shape[-2:]
        score = f"SSIM {rt.ssim[0]:.4f}" if rt.ssim[0] is not None else "SSIM n/a"
        title = f"{run.vae.family}: {Path(item.source).name} {w}x{h}  PSNR {rt.psnr[0]:.2f} dB  {score}"
        writers = {
            "reconstruction": lambda t, rt=rt: save_image(rt.reconstruction[0], t),
            "error_map": lambda t, rt=rt, title=title: plot_error_map(rt.error[0], t, title=title),
            "comparison": lambda t, rt=rt, item=item, title=title: plot_comparison(
                item.image, rt.reconstruction[0], rt.error[0], t, title=title),
        }
        for key, write in writers.items():
            with atomic_write(Path(files[key])) as tmp:
                write(tmp)
    return run
