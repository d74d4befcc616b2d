"""`vaelens explain`: a narrated walk from pixels to latent to tokens and back, with this family's
numbers at every step. Each step names the state object, the axis that changes, and the trade-off."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

from vaelens.contract import ShapePlan, plan_shapes
from vaelens.families import FamilySpec, NormKind, SpecOrigin, get_family
from vaelens.options import PixelRequest
from vaelens.render.tables import human_bytes, norm_formula, shape_str, table, tokens_str

_WIDTH = 100
# Families a reader is likely to know, in the order they are offered for comparison.
_CONTRAST = ("sd15", "flux1", "wan21", "sana", "sdxl")


def _para(text: str, indent: str = "   ") -> str:
    return textwrap.fill(" ".join(text.split()), _WIDTH, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False)


def _gaussian(spec: FamilySpec) -> bool:
    # diffusers names every VAE whose encoder outputs a DiagonalGaussianDistribution AutoencoderKL*.
    return spec.diffusers_class.startswith("AutoencoderKL")


def _encoder_width(spec: FamilySpec) -> int | None:
    cfg = spec.config
    for key in ("block_out_channels", "encoder_block_out_channels"):
        value = cfg.get(key)
        if isinstance(value, (list, tuple)) and value:
            return int(max(value))
    if "base_dim" in cfg and "dim_mult" in cfg:
        return int(cfg["base_dim"]) * int(max(cfg["dim_mult"]))
    return None


def _size_rule_text(spec: FamilySpec) -> str:
    rule = spec.size_rule
    if spec.tokens is None and spec.origin is SpecOrigin.CONFIG:
        return (f"No pipeline is known for this config, so vaelens floors height and width to multiples of "
                f"{rule.multiple}, as diffusers' VaeImageProcessor does. ")
    action = "the pipeline raises an error" if rule.kind.value == "raise" else "the pipeline floors with a warning"
    return (f"The {spec.name} pipeline wants height and width in multiples of {rule.multiple}; otherwise "
            f"{action}. ")


def _attention_tradeoff(spec: FamilySpec, count: int) -> str:
    if spec.tokens is not None and spec.tokens.attention == "linear":
        return (f"The trade-off: this family's self-attention is linear in the {count:,} tokens, so doubling "
                "the side quadruples N and the attention cost with it (softmax attention would grow sixteenfold).")
    return (f"The trade-off: attention cost grows with the square of the {count:,} tokens, so doubling the "
            "side quadruples N and multiplies attention by sixteen.")


def contrast_families(spec: FamilySpec, n: int = 2) -> list[FamilySpec]:
    """Two well-known families whose constants differ from `spec`'s (for the comparison table)."""
    out: list[FamilySpec] = []
    for name in _CONTRAST:
        other = get_family(name)
        if other.name == spec.name or other.normalization == spec.normalization:
            continue
        out.append(other)
        if len(out) == n:
            break
    return out


def _decode_peak(spec: FamilySpec, plan: ShapePlan) -> str | None:
    """The memory model's decode peak, or None while the model is not available."""
    try:
        from vaelens.memory.estimate import estimate_memory
    except ImportError:
        return None
    try:
        est = estimate_memory(spec, plan.request, op="decode")
    except Exception as exc:  # noqa: BLE001 — explain must not die on a memory-model gap
        return f"(the memory model could not estimate it here: {exc})"
    latent_bytes = plan.latent_elements * plan.itemsize
    return (
        f"the memory model predicts a decode peak of {human_bytes(est.peak_bytes)} on a CUDA GPU "
        f"({est.peak_bytes / latent_bytes:,.0f}× the {human_bytes(latent_bytes)} latent) at "
        f"{plan.request.dtype.value}, on top of {human_bytes(est.weights_bytes)} of weights; the peak "
        f"happens in {est.peak_at}."
    )


def _title(spec: FamilySpec, plan: ShapePlan) -> list[str]:
    height, width = plan.used_size
    title = f"{spec.title} — {spec.diffusers_class}, {width}x{height}"
    title += f", {plan.frames} frame{'s' if plan.frames != 1 else ''}" if plan.frames is not None else ""
    out = [title, "=" * len(title), ""]
    for note in plan.warnings:
        out += [_para(f"Note: {note}.", ""), ""]
    return out


def _step_pixels(spec: FamilySpec, plan: ShapePlan) -> list[str]:
    px = plan.pixel_elements
    dt = plan.request.dtype.value
    axes = "[B, C=3, F, H, W]" if plan.frames is not None else "[B, C=3, H, W]"
    return [
        f"1. pixels {shape_str(plan.pixel_shape)}  ({px:,} values, {human_bytes(px * plan.itemsize)} at {dt})",
        _para(
            f"The state is an RGB tensor {axes}, values scaled from [0, 255] to [-1, 1]. "
            + _size_rule_text(spec)
            + (f"Video frames follow {spec.temporal.factor}k+1: frame 0 is encoded alone, every later group "
               f"of {spec.temporal.factor} frames shares one latent frame." if spec.temporal else "")
        ),
    ]


def _step_encoder(spec: FamilySpec) -> list[str]:
    f = spec.spatial_factor
    wide = _encoder_width(spec)
    return [
        f"2. encoder: space ÷{f}" + (f", time ÷{spec.temporal.factor}" if spec.temporal else ""),
        _para(
            f"Strided convolutions (and in some families a pixel patchify first) shrink height and width "
            f"÷{f} per side, ÷{f * f} in area, while widening the channel axis"
            + (f" to {wide} feature maps" if wide else "")
            + (f"; causal 3-D convolutions shrink time ÷{spec.temporal.factor}" if spec.temporal else "")
            + ". The trade-off: every halving makes the later denoiser cheaper, but the encoder must squeeze "
            "more detail into each latent position, so fine texture is what a stronger compression loses."
        ),
    ]


def _step_moments(spec: FamilySpec, plan: ShapePlan) -> list[str]:
    c = spec.latent_channels
    if not _gaussian(spec):
        return ["3. latent (deterministic)", _para(
            f"{spec.diffusers_class} outputs the latent directly: no mean and variance, nothing to sample."
        )]
    mom = list(plan.latent_shape)
    mom[1] = 2 * c
    return [f"3. moments {shape_str(mom)}: mean and log-variance", _para(
        f"The encoder outputs 2×{c} channels: a mean and a log-variance per latent "
        "position — a diagonal Gaussian. Pipelines take the mean (mode) or sample from it; the spread "
        "is what makes the latent space smooth enough to denoise in."
    )]


def _step_latent(spec: FamilySpec, plan: ShapePlan) -> list[str]:
    f, c = spec.spatial_factor, spec.latent_channels
    lat = plan.latent_elements
    return [
        f"4. latent {shape_str(plan.latent_shape)}  ({lat:,} values, {human_bytes(lat * plan.itemsize)}; "
        f"{plan.compression:.1f}× fewer than the pixels)",
        _para(
            f"The channel axis now holds {c} learned features. Latent channels are not colours: channel 0 is "
            "not red and no channel is a brightness map. Each is a feature the encoder learned, and vaelens "
            "shows them as separate heat-maps in latent units; any RGB picture of a latent is an approximation "
            f"(a fitted linear projection) and is labelled so. The trade-off: {c} channels at ÷{f} keep "
            f"{c}/{3 * f * f:.0f} = {c / (3 * f * f):.3f} of the pixel values per frame; more channels "
            "reconstruct better but give the denoiser a harder distribution to learn."
        ),
    ]


_WHY_NORMALISE = {
    NormKind.NONE: "This family feeds the raw latent to its model: no rescaling.",
    NormKind.AFFINE: "The shift and scale bring the latent to roughly zero mean and unit variance, "
    "the scale the diffusion noise schedule assumes.",
    NormKind.PER_CHANNEL: "Each channel gets its own mean and standard deviation, measured on the "
    "training data: channels differ too much in range for one scalar.",
    NormKind.BATCHNORM_PATCHED: "FLUX.2 first packs 2×2 latent patches into channels and then "
    "normalises each packed channel with BatchNorm running statistics stored in the checkpoint.",
}


def _step_normalise(spec: FamilySpec) -> list[str]:
    n = spec.normalization
    rows = [[s.name, s.latent_channels, f"÷{s.spatial_factor}",
             f"÷{s.temporal.factor}" if s.temporal else "–", norm_formula(s), tokens_str(s)]
            for s in (spec, *contrast_families(spec))]
    return [
        f"5. normalise: {norm_formula(spec)}",
        _para(_WHY_NORMALISE[n.kind] + f" Source: {n.source}."),
        "",
        textwrap.indent(table(["family", "C", "space", "time", "normalisation", "tokens"], rows, right=(1,)), "   "),
    ]


def _step_tokens(spec: FamilySpec, plan: ShapePlan) -> list[str]:
    if plan.token_count is None:
        return ["6. tokens: none", _para(
            "This family's denoiser (a UNet, or none at all) convolves the latent grid directly; nothing is "
            "packed into tokens."
        )]
    patch = "×".join(str(p) for p in plan.token_patch or ())
    return [
        f"6. tokens [{plan.request.batch}, {plan.token_count}, {plan.token_dim}]: {patch} patches → one token each",
        _para(
            f"The transformer sees a sequence: each {patch} block of the normalised latent becomes one token "
            f"of {plan.token_dim} numbers (C·{patch.replace('×', '·')}). " + _attention_tradeoff(spec, plan.token_count)
        ),
    ]


def _step_decode(spec: FamilySpec, plan: ShapePlan, spike: str | None) -> list[str]:
    text = (
        "Decoding runs the encoder's path backwards: the latent is un-normalised, then upsampled "
        f"×{spec.spatial_factor} per side through blocks that hold hundreds of channels at full resolution. "
        "That is why decode, not the denoiser's latent, sets the peak memory of a pipeline."
    )
    return [
        f"7. decode → pixels {shape_str(plan.decoded_shape)}: where memory spikes",
        _para(text + (" " + spike[0].upper() + spike[1:] if spike else
                      " Run `vaelens memory` for the predicted peak.")),
    ]


def explain(
    spec: FamilySpec, plan: ShapePlan, *, peak: Callable[[FamilySpec, ShapePlan], str | None] = _decode_peak
) -> str:
    """FamilySpec + ShapePlan -> narrated text (one numbered step per state object)."""
    steps = [
        _step_pixels(spec, plan),
        _step_encoder(spec),
        _step_moments(spec, plan),
        _step_latent(spec, plan),
        _step_normalise(spec),
        _step_tokens(spec, plan),
        _step_decode(spec, plan, peak(spec, plan)),
    ]
    out = _title(spec, plan)
    for i, step in enumerate(steps):
        out += step if i == len(steps) - 1 else [*step, ""]
    return "\n".join(out)


def explain_family(model: str | FamilySpec, request: PixelRequest | None = None) -> str:
    """MODEL + PixelRequest (None: the family's default size) -> narrated text of pixels -> latent -> tokens."""
    from vaelens.contract import check_request, default_request, resolve_model

    spec = resolve_model(model)
    return explain(spec, plan_shapes(spec, check_request(request, caller="explain_family") or default_request(spec)))
