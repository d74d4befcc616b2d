"""`vaelens precision IMAGE… --vae V`: will this VAE overflow in fp16 or lose detail in bf16 — at which layer,
at which size, and what the fix costs in memory."""

from __future__ import annotations

import argparse

from vaelens.cli._io import add_force, add_quiet, bar_enabled, check_outputs, weights_inputs
from vaelens.cli._vaeargs import load_from_args
from vaelens.cli.common import add_json, emit_json, warn
from vaelens.errors import VaeLensError
from vaelens.options import parse_size
from vaelens.run.inputs import expand

DESCRIPTION = (
    "Run the VAE in fp32 on your images and record |x| per layer; emulate fp16 and bf16 (every operation's "
    "output rounded to the dtype) to find the first inf/NaN and the PSNR/SSIM vs fp32; when fp16 overflows, "
    "find the fewest consecutive blocks to keep in fp32 and price them with the memory model. Exit 0 when "
    "the analysis ran, whatever it found; 1 when the VAE is already inf/NaN in fp32; 2 for bad input."
)
EXAMPLES = [
    "vaelens precision demo --vae demo",
    "vaelens precision photo.png --vae ./sdxl-vae --size 2048x2048 --op decode --plot sdxl_fp16.png",
    "vaelens precision 'photos/*.jpg' --vae ./sdxl-vae --json",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("precision", help="fp16/bf16 overflow per layer, and the priced upcast that fixes it")
    p.add_argument("image", nargs="+", metavar="IMAGE",
                   help="image files, folders or glob patterns ('demo': the sample photograph); a video VAE also "
                        "takes a clip (.mp4 …)")
    g = p.add_argument_group("weights")
    g.add_argument("--vae", metavar="PATH_OR_ID", required=True,
                   help="diffusers folder (or pipeline folder with vae/), single .safetensors file, a repo id in "
                        "the local Hugging Face cache, or 'demo' (vaelens' demo VAE)")
    g.add_argument("--family", metavar="NAME",
                   help="family (or config.json) the weights must be; default: detected from the tensor shapes")
    g.add_argument("--allow-pickle", action="store_true",
                   help="allow .ckpt/.pt/.bin pickle checkpoints (read with torch.load(weights_only=True))")
    g.add_argument("--device", help="cuda | cpu | cuda:N (default: cuda if torch sees one, else cpu)")
    p.add_argument("--size", metavar="WxH", help="resize every image to WxH first (overflow grows with size)")
    p.add_argument("--op", default="both", choices=("encode", "decode", "both"),
                   help="encode, decode (of the fp32 latent), or both (default): the calls analysed")
    p.add_argument("--plot", metavar="FILE", help="write max |x| per layer on a log axis with the fp16 limit "
                                                  "(.png, .svg, .pdf)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory predictions (faster on big VAEs)")
    add_force(p)
    add_quiet(p)
    add_json(p)
    p.set_defaults(func=run, dtype="fp32", upcast="auto")


def run(args: argparse.Namespace) -> int:
    from vaelens.precision import measure_precision
    from vaelens.progress import progress_bar
    from vaelens.render.precision import plot_precision, precision_json, render_precision

    images = expand(args.image)
    if not images:
        raise VaeLensError(f"IMAGE {' '.join(args.image)!r} names no image file")
    if args.plot:
        check_outputs(args, [args.plot], inputs=images + weights_inputs(args), kind="figure", what="--plot")
    size = parse_size(args.size) if args.size else None
    vae = load_from_args(args)
    with progress_bar(f"precision of {vae.family}", enabled=bar_enabled(args), unit="run") as bar:
        rep = measure_precision(vae, images, size=size, op=args.op, price=not args.no_memory, progress=bar)
    if args.plot:
        from vaelens.outputs import atomic_write

        with atomic_write(args.plot) as tmp:
            plot_precision(rep, tmp)
    if args.json:
        data = precision_json(rep)
        if args.plot:
            data["plot"] = str(args.plot)
        emit_json(data)
    else:
        print(render_precision(rep))
        if args.plot:
            print(f"plot: {args.plot}")
    if rep.fp32_failure is not None:
        warn(f"{vae.family} produces inf/NaN in fp32 at {rep.fp32_failure.layer or rep.cls}: the weights (or the "
             "input) are broken; fp16/bf16 were not analysed")
        return 1
    return 0
