"""Predicted vs measured CUDA peak for every row of shared/measurements/h100.jsonl.

For each row: vaelens' prediction (meta-device trace + allocator simulation, no GPU), the H100
measurement, the relative error, ComfyUI's heuristic for KL families with its error, and the error
of a naive liveness count (activations only: what the kernel rules and allocator add); then the
max and median error. `--quick` runs a few rows (CI runs it through tests/test_memory.py).

    python benchmarks/memory_accuracy.py [--quick] [--measurements DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "measurements"
QUICK_ROWS = 4  # the smallest rows: taesd and sd-kl at 512², one encode and one decode each


def comfy_heuristic(row: dict, cfg: dict) -> int | None:
    """ComfyUI's VAE memory estimate for KL (AutoencoderKL-style) families, in bytes.

    comfy/sd.py VAE.__init__: memory_used_decode = shape[2]*shape[3]*2178*64 * dtype bytes (latent
    h, w), memory_used_encode = 1767*shape[2]*shape[3] * dtype bytes (pixel H, W); times the batch.
    """
    if not cfg["_class_name"].startswith("AutoencoderKL") or len(row["shape"]) != 4:
        return None
    item = 4 if row["dtype"] == "fp32" else 2
    batch = row["shape"][0]
    if row["op"] == "decode":
        h, w = row["input_shape"][2:]
        return 2178 * h * w * 64 * item * batch
    h, w = row["shape"][2:]
    return 1767 * h * w * item * batch


def naive_liveness(tr) -> int:
    """Ablation: the peak of live activation bytes alone (no kernel temporaries, no allocator)."""
    size: dict[int, int] = {}
    live = peak = 0
    for ev in tr.events:
        for sid in ev.frees_before:
            live -= size.pop(sid, 0)
        for sid, n in ev.allocs:
            size[sid] = n
            live += n
        peak = max(peak, live)
    return peak


def predict(row: dict, cfg: dict) -> tuple[int, str, int]:
    import torch

    from vaelens.build import build_module
    from vaelens.memory.estimate import simulate
    from vaelens.options import DType
    from vaelens.trace import trace_module

    dtype = DType.parse(row["dtype"])
    module = build_module(cfg, device="meta", dtype=dtype)
    x = torch.empty(row["input_shape"], device="meta", dtype=dtype.torch)
    tr = trace_module(module, [x], op=row["op"])
    est = simulate(tr, dtype=dtype)
    return est.peak_bytes, est.peak_at, naive_liveness(tr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only the {QUICK_ROWS} smallest rows")
    ap.add_argument("--measurements", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    data = args.measurements / "h100.jsonl"
    if not data.is_file():  # a clone without the project's ../shared folder
        ap.exit(2, f"memory_accuracy.py: error: measurements {str(data)!r} not found; this benchmark reads the "
                "CUDA measurements from shared/measurements/ beside the repository (pass --measurements DIR)\n")
    rows = [json.loads(line) for line in data.read_text().splitlines() if line]
    if args.quick:
        rows = sorted(rows, key=lambda r: (r["peak_above_base"], r["family"], r["op"]))[:QUICK_ROWS]
    results = []
    t0 = time.perf_counter()
    for row in rows:
        cfg = json.loads((args.measurements / f"{row['family']}.json").read_text())
        pred, where, naive = predict(row, cfg)
        meas = row["peak_above_base"]
        comfy = comfy_heuristic(row, cfg)
        results.append({
            "family": row["family"], "op": row["op"], "shape": row["shape"], "dtype": row["dtype"],
            "predicted": pred, "measured": meas, "error": pred / meas - 1, "peak_at": where,
            "naive": naive, "naive_error": naive / meas - 1,
            "comfy": comfy, "comfy_error": None if comfy is None else comfy / meas - 1,
        })
    errors = [abs(r["error"]) for r in results]
    comfy_errors = [abs(r["comfy_error"]) for r in results if r["comfy_error"] is not None]
    summary = {
        "rows": len(results), "max_error": max(errors), "median_error": statistics.median(errors),
        "naive_median_error": statistics.median(abs(r["naive_error"]) for r in results),
        "comfy_max_error": max(comfy_errors) if comfy_errors else None,
        "comfy_median_error": statistics.median(comfy_errors) if comfy_errors else None,
        "seconds": time.perf_counter() - t0,
    }
    if args.json:
        json.dump({"rows": results, "summary": summary}, sys.stdout, indent=2)
        print()
        return 0
    mib = 2**20
    print(f"{'family':<11} {'op':<6} {'shape':<19} {'dtype':<5} {'predicted':>11} {'measured':>11} "
          f"{'error':>7} {'ComfyUI':>11} {'error':>7} {'naive':>7}  peak at")
    for r in results:
        comfy = f"{r['comfy'] / mib:9.1f}Mi" if r["comfy"] else f"{'-':>11}"
        cerr = f"{r['comfy_error']:+7.1%}" if r["comfy_error"] is not None else f"{'-':>7}"
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['family']:<11} {r['op']:<6} {shape:<19} {r['dtype']:<5} {r['predicted'] / mib:9.1f}Mi "
              f"{r['measured'] / mib:9.1f}Mi {r['error']:+7.2%} {comfy} {cerr} {r['naive_error']:+7.1%}  "
              f"{r['peak_at']}")
    print(f"\nvaelens: max |error| {summary['max_error']:.2%}, median {summary['median_error']:.2%} "
          f"over {summary['rows']} rows ({summary['seconds']:.1f} s)")
    print(f"naive liveness (activations only, no kernel temporaries, no allocator): median |error| "
          f"{summary['naive_median_error']:.1%}")
    if comfy_errors:
        print(f"ComfyUI heuristic (KL rows): max |error| {summary['comfy_max_error']:.1%}, "
              f"median {summary['comfy_median_error']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
