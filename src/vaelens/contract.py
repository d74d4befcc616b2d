"""Pure shape math: pixels -> latent -> tokens -> pixels, with each family's size and frame rules.

No torch here: every number follows from the FamilySpec, and tests/test_contract.py confirms each
one by running the real diffusers module on the meta device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelens.errors import FrameError, SizeError, VaeLensError
from vaelens.families import FamilySpec, FrameRuleKind, SizeRuleKind, SpecOrigin, get_family
from vaelens.options import PixelRequest

Shape = tuple[int, ...]


def _looks_like_path(text: str) -> bool:
    if "/" in text or "\\" in text or text.endswith(".json"):
        return True
    if not text.strip():
        return False
    # A bare registry name or alias means the family even when a folder of that name exists in the
    # working directory (e.g. ~/models/sdxl/); write ./sdxl for the folder.
    try:
        get_family(text)
    except VaeLensError:
        return Path(text).expanduser().exists()
    return False


def resolve_model(name_or_path: str | FamilySpec) -> FamilySpec:
    """'sdxl' | alias | path to config.json | model folder -> FamilySpec.

    A path gives a spec derived from its config and the module itself (see families.from_config),
    never from the registry's table.

    >>> resolve_model("flux").name
    'flux1'
    """
    if isinstance(name_or_path, FamilySpec):
        return name_or_path
    if not isinstance(name_or_path, (str, Path)):
        raise VaeLensError(f"model {name_or_path!r} is neither a family name nor a path to a config.json / model "
                           "folder", param="model", value=name_or_path)
    text = str(name_or_path)
    if _looks_like_path(text):
        from vaelens.families.from_config import spec_from_config_path

        return spec_from_config_path(text)
    return get_family(text)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShapePlan:
    """pixels [B,3,(F,)H,W] -> latent [B,C,(F',)h,w] -> tokens [B,N,D] -> decoded [B,3,(F,)H,W]."""

    family: str
    request: PixelRequest
    used_size: tuple[int, int]  # (height, width) after the family's size rule
    frames: int | None  # pixel frames after the frame rule (None for image VAEs)
    pixel_shape: Shape
    latent_shape: Shape
    decoded_shape: Shape
    token_count: int | None
    token_dim: int | None
    token_patch: Shape | None
    warnings: tuple[str, ...] = ()

    @property
    def itemsize(self) -> int:
        return self.request.dtype.itemsize

    @property
    def pixel_elements(self) -> int:
        return math.prod(self.pixel_shape)

    @property
    def latent_elements(self) -> int:
        return math.prod(self.latent_shape)

    @property
    def compression(self) -> float:
        """pixel elements ÷ latent elements (the same ratio in bytes at one dtype)."""
        return self.pixel_elements / self.latent_elements

    def to_json(self) -> dict[str, Any]:
        """The stable keys of `vaelens shapes --json` that come from shape math alone."""
        tokens = None
        if self.token_count is not None:
            tokens = {"count": self.token_count, "dim": self.token_dim, "patch": list(self.token_patch or ())}
        return {
            "family": self.family,
            "pixel_shape": list(self.pixel_shape),
            "used_size": list(self.used_size),
            "frames": self.frames,
            "latent_shape": list(self.latent_shape),
            "decoded_shape": list(self.decoded_shape),
            "tokens": tokens,
            "elements": {"pixels": self.pixel_elements, "latent": self.latent_elements},
            "bytes": {
                "pixels": self.pixel_elements * self.itemsize,
                "latent": self.latent_elements * self.itemsize,
            },
            "dtype": self.request.dtype.value,
            "compression": round(self.compression, 4),
            "warnings": list(self.warnings),
        }


def _nearest_multiples(value: int, multiple: int) -> tuple[int, int]:
    low = (value // multiple) * multiple
    return low, low + multiple


def apply_size_rule(spec: FamilySpec, name: str, value: int) -> tuple[int, str | None]:
    """One side in pixels -> (side used, warning or None); raises SizeError per the family's rule.

    >>> apply_size_rule(get_family("flux1"), "height", 1000)[0]
    992
    """
    rule = spec.size_rule
    if rule.raise_multiple and value % rule.raise_multiple:
        low, high = _nearest_multiples(value, rule.raise_multiple)
        choices = f"{low} or {high}" if low > 0 else f"{high}"
        raise SizeError(
            f"{name} {value} is not a multiple of {rule.raise_multiple} for {spec.name}; nearest valid: {choices}",
            param=name, value=value, choices=(low, high),
        )
    m = rule.multiple
    if value % m == 0:
        return value, None
    low, high = _nearest_multiples(value, m)
    if rule.kind is SizeRuleKind.FLOOR and low > 0:
        return low, f"{name} {value} → {low}: {spec.name} floors to a multiple of {m} ({_rule_owner(spec)})"
    choices = f"{low} or {high}" if low > 0 else f"{high}"
    raise SizeError(f"{name} {value} is not a multiple of {m} for {spec.name}; nearest valid: {choices}",
                    param=name, value=value, choices=tuple(v for v in (low, high) if v > 0))


def _rule_owner(spec: FamilySpec) -> str:
    """Who applies a floor: the family's pipeline, or (for a bare config.json) VaeImageProcessor."""
    if spec.origin is SpecOrigin.CONFIG:
        return "as diffusers' VaeImageProcessor does; no pipeline is known for this config"
    return "as its pipeline does"


def latent_frames(spec: FamilySpec, frames: int) -> int:
    """pixel frames F -> latent frames F' = (F - 1) // t + 1 (causal video VAEs keep frame 0 alone)."""
    assert spec.temporal is not None
    return (frames - 1) // spec.temporal.factor + 1


def decoded_frames(spec: FamilySpec, latent_count: int) -> int:
    """latent frames F' -> decoded pixel frames: (F' - 1)·t + 1, or CogVideoX's chunked rule.

    >>> decoded_frames(get_family("wan21"), 21), decoded_frames(get_family("cogvideox-5b"), 4)
    (81, 16)
    """
    rule = spec.temporal
    assert rule is not None
    if rule.decode_chunk is None:
        return (latent_count - 1) * rule.factor + 1
    # diffusers AutoencoderKLCogVideoX._decode: chunks of k latent frames, the first one taking the
    # remainder; CogVideoXUpsample3D (models/upsampling.py) per ×2 time stage: odd n>1 -> 2n-1
    # (first frame kept), even n -> 2n, n == 1 -> 1.
    k = rule.decode_chunk
    count = max(latent_count // k, 1)
    first = min(latent_count, k + latent_count % k)
    chunks = [first] + [k] * (count - 1)
    total = 0
    for n in chunks:
        for _ in range(int(math.log2(rule.factor))):
            n = n if n == 1 else (2 * n - 1 if n % 2 else 2 * n)
        total += n
    return total


def apply_frame_rule(spec: FamilySpec, frames: int | None) -> tuple[int | None, str | None]:
    """requested frames -> (frames used, warning or None); None for image VAEs.

    >>> apply_frame_rule(get_family("wan21"), 80)
    (77, 'frames 80 → 77: wan21 needs 4k+1 frames and floors to the nearest (as its pipeline does)')
    """
    if spec.temporal is None:
        if frames not in (None, 1):
            raise FrameError(
                f"frames {frames}: {spec.name} is an image VAE; frames= applies to video families "
                "(wan21, wan22, cogvideox-2b, cogvideox-5b, hunyuanvideo, ltx-video, mochi)",
                param="frames", value=frames,
            )
        return None, None
    t = spec.temporal.factor
    if frames is None:
        frames = spec.default_frames or (4 * t + 1)
    if (frames - 1) % t == 0 or spec.temporal.rule is FrameRuleKind.ANY:
        return frames, None
    low = (frames - 1) // t * t + 1
    high = low + t
    if spec.temporal.rule is FrameRuleKind.FLOOR:
        return low, (
            f"frames {frames} → {low}: {spec.name} needs {t}k+1 frames and floors to the nearest "
            "(as its pipeline does)"
        )
    raise FrameError(f"frames {frames} is not {t}k+1 for {spec.name}; nearest valid: {low} or {high}",
                     param="frames", value=frames, choices=(low, high))


def _tensor_shapes(
    spec: FamilySpec, batch: int, height: int, width: int, frames: int | None
) -> tuple[Shape, Shape, Shape, str | None]:
    """-> (pixels, latent, decoded) shapes at a size the rules accepted, and a note when the decoded
    frame count differs from the one encoded."""
    f = spec.spatial_factor
    if height % f or width % f:  # a size rule coarser than f always divides; a custom spec may not
        raise SizeError(f"size {width}x{height} is not a multiple of {spec.name}'s spatial factor {f}",
                        param="size", value=(height, width))
    b, c = batch, spec.latent_channels
    h, w = height // f, width // f
    if frames is None:
        if spec.video_module:
            return (b, 3, 1, height, width), (b, c, 1, h, w), (b, 3, 1, height, width), None
        return (b, 3, height, width), (b, c, h, w), (b, 3, height, width), None
    lf = latent_frames(spec, frames)
    out_frames = decoded_frames(spec, lf)
    note = None
    if out_frames != frames:
        note = (
            f"frames {frames} encode to {lf} latent frames, which decode to {out_frames} frames "
            f"({spec.name} keeps frame 0 alone and compresses time ÷{spec.temporal.factor})"  # type: ignore[union-attr]
        )
    return (b, 3, frames, height, width), (b, c, lf, h, w), (b, 3, out_frames, height, width), note


def _token_packing(spec: FamilySpec, latent: Shape) -> tuple[int | None, int | None, Shape | None]:
    """latent shape -> (token count N, token width D, patch) of the family's transformer, or Nones."""
    if spec.tokens is None:
        return None, None, None
    patch = tuple(spec.tokens.patch)
    dims = latent[2:]
    if len(patch) > len(dims):
        raise VaeLensError(f"{spec.name}: token patch {patch} has more axes than latent {latent}")
    lead, tail = dims[: len(dims) - len(patch)], dims[len(dims) - len(patch):]
    for axis, (n, p) in enumerate(zip(tail, patch, strict=True)):
        if n % p:
            raise SizeError(
                f"{spec.name}: latent axis {axis} of size {n} is not divisible by the token patch {p}; "
                f"choose a size that is a multiple of {spec.spatial_factor * p} pixels",
                param="size", value=latent,
            )
    count = math.prod(lead) * math.prod(n // p for n, p in zip(tail, patch, strict=True))
    return count, spec.latent_channels * math.prod(patch), patch


def plan_shapes(spec: FamilySpec, request: PixelRequest) -> ShapePlan:
    """PixelRequest -> ShapePlan: pixel, latent, token and decoded shapes after the family's rules.

    Image VAEs: pixels [B,3,H,W] -> latent [B,C,H/f,W/f]. Video VAEs: [B,3,F,H,W] -> [B,C,(F-1)//t+1,H/f,W/f].

    >>> plan = plan_shapes(get_family("sdxl"), PixelRequest(width=1024, height=1024))
    >>> plan.latent_shape
    (1, 4, 128, 128)
    """
    height, warn_h = apply_size_rule(spec, "height", request.height)
    width, warn_w = apply_size_rule(spec, "width", request.width)
    frames, warn_f = apply_frame_rule(spec, request.frames)
    pixel, latent, decoded, warn_decoded = _tensor_shapes(spec, request.batch, height, width, frames)
    count, dim, patch = _token_packing(spec, latent)
    return ShapePlan(
        family=spec.name,
        request=request,
        used_size=(height, width),
        frames=frames,
        pixel_shape=pixel,
        latent_shape=latent,
        decoded_shape=decoded,
        token_count=count,
        token_dim=dim,
        token_patch=patch,
        warnings=tuple(w for w in (warn_h, warn_w, warn_f, warn_decoded) if w),
    )


def default_request(model: str | FamilySpec, **overrides: Any) -> PixelRequest:
    """MODEL -> its default PixelRequest (size and frames), with any field overridden (None keeps the default).

    >>> default_request("wan21", frames=33)
    PixelRequest(width=832, height=480, frames=33, batch=1, dtype=<DType.FP32: 'fp32'>)
    """
    spec = resolve_model(model)
    height, width = spec.default_size
    fields: dict[str, Any] = {"width": width, "height": height, "frames": spec.default_frames}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return PixelRequest(**fields)


def check_request(request: object, *, caller: str) -> PixelRequest | None:
    """An entry point's `request` argument -> itself when it is a PixelRequest or None; anything else (a tuple
    of sides, a dict) raises naming the form to write."""
    if request is None or isinstance(request, PixelRequest):
        return request
    raise VaeLensError(f"request {request!r} is not a PixelRequest; write {caller}(model, PixelRequest(width=W, "
                       "height=H))", param="request", value=request)


def shapes(model: str | FamilySpec, request: PixelRequest | None = None) -> ShapePlan:
    """MODEL + PixelRequest -> ShapePlan (pixels -> latent -> tokens -> decoded, after the family's rules).

    `request` None uses the family's default size (and frames).

    >>> shapes("flux1", PixelRequest(width=1024, height=1024)).token_count
    4096
    """
    spec = resolve_model(model)
    return plan_shapes(spec, check_request(request, caller="shapes") or default_request(spec))
