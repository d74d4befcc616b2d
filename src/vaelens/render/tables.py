"""Plain-text tables (stable for golden files) and human units."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vaelens.contract import ShapePlan
from vaelens.families import FamilySpec, NormKind
from vaelens.units import human_bytes  # noqa: F401  (the renderers' one byte formatter)


def shape_str(shape: Sequence[int]) -> str:
    """(1, 4, 128, 128) -> '[1, 4, 128, 128]'"""
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[int] = ()) -> str:
    """Rows of cells -> aligned text table; columns listed in `right` are right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        out = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        return "  ".join(out).rstrip()

    rule = "  ".join("─" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def norm_formula(spec: FamilySpec) -> str:
    """The family's normalisation as a one-line formula."""
    from vaelens.normalization import describe

    return describe(spec.normalization)


def normalization_json(spec: FamilySpec) -> dict[str, Any]:
    """The family's normalisation in the one JSON shape (vaelens.normalization.normalization_to_json)."""
    from vaelens.normalization import normalization_to_json

    return normalization_to_json(spec.normalization)


def tokens_str(spec: FamilySpec) -> str:
    if spec.tokens is None:
        return "–"
    patch = "×".join(str(p) for p in spec.tokens.patch)
    import math

    return f"{patch} → D {spec.latent_channels * math.prod(spec.tokens.patch)}"


def render_families(specs: Sequence[FamilySpec]) -> str:
    """Registry -> table: name, class, C, spatial ÷, temporal ÷, normalisation, tokens."""
    rows = []
    for s in specs:
        temporal = "–"
        if s.temporal is not None:
            temporal = f"÷{s.temporal.factor} ({s.temporal.factor}k+1)"
        norm = s.normalization
        if norm.kind is NormKind.PER_CHANNEL:
            short = "per-channel mean/std"
        elif norm.kind is NormKind.BATCHNORM_PATCHED:
            short = "BatchNorm on 2×2 patches"
        else:
            short = norm_formula(s)
        rows.append([s.name, s.diffusers_class, s.latent_channels, f"÷{s.spatial_factor}", temporal, short,
                     tokens_str(s)])
    return table(["family", "class", "C", "space", "time", "normalisation", "tokens"], rows, right=(2,))


def families_json(specs: Sequence[FamilySpec]) -> list[dict[str, Any]]:
    out = []
    for s in specs:
        out.append({
            "name": s.name,
            "aliases": list(s.aliases),
            "title": s.title,
            "class": s.diffusers_class,
            "latent_channels": s.latent_channels,
            "spatial_factor": s.spatial_factor,
            "temporal_factor": s.temporal.factor if s.temporal else None,
            "frame_rule": s.temporal.rule.value if s.temporal else None,
            "normalization": normalization_json(s),
            "tokens": {"patch": list(s.tokens.patch), "source": s.tokens.source} if s.tokens else None,
            "size_rule": {"kind": s.size_rule.kind.value, "multiple": s.size_rule.multiple,
                          "raise_multiple": s.size_rule.raise_multiple, "source": s.size_rule.source},
            "default_size": list(s.default_size),  # [H, W], as every size in the JSON
            "default_frames": s.default_frames,
            "config_source": s.config_source,
        })
    return out


def shapes_json(spec: FamilySpec, plan: ShapePlan) -> dict[str, Any]:
    """ShapePlan -> the `vaelens shapes --json` object (its keys are stable: scripts read them)."""
    data = plan.to_json()
    data["normalized_latent_shape"] = list(normalized_shape(spec, plan))
    data["normalization"] = normalization_json(spec)
    data["class"] = spec.diffusers_class
    return data


def render_shapes(spec: FamilySpec, plan: ShapePlan) -> str:
    """ShapePlan -> a short table of each state object, its shape, elements and bytes."""
    item = plan.itemsize
    dt = plan.request.dtype.value
    import math

    rows = [
        ["pixels", shape_str(plan.pixel_shape), f"{plan.pixel_elements:,}",
         human_bytes(plan.pixel_elements * item)],
        ["latent (raw z)", shape_str(plan.latent_shape), f"{plan.latent_elements:,}",
         human_bytes(plan.latent_elements * item)],
        ["latent (normalised)", shape_str(normalized_shape(spec, plan)), f"{plan.latent_elements:,}",
         human_bytes(plan.latent_elements * item)],
    ]
    if plan.token_count is not None:
        n = plan.request.batch * plan.token_count * plan.token_dim  # type: ignore[operator]
        rows.append(["tokens", shape_str((plan.request.batch, plan.token_count, plan.token_dim)), f"{n:,}",
                     human_bytes(n * item)])
    rows.append(["decoded", shape_str(plan.decoded_shape), f"{math.prod(plan.decoded_shape):,}",
                 human_bytes(math.prod(plan.decoded_shape) * item)])
    head = f"{spec.name} ({spec.diffusers_class}) — {dt}, size {plan.used_size[1]}x{plan.used_size[0]}"
    if plan.frames is not None:
        head += f", {plan.frames} frame{'s' if plan.frames != 1 else ''}"
    lines = [head, "", table(["state", "shape [B, C, (F,) H, W]", "elements", "bytes"], rows, right=(2, 3)), ""]
    lines.append(f"normalisation: {norm_formula(spec)}")
    if plan.token_count is None:
        lines.append("tokens: none (this family's denoiser works on the latent grid, not on tokens)")
    c = plan.compression
    lines.append(f"compression: {c:.1f}× fewer elements in the latent than in the pixels" if c >= 1 else
                 f"compression: none — the latent has {1 / c:.2f}× more elements than the pixels")
    return "\n".join(lines)


def normalized_shape(spec: FamilySpec, plan: ShapePlan) -> tuple[int, ...]:
    """latent [B,C,h,w] -> the normalised latent's shape: the same, except FLUX.2's 2×2-patchified
    [B, 4C, h/2, w/2] (its BatchNorm runs on packed patches)."""
    if spec.normalization.kind is not NormKind.BATCHNORM_PATCHED:
        return plan.latent_shape
    p = spec.normalization.patch or (2, 2)
    b, c, h, w = plan.latent_shape
    return (b, c * p[0] * p[1], h // p[0], w // p[1])
