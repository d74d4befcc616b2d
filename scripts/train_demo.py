"""Train vaelens' demo VAE (a tiny diffusers AutoencoderKL) on scikit-image's public-domain photographs.

    python scripts/train_demo.py [--steps N] [--seed 0] [--threads 1] [--out src/vaelens/data]

Needs scikit-image (its bundled sample photographs are the data; nothing is downloaded). Seeded: the
same steps, seed and thread count give the same weights on the same machine. Writes
  demo_vae.safetensors  fp16 weights; metadata holds the diffusers config and the training record
  demo_vae.json         the training record: data, steps, time, PSNR trained vs untrained on held-out images
  demo_coffee.png       the held-out coffee photograph at half size (the default sample image)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vaelens import __version__
from vaelens.weights.demo import DEMO_CONFIG, HELDOUT_IMAGES, IMAGE_LICENSES, TRAIN_IMAGES

CROP = 64
BATCH = 16
KL_WEIGHT = 1e-6  # Stable Diffusion's VAE used kl_weight 1e-6 (CompVis/stable-diffusion configs/autoencoder)
SCALES = (1.0, 0.5)


def skimage_image(name: str) -> np.ndarray:
    """scikit-image sample name -> float32 [H,W,3] in [0,1]."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return arr[..., :3].astype(np.float32) / 255.0


def rescale(arr: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return arr
    img = Image.fromarray((arr * 255).round().astype(np.uint8))
    w, h = img.size
    img = img.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0


def crop_multiple(arr: np.ndarray, m: int = 8) -> np.ndarray:
    h, w = arr.shape[0] // m * m, arr.shape[1] // m * m
    top, left = (arr.shape[0] - h) // 2, (arr.shape[1] - w) // 2
    return arr[top : top + h, left : left + w]


def to_pixels(arr: np.ndarray) -> torch.Tensor:
    """[H,W,3] in [0,1] -> [1,3,H,W] in [-1,1]"""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None] * 2 - 1


def random_batch(images: list[np.ndarray], rng: np.random.Generator) -> torch.Tensor:
    out = np.empty((BATCH, CROP, CROP, 3), np.float32)
    for i in range(BATCH):
        img = images[rng.integers(len(images))]
        y = rng.integers(img.shape[0] - CROP + 1)
        x = rng.integers(img.shape[1] - CROP + 1)
        patch = img[y : y + CROP, x : x + CROP]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        out[i] = patch
    return torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """pixels in [-1,1] -> PSNR in dB on the [0,1] scale"""
    mse = (((a.clamp(-1, 1) - b) / 2) ** 2).mean().item()
    return 10 * math.log10(1.0 / mse)


@torch.inference_mode()
def evaluate(model, images: dict[str, np.ndarray]) -> dict[str, float]:
    model.eval()
    return {
        name: round(psnr(model.decode(model.encode(to_pixels(a)).latent_dist.mode()).sample, to_pixels(a)), 3)
        for name, a in images.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2e-3)
    # One thread: with two, OpenMP's spinning threads slowed training tenfold whenever other jobs shared the
    # 2-core machine; one thread is as fast there and gives the same numbers every time.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/vaelens/data")
    args = parser.parse_args()

    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    train = [rescale(skimage_image(n), s) for n in TRAIN_IMAGES for s in SCALES]
    heldout = {n: crop_multiple(rescale(skimage_image(n), 0.5)) for n in HELDOUT_IMAGES}

    config = dict(DEMO_CONFIG)
    model = AutoencoderKL.from_config(config)
    untrained = evaluate(model, heldout)
    model.train()

    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    warmup = 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: min(1.0, (i + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / args.steps))),
    )
    t0 = time.perf_counter()
    for step in range(args.steps):
        x = random_batch(train, rng)
        posterior = model.encode(x).latent_dist
        recon = model.decode(posterior.sample()).sample
        rec_loss = (recon - x).abs().mean()
        # SD's loss is sum(|x - x̂|)/B + kl_weight·sum(KL)/B; dividing both by the pixel count keeps the ratio.
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec_loss + KL_WEIGHT * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(
                f"step {step:5d}  L1 {rec_loss.item():.4f}  kl/elem {kl.item():.3f}  {time.perf_counter() - t0:6.1f}s",
                flush=True,
            )
    train_seconds = time.perf_counter() - t0

    # Ship fp16 weights; evaluate exactly what ships (fp16-rounded, loaded back into fp32).
    model.eval()
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in state.items()})
    trained = evaluate(model, heldout)

    # Latent-diffusion rule: scaling_factor = 1 / std of the latents over the training data.
    with torch.inference_mode():
        lat = torch.cat([model.encode(to_pixels(crop_multiple(a))).latent_dist.mode().flatten() for a in train])
    config["scaling_factor"] = round(1.0 / lat.std().item(), 5)

    record = {
        "vaelens_version": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seed": args.seed,
        "steps": args.steps,
        "batch": BATCH,
        "crop": CROP,
        "lr": args.lr,
        "kl_weight": KL_WEIGHT,
        "threads": args.threads,
        "train_seconds": round(train_seconds, 1),
        "parameters": sum(v.numel() for v in state.values()),
        "train_images": {n: IMAGE_LICENSES[n] for n in TRAIN_IMAGES},
        "train_scales": list(SCALES),
        "heldout_images": {n: IMAGE_LICENSES[n] for n in HELDOUT_IMAGES},
        "heldout_size": {n: list(a.shape[:2]) for n, a in heldout.items()},
        "heldout_psnr_db": {"trained": trained, "untrained": untrained},
        "scaling_factor": config["scaling_factor"],
        "latent_std_train": round(lat.std().item(), 5),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(
        state,
        str(args.out / "demo_vae.safetensors"),
        metadata={
            "vaelens_config": json.dumps(config),
            "vaelens_demo": json.dumps(record),
            "vaelens_family": "demo",
            "vaelens_title": "vaelens demo VAE (tiny AutoencoderKL, f8 c4, trained by scripts/train_demo.py)",
        },
    )
    (args.out / "demo_vae.json").write_text(json.dumps({"config": config, **record}, indent=2) + "\n")
    coffee = (heldout["coffee"] * 255).round().astype(np.uint8)
    Image.fromarray(coffee).save(args.out / "demo_coffee.png", optimize=True)
    print(json.dumps(record["heldout_psnr_db"], indent=2))


if __name__ == "__main__":
    main()
