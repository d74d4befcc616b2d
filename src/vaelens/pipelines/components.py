"""ComponentSpec -> the real transformers / diffusers module on the meta device, and its sizes.

Sizes are counted from the module itself (parameters plus buffers), so they are exactly the
released architecture's — no typed-in parameter counts anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from vaelens.errors import ConfigError
from vaelens.options import DType
from vaelens.pipelines.spec import ComponentSpec, Library


def build_component(spec: ComponentSpec, *, dtype: DType | str = DType.BF16):
    """ComponentSpec -> nn.Module on the meta device (no storage), eval mode, cast to `dtype`.

    >>> from vaelens.pipelines.catalog import SD15
    >>> m = build_component(SD15.text_encoders[0])
    >>> (type(m).__name__, next(m.parameters()).device.type)
    ('CLIPTextModel', 'meta')
    """
    import torch

    from vaelens.build import quiet_diffusers

    dtype = DType.parse(dtype)
    with quiet_diffusers():  # `.to(dtype)` warns about fp32 modules; keep_fp32 handles them below
        try:
            with torch.device("meta"):
                module = _construct(spec)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ConfigError(
                f"{spec.library.value} {spec.class_name} could not be built from {spec.config_source}: {exc}",
                param="spec", value=spec.class_name,
            ) from None
        module = module.to(dtype=dtype.torch)
    keep_fp32(module, spec.library, dtype)
    return module.eval()


def fp32_patterns(module, library: Library, dtype: DType) -> tuple[str, ...]:
    """Module-name parts the library keeps in fp32 when loading at `dtype` (from_pretrained rules).

    diffusers: `_keep_in_fp32_modules` for any torch_dtype (model_loading_utils.py);
    transformers: `_keep_in_fp32_modules` for fp16 only, `_keep_in_fp32_modules_strict` for fp16 and bf16
    (modeling_utils.py). T5's `wo` is kept in fp32 for fp16, Wan's norms and time embedder always.
    """
    if dtype is DType.FP32:
        return ()
    names: list[str] = []
    if library is Library.DIFFUSERS:
        names += list(getattr(module, "_keep_in_fp32_modules", None) or [])
    else:
        if dtype is DType.FP16:
            names += list(getattr(module, "_keep_in_fp32_modules", None) or [])
        names += list(getattr(module, "_keep_in_fp32_modules_strict", None) or [])
    return tuple(dict.fromkeys(names))


def keep_fp32(module, library: Library, dtype: DType) -> int:
    """Cast the parameters whose dotted name contains a kept part back to fp32; returns how many."""
    import torch

    patterns = fp32_patterns(module, library, dtype)
    if not patterns:
        return 0
    count = 0
    for name, param in list(module.named_parameters()):
        if any(p in name.split(".") for p in patterns):
            owner_path, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            setattr(owner, attr, torch.nn.Parameter(param.to(torch.float32), requires_grad=False))
            count += 1
    return count


def _construct(spec: ComponentSpec):
    if spec.library is Library.DIFFUSERS:
        import diffusers

        cls = getattr(diffusers, spec.class_name)
        return cls.from_config(dict(spec.config))
    import transformers

    config_cls = getattr(transformers, str(spec.config_class))
    model_cls = getattr(transformers, spec.class_name)
    return model_cls(config_cls(**dict(spec.config)))


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentSize:
    """Parameters and weight bytes of one built module at one dtype.

    `largest_leaf_bytes` is the most weight any single module holds directly (not through children):
    what enable_sequential_cpu_offload brings onto the GPU at once.
    """

    params: int
    buffers: int
    weights_bytes: int
    buffer_bytes: int
    largest_leaf_bytes: int
    largest_leaf: str


def component_size(module) -> ComponentSize:
    """nn.Module -> ComponentSize, counted from its parameters and buffers (shared tensors once)."""
    seen: set[int] = set()
    params = buffers = nbytes = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        params += p.numel()
        nbytes += p.numel() * p.element_size()
    for b in module.buffers():
        if id(b) in seen:
            continue
        seen.add(id(b))
        buffers += b.numel()
        nbytes += b.numel() * b.element_size()
    leaf_bytes, leaf_name = 0, ""
    for name, sub in module.named_modules():
        own = sum(t.numel() * t.element_size() for t in sub.parameters(recurse=False))
        own += sum(t.numel() * t.element_size() for t in sub.buffers(recurse=False))
        if own > leaf_bytes:
            leaf_bytes, leaf_name = own, name
    buffer_bytes = sum(b.numel() * b.element_size() for b in {id(b): b for b in module.buffers()}.values())
    return ComponentSize(params=params, buffers=buffers, weights_bytes=nbytes, buffer_bytes=buffer_bytes,
                         largest_leaf_bytes=leaf_bytes, largest_leaf=leaf_name)


def own_parameter_bytes(module) -> dict[str, int]:
    """nn.Module -> {module path: bytes of the parameters it holds directly} (non-zero entries only).

    This is what accelerate's sequential offload moves onto the GPU around each module's forward
    (AlignDevicesHook per module with direct parameters; buffers stay on the GPU).
    """
    out: dict[str, int] = {}
    for name, sub in module.named_modules():
        n = sum(p.numel() * p.element_size() for p in sub.parameters(recurse=False))
        if n:
            out[name] = n
    return out


def stack_weight_peak(timeline, own: dict[str, int]) -> tuple[int, int]:
    """Per-layer activation peaks + own parameter bytes -> (activation, weights) at the worst moment
    when only the running modules' own parameters are on the GPU. The activation is each layer's high end
    (LayerMemory.peak_bytes_high), the basis of every pipeline verdict.

    An operator inside layer L runs with the parameters of L and of L's ancestors loaded; the largest
    activation inside L is L's peak. max over L of (peak_L + own(L) + own(ancestors of L)) is then
    exactly the max over operators of (activations + loaded weights).
    """
    best = (0, 0)
    for layer in timeline:
        parts = layer.path.split(".") if layer.path else []
        weights = own.get("", 0) + sum(own.get(".".join(parts[:i]), 0) for i in range(1, len(parts) + 1))
        if layer.peak_bytes_high + weights > sum(best):
            best = (layer.peak_bytes_high, weights)
    return best
