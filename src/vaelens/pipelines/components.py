"""ComponentSpec -> the real transformers / diffusers module on the meta device, and its sizes.

Sizes are counted from the module itself (parameters plus buffers), so they are exactly the
released architecture's — no typed-in parameter counts anywhere.
"""

from __future__ import annotations

import warnings
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

    dtype = DType.parse(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                module = _construct(spec)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ConfigError(
                f"{spec.library.value} {spec.class_name} could not be built from {spec.config_source}: {exc}"
            ) from None
        module = module.to(dtype=dtype.torch)
    return module.eval()


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
    largest_leaf_bytes: int
    largest_leaf: str


def measure_component(module) -> ComponentSize:
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
    return ComponentSize(params=params, buffers=buffers, weights_bytes=nbytes,
                         largest_leaf_bytes=leaf_bytes, largest_leaf=leaf_name)
