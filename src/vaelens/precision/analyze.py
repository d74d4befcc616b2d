"""Will this VAE overflow in fp16 or lose detail in bf16, where, and what does the fix cost?

LoadedVae + images -> measure_precision -> PrecisionReport:
  1. fp32 on every image: |x| per layer (max, 99.99th percentile, fp16 underflow), the reference output;
  2. fp16 and bf16 emulated (vaelens.precision.watch): the first inf/NaN, PSNR/SSIM vs fp32;
  3. an fp16 overflow -> the shortest run of consecutive blocks kept in fp32 that removes it on every
     image (verified by re-running), priced against all-fp32 and all-bf16 (vaelens.precision.price).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vaelens.errors import VaeLensError
from vaelens.options import Choice, DType
from vaelens.precision.inputs import Item, read_items
from vaelens.precision.price import Price, price_uniform, price_upcast
from vaelens.precision.upcast import block_names, block_of, snippet
from vaelens.precision.watch import BF16_MAX, FP16_MAX, NonFinite, Watch
from vaelens.progress import ProgressFn
from vaelens.trace import Op


class PrecisionOp(Choice):
    """Which calls are analysed: encode, decode (of the fp32 latent), or both (a full round trip)."""

    ENCODE = "encode"
    DECODE = "decode"
    BOTH = "both"


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerRange:
    """One layer's outputs in fp32 over all images: the largest |x|, its 99.99th percentile, and the share of
    non-zero values below fp16's smallest normal (6.1e-5)."""

    name: str
    type: str
    max_abs: float
    p9999_abs: float
    underflow_fraction: float

    @property
    def headroom_fp16(self) -> float:
        """fp16 max ÷ max |x|: below 1 the layer overflows fp16."""
        return FP16_MAX / self.max_abs if self.max_abs else math.inf

    @property
    def headroom_bf16(self) -> float:
        return BF16_MAX / self.max_abs if self.max_abs else math.inf


@dataclass(frozen=True, slots=True, kw_only=True)
class DTypeResult:
    """One half-precision dtype, emulated on every image."""

    dtype: DType
    first: NonFinite | None  # the earliest first inf/NaN over the images (call order)
    failing: tuple[str, ...]  # images whose output held inf/NaN
    images: int
    psnr: tuple[float, ...]  # per image vs fp32 (nan: output not finite)
    ssim: tuple[float, ...]

    @property
    def overflow(self) -> bool:
        return self.first is not None

    @property
    def psnr_db(self) -> float | None:
        """The worst image's PSNR, or None when an output is not finite."""
        return None if self.failing or not self.psnr else min(self.psnr)

    @property
    def ssim_min(self) -> float | None:
        return None if self.failing or not self.ssim else min(self.ssim)


@dataclass(frozen=True, slots=True, kw_only=True)
class UpcastFix:
    """Blocks kept in fp32 (consecutive in call order), the block after them, whether a re-run with them
    was finite on every image, and the two lines that apply them in diffusers."""

    dtype: DType  # the half dtype they fix
    blocks: tuple[str, ...]
    after: str | None
    verified: bool
    snippet: str
    note: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PrecisionReport:
    """measure_precision's answer (see the module docstring). `layers`: every module, in the order their
    outputs were produced; `blocks`: the upcast units in call order; `prices`: "fp32", "fp16", "bf16" and
    "fp16+upcast" when there is a fix (batch 1, the first image's size). `fp32_failure` set: the VAE is not
    finite in fp32 on these images, and nothing else was analysed."""

    family: str
    cls: str
    source: str
    op: PrecisionOp
    images: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    layers: tuple[LayerRange, ...]
    blocks: tuple[str, ...]
    fp16: DTypeResult | None
    bf16: DTypeResult | None
    upcast: UpcastFix | None
    prices: dict[str, Price] = field(default_factory=dict)
    fp32_failure: NonFinite | None = None
    fp32_failing: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def result(self, dtype: DType | str) -> DTypeResult | None:
        return {DType.FP16: self.fp16, DType.BF16: self.bf16}.get(DType.parse(dtype))


# ----------------------------------------------------------------------------------------------- runs


def _ops(op: PrecisionOp) -> tuple[Op, ...]:
    return {PrecisionOp.ENCODE: (Op.ENCODE,), PrecisionOp.DECODE: (Op.DECODE,),
            PrecisionOp.BOTH: (Op.ENCODE, Op.DECODE)}[op]


def _plain(module: Any, op: Op, x: Any) -> Any:
    import torch

    from vaelens.trace import call_op

    with torch.inference_mode():
        return call_op(module, op, [x])


def _watched(watch: Watch, ops: Sequence[Op], x: Any, name: str) -> Any:
    """Run the ops in turn (encode's latent feeds decode) under one Watch; a module that fails on the
    input is refused naming the image."""
    try:
        for op in ops:
            x, _ = watch.run(op, [x])
    except (RuntimeError, ValueError, IndexError) as exc:
        raise VaeLensError(
            f"images= {name!r}: the VAE cannot take input {list(x.shape)}: {str(exc).splitlines()[0]}",
            param="images", value=name,
        ) from None
    return x


def _to_pixels(module: Any, op: PrecisionOp, out: Any) -> Any:
    """An encode-only run's latent -> decoded in fp32 (so every result compares pixels)."""
    return _plain(module, Op.DECODE, out) if op is PrecisionOp.ENCODE else out


def _finite(t: Any) -> bool:
    import torch

    return bool(torch.isfinite(t).all())


def _scores(ref: Any, out: Any) -> tuple[float, float]:
    from vaelens.images import from_pixels
    from vaelens.metrics import psnr, ssim

    if not _finite(out):
        return math.nan, math.nan
    a, b = from_pixels(ref), from_pixels(out)
    values = [ssim(x, y) for x, y in zip(a, b, strict=True)] if min(a.shape[1:3]) >= 11 else [math.nan]
    return psnr(a, b), float(sum(values) / len(values))


def _half_copy(module: Any, dtype: DType, upcast: Sequence[str] = (), after: str | None = None) -> Any:
    """fp32 module -> a copy at `dtype` (fp16/bf16), with the `upcast` blocks in fp32 (apply_upcast)."""
    import copy

    from vaelens.build import quiet_diffusers
    from vaelens.precision.upcast import apply_upcast

    with quiet_diffusers():
        half = copy.deepcopy(module).to(dtype.torch)
    if upcast:
        apply_upcast(half, upcast, after, dtype.torch)
    return half


def _emulate(module: Any, op: PrecisionOp, items: Sequence[Item], starts: Sequence[Any], dtype: DType,
             upcast: Sequence[str] = (), after: str | None = None,
             refs: Sequence[Any] | None = None) -> tuple[list[NonFinite | None], list[tuple[float, float]]]:
    """Every image at `dtype` (with `upcast` blocks in fp32) -> first inf/NaN and (PSNR, SSIM) per image."""
    half = _half_copy(module, dtype, upcast, after)
    firsts, scores = [], []
    for item, x, ref in zip(items, starts, refs or [None] * len(items), strict=True):
        watch = Watch(half, emulate=dtype.torch)
        out = _watched(watch, _ops(op), x.to(dtype.torch), item.name)
        firsts.append(watch.seen.first)
        if ref is not None:
            scores.append(_scores(ref, _to_pixels(module, op, out.float())))
    return firsts, scores


def _earliest(firsts: Sequence[NonFinite | None], order: dict[str, int]) -> NonFinite | None:
    found = [f for f in firsts if f is not None]
    return min(found, key=lambda f: order.get(f.layer, -1)) if found else None


def _search_upcast(module: Any, op: PrecisionOp, items: Sequence[Item], starts: Sequence[Any], dtype: DType,
                   blocks: tuple[str, ...], first: NonFinite, order: dict[str, int],
                   progress: ProgressFn) -> UpcastFix:
    """The shortest run of consecutive blocks, starting at the block of the first overflow and extended
    to each block where the re-run still overflows, until the re-run is finite on every image."""
    label = dtype.torch.__repr__().replace("torch.", "")
    cls = type(module).__name__
    at = block_of(first.layer, blocks)
    if at is None:
        return UpcastFix(dtype=dtype, blocks=(), after=None, verified=False, snippet="",
                         note=f"the first inf/NaN is in {first.layer or cls}'s own code, outside every block: "
                              "only all-fp32 (force_upcast) removes it")
    lo = hi = at
    for step in range(len(blocks)):
        window = blocks[lo : hi + 1]
        progress(step, None, f"{dtype.value}: re-run with {len(window)} block(s) in fp32")
        after = blocks[hi + 1] if hi + 1 < len(blocks) else None
        firsts, _ = _emulate(module, op, items, starts, dtype, window, after)
        again = _earliest(firsts, order)
        if again is None:
            return UpcastFix(dtype=dtype, blocks=window, after=after, verified=True,
                             snippet=snippet(window, after, dtype=label, cls=cls))
        where = block_of(again.layer, blocks)
        if where is None or lo <= where <= hi:
            return UpcastFix(dtype=dtype, blocks=window, after=after, verified=False, snippet="",
                             note=f"with {', '.join(window)} in fp32 an inf/NaN remains at "
                                  f"{again.layer or cls}: only all-fp32 (force_upcast) removes it")
        lo, hi = min(lo, where), max(hi, where)
    raise AssertionError("unreachable: the window covers every block")  # pragma: no cover


def measure_precision(
    vae: Any,
    images: Sequence[Any],
    *,
    size: tuple[int, int] | None = None,
    op: PrecisionOp | str = PrecisionOp.BOTH,
    price: bool = True,
    progress: ProgressFn | None = None,
) -> PrecisionReport:
    """LoadedVae (fp32) + image/clip files or pixels [B,3,(F,)H,W] -> PrecisionReport.

    Each image runs on its own (batch 1) at `size` (H, W) if given, else at its own size after the family's
    size rule. op: "encode", "decode" (the fp32 latent of each image) or "both". `price=False` skips the
    memory predictions. The module is left as it was (hooks removed, weights untouched).

    >>> from vaelens.weights.demo import load_demo_vae, demo_image_path
    >>> rep = measure_precision(load_demo_vae(device="cpu"), [demo_image_path()], size=(64, 64), price=False)
    >>> rep.fp16.overflow, rep.bf16.overflow, rep.fp16.psnr_db > 40
    (False, False, True)
    """
    import torch

    op = PrecisionOp.parse(op)
    tick = progress or (lambda done, total, what: None)
    module = vae.module
    if next(module.parameters()).dtype != torch.float32:
        raise VaeLensError(f"vae= is loaded at {DType.of(next(module.parameters()).dtype).value}; precision needs "
                           "the fp32 weights as its reference (load it with dtype='fp32')",
                           param="vae", value=str(next(module.parameters()).dtype))
    items = read_items(vae, images, size=size)
    ops = _ops(op)
    n = len(items)
    total = 3 * n
    # 1. fp32: layer records (accumulated over the images), the reference output of each image
    stats = Watch(module, stats=True)
    starts, refs, failing = [], [], []
    for i, item in enumerate(items):
        tick(i, total, f"fp32 {item.name}")
        x = item.pixels.to(next(module.parameters()).device)
        if op is PrecisionOp.DECODE:
            x = _watched(Watch(module), (Op.ENCODE,), x, item.name)
        starts.append(x)
        before = stats.seen.first
        out = _watched(stats, ops, x, item.name)
        if stats.seen.first is not None and (before is None or not _finite(out)):
            failing.append(item.name)
        refs.append(_to_pixels(module, op, out))
    order = {p: i for i, p in enumerate(stats.seen.calls)}
    blocks = block_names(module, stats.seen.calls)
    layers = tuple(
        LayerRange(name=s.name, type=s.type, max_abs=s.max_abs, p9999_abs=s.p9999_abs,
                   underflow_fraction=s.underflow_fraction)
        for s in sorted(stats.seen.layers.values(), key=lambda s: s.done)
    )
    base = dict(
        family=vae.family, cls=type(module).__name__, source=str(vae.source), op=op,
        images=tuple(i.name for i in items), input_shapes=tuple(tuple(i.pixels.shape) for i in items),
        layers=layers, blocks=blocks,
        warnings=tuple(w for i in items for w in (f"{i.name}: {x}" for x in i.warnings)),
    )
    if stats.seen.first is not None:
        return PrecisionReport(**base, fp16=None, bf16=None, upcast=None, fp32_failure=stats.seen.first,
                               fp32_failing=tuple(failing))
    # 2. fp16 and bf16, emulated
    results: dict[DType, DTypeResult] = {}
    for k, dtype in enumerate((DType.FP16, DType.BF16)):
        tick(n + k * n, total, f"{dtype.value} emulated")
        firsts, scores = _emulate(module, op, items, starts, dtype, refs=refs)
        results[dtype] = DTypeResult(
            dtype=dtype, first=_earliest(firsts, order), images=n,
            failing=tuple(it.name for it, f, (p, _) in zip(items, firsts, scores, strict=True)
                          if f is not None or math.isnan(p)),
            psnr=tuple(p for p, _ in scores), ssim=tuple(s for _, s in scores),
        )
    # 3. the fix for fp16 (bf16 too, in the rare case it overflows), priced
    fix = None
    for dtype in (DType.FP16, DType.BF16):
        if fix is None and results[dtype].first is not None:
            fix = _search_upcast(module, op, items, starts, dtype, blocks, results[dtype].first, order, tick)
    prices: dict[str, Price] = {}
    if price:
        tick(total, total, "memory model")
        latent = starts[0] if op is PrecisionOp.DECODE else _plain(module, Op.ENCODE, starts[0])
        shapes = {o: tuple(items[0].pixels.shape if o is Op.ENCODE else latent.shape) for o in ops}
        for dtype in (DType.FP32, DType.FP16, DType.BF16):
            prices[dtype.value] = price_uniform(module, shapes, dtype)
        if fix is not None and fix.blocks:
            mixed = price_upcast(module, shapes, fix.blocks, fix.after, fix.dtype)
            prices[mixed.label] = mixed
    return PrecisionReport(**base, fp16=results[DType.FP16], bf16=results[DType.BF16], upcast=fix, prices=prices)


def run_real(module: Any, pixels: Any, *, op: PrecisionOp | str = PrecisionOp.BOTH, dtype: DType | str = DType.FP16,
             upcast: Sequence[str] = (), after: str | None = None) -> tuple[Any, NonFinite | None]:
    """fp32 module + pixels [1,3,(F,)H,W] -> (pixels, first inf/NaN) run for real at `dtype` on a copy of the
    module (with `upcast` blocks in fp32, as apply_upcast does): the check of the emulation on a CPU or GPU
    that runs half precision."""
    op = PrecisionOp.parse(op)
    dtype = DType.parse(dtype)
    watch = Watch(_half_copy(module, dtype, upcast, after))
    x = pixels if op is not PrecisionOp.DECODE else _plain(module, Op.ENCODE, pixels)
    out = _watched(watch, _ops(op), x.to(dtype.torch), "pixels")
    if op is PrecisionOp.ENCODE:
        out = _plain(module, Op.DECODE, out.float())
    return out.float(), watch.seen.first
