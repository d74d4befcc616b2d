"""Tiled vs untiled: how far each tiler's output is from the untiled call, its time, and the plan's memory.

Per architecture (the real diffusers classes, random weights, reduced channel counts, the released block
structure) and the shipped demo VAE on its real photograph (src/vaelens/data/demo_coffee.png), at
non-square sizes that force at least 4 tiles:

- vaelens: the exact tiler (vaelens.tiling) with a budget that forces tiles;
- diffusers: the class's own enable_tiling() (tile side matched to vaelens' tile, default overlap);
- ComfyUI-style: the average of three feathered tilings (tile, 2×wide ½ tall, ½ wide 2× tall), as
  ComfyUI's VAE.decode_tiled_ does with comfy.utils.tiled_scale (decode only).

Reported: PSNR (dB, on the [-1, 1] range, vs untiled) and max |diff|, the plan's tiles, predicted peak
and budget, and wall time vs untiled (CPU, best of `--repeat` alternating runs after a warm-up). Then
plans at released sizes on the meta device (SDXL 4096² bf16 at 2, 4 and 8 GiB, Wan 2.1 and FLUX.2):
predicted peak vs budget.

    python benchmarks/tiled_fidelity.py [--quick] [--json PATH] [--figure docs/img/tiling_seams.png]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

import vaelens.memory.estimate  # noqa: F401  (import order: memory before trace)
from vaelens.tiling import decode, encode, plan_tiling
from vaelens.trace import call_op
from vaelens.trace.records import Op

WAN_LIKE = {"base_dim": 16, "z_dim": 4, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
            "temperal_downsample": [False, True, True]}
KL4 = {"down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
       "block_out_channels": [16, 32, 64, 64], "layers_per_block": 2, "norm_num_groups": 8}

# name -> (builder, latent shape for decode); pixels = latent × 8 (× frames 4k+1 for video)
ARCHS: dict[str, tuple[Any, tuple[int, ...]]] = {
    "sd15/sd2/sdxl (KL, 4 ch)": (lambda d: d.AutoencoderKL(**KL4, latent_channels=4), (1, 4, 40, 56)),
    "sd3/flux1 (KL, 16 ch, no quant conv)": (
        lambda d: d.AutoencoderKL(**KL4, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False),
        (1, 16, 40, 56)),
    "flux2 (AutoencoderKLFlux2)": (lambda d: d.AutoencoderKLFlux2(
        **{**KL4, "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4},
        latent_channels=32), (1, 32, 40, 56)),
    "taesd (AutoencoderTiny)": (lambda d: d.AutoencoderTiny(
        encoder_block_out_channels=(32, 32, 32, 32), decoder_block_out_channels=(32, 32, 32, 32)), (1, 4, 40, 56)),
    "wan21 (AutoencoderKLWan, 5 frames)": (lambda d: d.AutoencoderKLWan(**WAN_LIKE), (1, 4, 2, 24, 40)),
    "qwen-image (AutoencoderKLQwenImage)": (lambda d: d.AutoencoderKLQwenImage(
        **WAN_LIKE, latents_mean=[0.0] * 4, latents_std=[1.0] * 4), (1, 4, 1, 24, 40)),
}
QUICK = ("sd15/sd2/sdxl (KL, 4 ch)", "wan21 (AutoencoderKLWan, 5 frames)")


def psnr(a: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB on the [-1, 1] range (peak-to-peak 2)."""
    mse = float(((a.double() - ref.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def timed(fn: Any, repeat: int, *, warm: bool = True) -> tuple[Any, float]:
    """-> (result, best wall time of `repeat` calls after one warm-up call: oneDNN builds a kernel per new
    input shape on its first call, and a tiled run meets more shapes than the untiled one)."""
    out = None
    if warm:
        with torch.inference_mode():
            out = fn()
    best = math.inf if repeat else 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def diffusers_tiled(m: Any, op: str, x: torch.Tensor, tile_px: int, factor: int) -> torch.Tensor:
    """The class's own enable_tiling() with its tile side set to `tile_px` (its default overlap)."""
    video = x.ndim == 5
    if video:
        stride = tile_px * 3 // 4
        m.enable_tiling(tile_sample_min_height=tile_px, tile_sample_min_width=tile_px,
                        tile_sample_stride_height=stride, tile_sample_stride_width=stride)
    else:
        m.enable_tiling()
        m.tile_sample_min_size = tile_px
        m.tile_latent_min_size = tile_px // factor
    try:
        with torch.inference_mode():
            return call_op(m, Op.parse(op), [x])
    finally:
        m.use_tiling = False


def comfy_tiled_decode(m: Any, z: torch.Tensor, tile: int, overlap: int, factor: int) -> torch.Tensor:
    """ComfyUI-style decode_tiled_: three tilings (tile//2 × tile*2, tile*2 × tile//2, tile × tile latent
    px) of feathered tiles (linear ramps over the overlap), each normalised by its mask sum, averaged."""

    def one(tw: int, th: int) -> torch.Tensor:
        out = None
        weight = None
        for y in range(0, max(1, z.shape[-2] - overlap), th - overlap):
            for x in range(0, max(1, z.shape[-1] - overlap), tw - overlap):
                y0, x0 = min(y, max(0, z.shape[-2] - th)), min(x, max(0, z.shape[-1] - tw))
                piece = z[..., y0:y0 + th, x0:x0 + tw]
                with torch.inference_mode():
                    dec = call_op(m, Op.DECODE, [piece])
                if out is None:
                    shape = (*dec.shape[:-2], z.shape[-2] * factor, z.shape[-1] * factor)
                    out, weight = torch.zeros(shape), torch.zeros(shape)
                mask = torch.ones_like(dec)
                feather = overlap * factor
                for t in range(feather):  # comfy.utils.tiled_scale: a ramp on every side
                    ramp = (t + 1) / feather
                    mask[..., t, :] *= ramp
                    mask[..., -1 - t, :] *= ramp
                    mask[..., :, t] *= ramp
                    mask[..., :, -1 - t] *= ramp
                ys, xs = y0 * factor, x0 * factor
                out[..., ys:ys + dec.shape[-2], xs:xs + dec.shape[-1]] += dec * mask
                weight[..., ys:ys + dec.shape[-2], xs:xs + dec.shape[-1]] += mask
        return out / weight

    return (one(tile // 2, tile * 2) + one(tile * 2, tile // 2) + one(tile, tile)) / 3


def interleaved(a: Any, b: Any, repeat: int) -> tuple[Any, float, Any, float]:
    """Best wall time of a() and of b(), called alternately after a warm-up of each: on a shared machine
    the load drifts, and alternating keeps it from landing on one side only."""
    out_a, _ = timed(a, 0)
    out_b, _ = timed(b, 0)
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(timed(a, 1, warm=False)[1])
        tb.append(timed(b, 1, warm=False)[1])
    return out_a, min(ta), out_b, min(tb)


def bench_one(name: str, m: Any, op: str, x: torch.Tensor, repeat: int, comfy: bool) -> dict[str, Any]:
    with torch.inference_mode():
        ref = call_op(m, Op.parse(op), [x])
    full = ref if op == "decode" else x
    factor = full.shape[-1] // (x.shape[-1] if op == "decode" else ref.shape[-1])
    side = min(full.shape[-2], full.shape[-1])
    # a budget that forces tiles: just above the plan for tiles of ~half the short side
    probe = plan_tiling(m, tuple(x.shape), budget="1TiB", op=op, tile=max(factor, side // 2 // factor * factor))
    budget = probe.predicted_peak_bytes + 1
    plan = plan_tiling(m, tuple(x.shape), budget=budget, op=op)
    floor = plan_tiling(m, tuple(x.shape), budget="1TiB", op=op, tile=factor).predicted_peak_bytes
    for j in range(1, 8):  # an operation whose whole map fits runs whole: lower the budget until some tile
        if plan.tiles > 1:
            break
        budget = probe.predicted_peak_bytes - j * (probe.predicted_peak_bytes - floor) // 8
        plan = plan_tiling(m, tuple(x.shape), budget=budget, op=op)
    run = decode if op == "decode" else encode
    ref, t_ref, tiled, t_tiled = interleaved(lambda: call_op(m, Op.parse(op), [x]), lambda: run(m, x, plan=plan),
                                             repeat)
    # diffusers' blending needs a tile whose latent side divides by 4 (its 25 % overlap)
    tile_px = plan.tile_shape[0] if plan.tile_shape else side
    tile_px = max(4 * factor, tile_px // (4 * factor) * 4 * factor)
    row = {
        "arch": name, "op": op, "input_shape": list(x.shape), "tiles": plan.tiles,
        "tile_shape": list(plan.tile_shape or ()), "budget_bytes": budget,
        "predicted_peak_bytes": plan.predicted_peak_bytes, "untiled_peak_bytes": plan.untiled_peak_bytes,
        "vaelens_psnr": psnr(tiled, ref), "vaelens_max_abs": float((tiled - ref).abs().max()),
        "time_untiled_s": t_ref, "time_vaelens_s": t_tiled, "time_ratio": t_tiled / t_ref,
    }
    try:
        d = diffusers_tiled(m, op, x, tile_px, factor)
        row.update(diffusers_psnr=psnr(d, ref), diffusers_max_abs=float((d - ref).abs().max()), diffusers_tile=tile_px)
    except Exception as exc:  # noqa: BLE001  (a class whose tiling cannot run at this size: say so)
        row.update(diffusers_psnr=None, diffusers_error=str(exc).splitlines()[0])
    if comfy and op == "decode" and x.ndim == 4:
        lt = max(4, tile_px // factor)
        c = comfy_tiled_decode(m, x, lt, max(1, lt // 4), factor)
        row.update(comfy_psnr=psnr(c, ref), comfy_max_abs=float((c - ref).abs().max()))
    return row


def demo_rows(repeat: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The shipped demo VAE: encode its held-out photo, decode that latent."""
    from vaelens.images import read_for_family, to_pixels
    from vaelens.weights.demo import demo_image_path, load_demo_vae

    vae = load_demo_vae(device="cpu")
    arrays, _ = read_for_family([str(demo_image_path())], vae.spec)
    pixels = to_pixels(arrays)
    with torch.inference_mode():
        latent = vae.module.encode(pixels).latent_dist.mode()
    rows = [bench_one("demo VAE, coffee photo", vae.module, "decode", latent, repeat, True),
            bench_one("demo VAE, coffee photo", vae.module, "encode", pixels, repeat, False)]
    return rows, {"module": vae.module, "latent": latent}


def released_plans() -> list[dict[str, Any]]:
    """Plans at released sizes (meta device, no weights): predicted peak vs budget."""
    out = []
    cases = [("sdxl", (1, 4, 512, 512), "bf16", b) for b in ("2GiB", "4GiB", "8GiB")]
    cases += [("flux2", (1, 32, 256, 256), "bf16", "4GiB"), ("wan21", (1, 16, 9, 60, 104), "bf16", "2GiB")]
    for fam, shape, dtype, budget in cases:
        t0 = time.perf_counter()
        p = plan_tiling(fam, shape, dtype, budget)
        out.append({"family": fam, "latent_shape": list(shape), "dtype": dtype, "budget": budget,
                    "method": p.method, "tiles": p.tiles, "tile_shape": list(p.tile_shape or ()),
                    "predicted_peak_bytes": p.predicted_peak_bytes, "budget_bytes": p.budget_bytes,
                    "untiled_peak_bytes": p.untiled_peak_bytes, "host_bytes": p.host_bytes,
                    "transfer_bytes": p.transfer_bytes, "plan_seconds": time.perf_counter() - t0})
    return out


def figure(path: Path, demo: dict[str, Any]) -> None:
    """Before/after: |tiled − untiled| of the demo decode for diffusers' tiles, ComfyUI-style and vaelens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, z = demo["module"], demo["latent"]
    factor = 4
    with torch.inference_mode():
        ref = call_op(m, Op.DECODE, [z])
    tile = 96
    shots = [("diffusers enable_tiling()", diffusers_tiled(m, "decode", z, tile, factor)),
             ("ComfyUI-style 3-tiling average", comfy_tiled_decode(m, z, tile // factor, 4, factor))]
    budget = plan_tiling(m, tuple(z.shape), budget="1TiB", tile=tile).predicted_peak_bytes + 1
    shots.append(("vaelens (exact)", decode(m, z, budget=budget)))
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.9), dpi=80)
    img = ((ref[0].permute(1, 2, 0).clamp(-1, 1) + 1) / 2).numpy()
    axes[0].imshow(img)
    axes[0].set_title("untiled decode", fontsize=9)
    for ax, (title, out) in zip(axes[1:], shots, strict=True):
        diff = (out[0] - ref[0]).abs().mean(0).numpy()
        ax.imshow(diff, cmap="magma", vmin=0, vmax=0.1)
        ax.set_title(f"{title}\n|diff| (0-0.1), PSNR {psnr(out, ref):.1f} dB", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"demo VAE decode of the coffee photo, {tile}-px tiles: error vs the untiled decode", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def markdown(rows: list[dict[str, Any]], plans: list[dict[str, Any]]) -> str:
    def db(v: Any) -> str:
        return "—" if v is None else ("exact (inf)" if v == math.inf else f"{v:.1f}")

    mib = 2**20
    out = ["| architecture | op | input | tiles | vaelens PSNR dB (max abs) | diffusers PSNR dB "
           "| ComfyUI-style PSNR dB | predicted peak / budget (MiB) | time vs untiled |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['arch']} | {r['op']} | {'x'.join(map(str, r['input_shape']))} | {r['tiles']} | "
            f"{db(r['vaelens_psnr'])} ({r['vaelens_max_abs']:.1e}) | {db(r.get('diffusers_psnr'))} | "
            f"{db(r.get('comfy_psnr'))} | {r['predicted_peak_bytes'] / mib:.2f} / {r['budget_bytes'] / mib:.2f} | "
            f"{r['time_ratio']:.2f}x |")
    out += ["", "| family | latent | dtype | budget | method | tiles | predicted peak | untiled needs | host memory "
            "| plan time |", "|---|---|---|---|---|---|---|---|---|---|"]
    gib = 2**30
    for p in plans:
        out.append(f"| {p['family']} | {'x'.join(map(str, p['latent_shape']))} | {p['dtype']} | {p['budget']} | "
                   f"{p['method']} | {p['tiles']} | {p['predicted_peak_bytes'] / gib:.2f} GiB | "
                   f"{p['untiled_peak_bytes'] / gib:.2f} GiB | {p['host_bytes'] / gib:.2f} GiB | "
                   f"{p['plan_seconds']:.1f} s |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two architectures, no released-size plans")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    ap.add_argument("--figure", metavar="PNG", help="write the before/after seams figure")
    args = ap.parse_args(argv)
    import diffusers

    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    for name, (build, latent) in ARCHS.items():
        if args.quick and name not in QUICK:
            continue
        torch.manual_seed(0)
        m = build(diffusers).eval()
        g = torch.Generator().manual_seed(1)
        z = torch.randn(latent, generator=g)
        with torch.inference_mode():
            pixels = call_op(m, Op.DECODE, [z]).clamp(-1, 1)
        for op, x in (("decode", z), ("encode", pixels)):
            rows.append(bench_one(name, m, op, x, args.repeat, comfy=True))
            print(json.dumps(rows[-1]), file=sys.stderr)
    demo, demo_state = demo_rows(args.repeat)
    rows += demo
    plans = [] if args.quick else released_plans()
    print(markdown(rows, plans))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "plans": plans}, indent=1, default=str))
    if args.figure:
        figure(Path(args.figure), demo_state)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
