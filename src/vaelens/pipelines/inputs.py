"""The inputs a pipeline hands each component, as meta tensors, laid out the way its __call__ does.

text encoder: input_ids [B, tokens] (+ attention_mask)      -> hidden states
denoiser:     latent [b, C, (F',) h, w] or its packed tokens, text context [b, L, D], timestep [b]
              with b = 2B where the pipeline batches classifier-free guidance.

A `ModuleCall` wraps the component so `vaelens.trace_module(call, tensors)` runs exactly one forward with
these keyword arguments; the tensors are passed positionally so the tracer counts them as inputs
(resident before the call), as they are in the real pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from vaelens.options import DType
from vaelens.pipelines.spec import ComponentSpec, DenoiserKind, PipelineSpec

Shape = tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorSpec:
    """One input tensor: name, shape and dtype name ('model' = the component's dtype)."""

    name: str
    shape: Shape
    dtype: str = "model"  # "model" | "float32" | "int64"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallPlan:
    """tensors + constants -> the keyword arguments of one component call."""

    tensors: tuple[TensorSpec, ...]
    constants: tuple[tuple[str, Any], ...] = ()
    # Keyword names whose tensors are grouped into one tuple argument: (kwarg, (tensor names…)).
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    nested: tuple[tuple[str, tuple[str, ...]], ...] = ()  # kwarg -> dict of these tensors

    def input_bytes(self, dtype: DType) -> int:
        size = {"model": dtype.itemsize, "float32": 4, "int64": 8}
        total = 0
        for t in self.tensors:
            n = 1
            for d in t.shape:
                n *= d
            total += n * size[t.dtype]
        return total

    def make_tensors(self, dtype: DType, device: str = "meta") -> list:
        """The input tensors: empty on meta; elsewhere filled with values a real call accepts
        (token ids 0, positions arange, timesteps 500, guidance 3.5, activations N(0, 1))."""
        import torch

        kinds = {"model": dtype.torch, "float32": torch.float32, "int64": torch.int64}
        if device == "meta":
            return [torch.empty(t.shape, dtype=kinds[t.dtype], device=device) for t in self.tensors]
        gen = torch.Generator(device="cpu").manual_seed(0)
        out = []
        for t in self.tensors:
            if t.name == "position_ids":
                x = torch.arange(t.shape[-1]).expand(t.shape).contiguous()
            elif t.dtype == "int64":  # masks all ones, token ids 0
                x = torch.full(t.shape, 1 if "mask" in t.name else 0, dtype=torch.int64)
            elif t.name in ("timestep", "guidance"):
                x = torch.full(t.shape, 500.0 if t.name == "timestep" else 3.5)
            else:
                x = torch.randn(t.shape, generator=gen).to(kinds[t.dtype])
            out.append(x.to(device))
        return out

    def kwargs(self, tensors: Sequence[Any]) -> dict[str, Any]:
        by_name = {t.name: x for t, x in zip(self.tensors, tensors, strict=True)}
        grouped = {n for _, names in (*self.groups, *self.nested) for n in names}
        out: dict[str, Any] = {k: v for k, v in by_name.items() if k not in grouped}
        for key, names in self.groups:
            out[key] = tuple(by_name[n] for n in names)
        for key, names in self.nested:
            out[key] = {n: by_name[n] for n in names}
        out.update(dict(self.constants))
        return out


def module_call(module, plan: CallPlan):
    """nn.Module + CallPlan -> a thin nn.Module whose forward(*tensors) calls module(**kwargs)."""
    import torch

    class ModuleCall(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *tensors):
            return self.inner(**plan.kwargs(tensors))

    return ModuleCall()


def text_encoder_plan(component: ComponentSpec, *, batch: int) -> CallPlan:
    """text encoder -> input_ids [B, tokens] (+ attention_mask [B, tokens]) as its pipeline passes them."""
    call = component.call
    assert call is not None, component.name
    tensors = [TensorSpec(name="input_ids", shape=(batch, call.tokens), dtype="int64")]
    # The padding mask is left out: whether transformers materialises it depends on its values
    # (`padding_mask.all()` in masking_utils), which meta tensors do not have. Traced this way the
    # prompt fills the max length; a padded prompt adds a [B,1,L,L] boolean mask (B·L² bytes).
    constants: list[tuple[str, Any]] = []
    if call.output_hidden_states:
        constants.append(("output_hidden_states", True))
    if component.class_name == "Qwen2_5_VLForConditionalGeneration":
        # Text-only prompt: the 3-axis M-RoPE positions are arange(L) on every axis (get_rope_index);
        # passed in, because computing them reads the token ids (data, which meta tensors lack).
        tensors.append(TensorSpec(name="position_ids", shape=(3, batch, call.tokens), dtype="int64"))
    return CallPlan(tensors=tuple(tensors), constants=tuple(constants))


def _context(spec: PipelineSpec) -> tuple[int, int, int]:
    """-> (text tokens, text width, pooled width) the denoiser receives per prompt."""
    encs = spec.text_encoders
    pooled = sum(e.call.pooled_dim for e in encs if e.call)
    if spec.denoiser_kind is DenoiserKind.UNET:
        width = sum(e.call.kept_dim for e in encs if e.call)  # SDXL concatenates CLIP-L and bigG
        return encs[0].call.kept_tokens, width, pooled  # type: ignore[union-attr]
    if spec.denoiser_kind is DenoiserKind.SD3:
        clip_tokens = encs[0].call.kept_tokens  # type: ignore[union-attr]
        t5 = encs[-1].call
        return clip_tokens + t5.kept_tokens, t5.kept_dim, pooled  # type: ignore[union-attr]
    main = max((e for e in encs if e.call and e.call.kept_tokens), key=lambda e: e.call.kept_tokens)
    return main.call.kept_tokens, main.call.kept_dim, pooled  # type: ignore[union-attr]


class _Step(NamedTuple):
    """What every denoiser call shares: call batch, latent, text context, and the config."""

    b: int
    latent: Shape
    L: int  # text tokens
    pooled: int
    cfg: Any
    kind: DenoiserKind
    ts: TensorSpec  # timestep [b]
    ctx: TensorSpec  # encoder_hidden_states [b, L, D]

    @property
    def C(self) -> int:
        return self.latent[1]


def _unet_plan(st: _Step) -> CallPlan:
    h, w = st.latent[-2:]
    tensors = [TensorSpec(name="sample", shape=(st.b, st.C, h, w)), st.ts, st.ctx]
    nested: tuple[tuple[str, tuple[str, ...]], ...] = ()
    if st.cfg.get("addition_embed_type") == "text_time":  # SDXL: pooled bigG + 6 size/crop ids
        tensors += [TensorSpec(name="text_embeds", shape=(st.b, st.pooled)),
                    TensorSpec(name="time_ids", shape=(st.b, 6))]
        nested = (("added_cond_kwargs", ("text_embeds", "time_ids")),)
    return CallPlan(tensors=tuple(tensors), nested=nested, constants=(("return_dict", False),))


def _sd3_sana_plan(st: _Step) -> CallPlan:
    h, w = st.latent[-2:]
    tensors = [TensorSpec(name="hidden_states", shape=(st.b, st.C, h, w)), st.ts, st.ctx]
    if st.kind is DenoiserKind.SD3:
        tensors.append(TensorSpec(name="pooled_projections", shape=(st.b, st.pooled)))
    else:
        tensors.append(TensorSpec(name="encoder_attention_mask", shape=(st.b, st.L), dtype="int64"))
    return CallPlan(tensors=tuple(tensors), constants=(("return_dict", False),))


def _flux_qwen_plan(st: _Step) -> CallPlan:
    b, L = st.b, st.L
    h, w = st.latent[-2:]
    n = (h // 2) * (w // 2)  # 2×2 patches packed into tokens (_pack_latents)
    tensors = [TensorSpec(name="hidden_states", shape=(b, n, st.C * 4)), st.ts, st.ctx]
    constants: list[tuple[str, Any]] = [("return_dict", False)]
    if st.kind is DenoiserKind.FLUX:
        tensors += [TensorSpec(name="pooled_projections", shape=(b, st.pooled)),
                    TensorSpec(name="img_ids", shape=(n, 3)), TensorSpec(name="txt_ids", shape=(L, 3))]
        if st.cfg.get("guidance_embeds"):
            tensors.append(TensorSpec(name="guidance", shape=(b,), dtype="float32"))
    else:
        tensors.append(TensorSpec(name="encoder_hidden_states_mask", shape=(b, L), dtype="int64"))
        constants.append(("img_shapes", [[(1, h // 2, w // 2)]] * b))
    return CallPlan(tensors=tuple(tensors), constants=tuple(constants))


def _wan_hunyuan_plan(st: _Step) -> CallPlan:
    b = st.b
    tensors = [TensorSpec(name="hidden_states", shape=(b, *st.latent[1:])), st.ts, st.ctx]
    if st.kind is DenoiserKind.HUNYUAN:
        tensors += [TensorSpec(name="encoder_attention_mask", shape=(b, st.L), dtype="int64"),
                    TensorSpec(name="pooled_projections", shape=(b, st.pooled)),
                    TensorSpec(name="guidance", shape=(b,), dtype="float32")]
    return CallPlan(tensors=tuple(tensors), constants=(("return_dict", False),))


def _ltx_plan(st: _Step) -> CallPlan:
    f, h, w = st.latent[2:]
    tensors = [TensorSpec(name="hidden_states", shape=(st.b, f * h * w, st.C)), st.ts, st.ctx,
               TensorSpec(name="encoder_attention_mask", shape=(st.b, st.L), dtype="int64")]
    # rope_interpolation_scale = (temporal ratio / frame_rate, spatial, spatial): pipeline_ltx.py,
    # frame_rate=25, VAE ratios 8 and 32 of the LTX VAE.
    constants = (("num_frames", f), ("height", h), ("width", w),
                 ("rope_interpolation_scale", (8 / 25, 32, 32)), ("return_dict", False))
    return CallPlan(tensors=tuple(tensors), constants=constants)


def _cogvideox_plan(st: _Step) -> CallPlan:
    f, h, w = st.latent[2:]
    p = int(st.cfg["patch_size"])
    n = f * (h // p) * (w // p)
    head = int(st.cfg["attention_head_dim"])
    tensors = [TensorSpec(name="hidden_states", shape=(st.b, f, st.C, h, w)), st.ts, st.ctx,
               TensorSpec(name="rope_cos", shape=(n, head), dtype="float32"),
               TensorSpec(name="rope_sin", shape=(n, head), dtype="float32")]
    return CallPlan(tensors=tuple(tensors), groups=(("image_rotary_emb", ("rope_cos", "rope_sin")),),
                    constants=(("return_dict", False),))


_PLANS = {
    DenoiserKind.UNET: _unet_plan,
    DenoiserKind.SD3: _sd3_sana_plan,
    DenoiserKind.SANA: _sd3_sana_plan,
    DenoiserKind.FLUX: _flux_qwen_plan,
    DenoiserKind.QWEN: _flux_qwen_plan,
    DenoiserKind.WAN: _wan_hunyuan_plan,
    DenoiserKind.HUNYUAN: _wan_hunyuan_plan,
    DenoiserKind.LTX: _ltx_plan,
    DenoiserKind.COGVIDEOX: _cogvideox_plan,
}


def denoiser_plan(spec: PipelineSpec, latent: Shape, *, batch: int) -> CallPlan:
    """pipeline + latent [B,C,(F',)h,w] + call batch b -> the denoiser's inputs for one step."""
    L, D, pooled = _context(spec)
    step = _Step(
        b=batch, latent=latent, L=L, pooled=pooled, cfg=spec.denoiser.config, kind=spec.denoiser_kind,
        ts=TensorSpec(name="timestep", shape=(batch,), dtype="float32"),
        ctx=TensorSpec(name="encoder_hidden_states", shape=(batch, L, D)),
    )
    return _PLANS[spec.denoiser_kind](step)

