"""Images/s of `vaelens cache` vs a naive loop at equal torch threads, same data, same VAE, same run.

    .venv/bin/python benchmarks/cache_throughput.py [--images 48] [--source 1600x1200] [--size 256x256]
    .venv/bin/python benchmarks/cache_throughput.py --configs default,0:2,1:1,1:2   # workers:threads
    .venv/bin/python benchmarks/cache_throughput.py --arch sdxl --size 1024x1024 --device cuda --dtype bf16

Data: generated JPEG photographs-like images (smooth gradients + texture + noise) at --source size,
written to a temporary folder. The naive loop is what a training script usually does: for each batch,
PIL open -> RGB -> resize (Lanczos) -> numpy -> torch -> vae.encode(x).latent_dist.mean under no_grad,
one after the other in one process, with torch's thread count set to what vaelens' encoder gets (equal
threads: --naive-threads, default the default configuration's). `vaelens cache` runs the same VAE on
the same files (decode and resize in worker processes, channels_last, inference_mode, JPEG draft
decoding, batches by bucket, shards written). Both use the built-in demo VAE (f4, 4 channels) on CPU,
or CUDA when --device cuda.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_data(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        fx, fy = rng.uniform(20, 90, 2)
        base = np.stack(
            [np.sin(xx / fx + i) * 90 + 128, np.cos(yy / fy) * 90 + 128, (xx * 0.1 + yy * 0.07 + 40 * i) % 256], -1
        )
        noise = rng.normal(0, 14, (h, w, 3)).astype(np.float32)
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def random_vae(family: str, tmp: Path, device: str):
    """A registry family's real diffusers module with random weights, saved and loaded as a folder."""
    import torch

    from vaelens.build import build_module
    from vaelens.families import get_family
    from vaelens.weights.load import load_vae

    torch.manual_seed(0)
    build_module(get_family(family), device="cpu").save_pretrained(tmp / family)
    return load_vae(tmp / family, device=device)


def naive(files: list[Path], module, size: tuple[int, int], batch: int, device: str) -> float:
    """-> images/s of the plain loop."""
    import torch
    from PIL import Image

    t0 = time.perf_counter()
    for s in range(0, len(files), batch):
        arrays = []
        for f in files[s : s + batch]:
            img = Image.open(f).convert("RGB").resize(size, Image.Resampling.LANCZOS)
            arrays.append(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(device, next(module.parameters()).dtype)
        with torch.no_grad():
            module.encode(x).latent_dist.mean.cpu()
    return len(files) / (time.perf_counter() - t0)


def main() -> None:
    import torch

    from vaelens.datasets import CacheOptions, EncodeSettings, cache_dataset, make_bucketing
    from vaelens.options import DType
    from vaelens.weights.demo import load_demo_vae

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--source", default="1600x1200", help="WxH of the generated JPEGs")
    ap.add_argument("--size", default="256x256", help="WxH encoded")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--configs", default="default",
                    help="vaelens configurations to compare, comma-separated: 'default' (vaelens' own choice) or "
                    "WORKERS:THREADS")
    ap.add_argument("--naive-threads", type=int, default=None,
                    help="torch threads of the naive loop (default: those vaelens' default gives its encoder)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=2, help="alternate naive / vaelens this many times; best of")
    ap.add_argument("--arch", default="demo", help="demo (trained, f4) or a registry family (e.g. sdxl): that "
                    "architecture with random weights, for throughput only (e.g. --arch sdxl --size 1024x1024 "
                    "--device cuda --dtype bf16)")
    ap.add_argument("--dtype", default="auto", help="vaelens' compute dtype (the naive loop runs the module's)")
    args = ap.parse_args()
    src = tuple(int(v) for v in args.source.split("x"))
    size = tuple(int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="vaelens-bench-"))
    try:
        data = tmp / "data"
        data.mkdir()
        make_data(data, args.images, src)
        files = sorted(data.glob("*.jpg"))
        vae = load_demo_vae(device=args.device) if args.arch == "demo" else random_vae(args.arch, tmp, args.device)
        module = vae.module
        if args.dtype != "auto" and args.dtype != "fp32":  # the naive loop in the same dtype, as a user would
            module = copy.deepcopy(module).to(DType.parse(args.dtype).torch)
        from vaelens.datasets.local import split_cpus

        default_workers, default_threads = split_cpus(None, None, args.device)
        naive_threads = args.naive_threads or default_threads or torch.get_num_threads()
        torch.set_num_threads(naive_threads)
        naive(files[: args.batch], module, size, args.batch, args.device)  # warm-up
        bucketing = make_bucketing(vae.spec, size=(size[1], size[0]))  # (H, W)
        configs = {}
        for c in args.configs.split(","):
            w, t = (default_workers, default_threads) if c == "default" else (int(v) for v in c.split(":"))
            configs[c] = (w, t)
        naive_rates: list[float] = []
        cache_rates: dict[str, list[float]] = {c: [] for c in configs}
        n_out = 0
        for _ in range(args.repeat):
            torch.set_num_threads(naive_threads)
            naive_rates.append(naive(files, module, size, args.batch, args.device))
            for c, (w, t) in configs.items():
                out = tmp / f"out{n_out}"
                n_out += 1
                t0 = time.perf_counter()
                report = cache_dataset(
                    data, vae, out, options=CacheOptions(bucketing=bucketing, batch_size=args.batch, workers=w),
                    encode=EncodeSettings(threads=t, dtype=args.dtype),
                )
                cache_rates[c].append(args.images / (time.perf_counter() - t0))
                assert report.encoded == args.images
        result = {
            "device": args.device,
            "arch": args.arch,
            "dtype": args.dtype,
            "images": args.images,
            "source_size": list(src),
            "encoded_size": list(size),
            "batch": args.batch,
            "naive_threads": naive_threads,
            "naive_images_per_s": [round(r, 2) for r in naive_rates],
            "load_average": list(__import__("os").getloadavg()),
            "configs": {
                c: {
                    "workers": configs[c][0],
                    "threads": configs[c][1],
                    "images_per_s": [round(r, 2) for r in rates],
                    "best_vs_best": round(max(rates) / max(naive_rates), 2),
                    "median_pair_speedup": round(
                        float(np.median([r / n for n, r in zip(naive_rates, rates, strict=True)])), 2),
                }
                for c, rates in cache_rates.items()
            },
            "note": "vaelens time is the whole run: scan, hash, decode, encode, shard writes, index",
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
