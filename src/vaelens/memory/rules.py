"""Per-operator rules: the temporary bytes a CUDA kernel allocates and frees inside one aten operator.

OpEvent -> transient bytes (allocated and released within the operator, on top of its outputs).

Each rule is conditioned on the operator, its dtypes, shapes and memory layout — never on the model.
They were read off the per-operator allocator records in shared/measurements/ops/*.json (H100,
torch 2.11+cu130, cuDNN 9.19): `peak_during - after` of each operator, compared with the operator's
tensor sizes. What each rule mirrors in PyTorch's CUDA code is said beside it.
"""

from __future__ import annotations

from collections.abc import Callable

from vaelens.memory.allocator import BLOCK, round_block
from vaelens.trace import OpEvent, TensorMeta

Rule = Callable[[OpEvent], int]

# cuDNN's NHWC tensor-core kernels want channel counts padded to 16 bytes (8 half / 4 float
# elements): ops/*decode*: a 128->3 conv at bf16 holds an 8-channel output, at fp32 a 4-channel one.
_ALIGN_BYTES = 16


# h100.jsonl, sd-kl-f8c4 / flux2-kl decode 4x3x1024x1024 bf16: the 256->256 conv at 1024² would need
# 2 + 2 GiB of NHWC buffers; the measured peak (8193.1 MiB, equal to the next conv's peak with its
# 3 GiB of buffers) shows it ran without them. The limit is read as cuDNN's engines keeping their
# workspace below 2^32 bytes; one data point supports it, so it is the least certain rule here.
_MAX_TRANSFORM_WORKSPACE = 2**32


def _padded(channels: int, itemsize: int) -> int:
    per = max(1, _ALIGN_BYTES // itemsize)
    return (channels + per - 1) // per * per


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def conv_rule(ev: OpEvent) -> int:
    """cuDNN convolution on NCHW tensors.

    A k>1 convolution runs in NHWC: cuDNN transforms the input, the weight and the output into NHWC
    buffers (channels padded to 16 bytes) and back, so the temporaries are input + weight + output
    again (ops/sd-kl-f8c4-decode-bf16: conv 512->512 at 64² holds 4 + 4.5 + 4 MiB = 13107712 - 512).
    Inputs with fewer than 8 channels take cuDNN's direct NCHW kernel: no temporaries
    (conv_in 3->128, post_quant 4->512). A 1x1 convolution is a GEMM on the NCHW tensor; a
    channels-last input to it is first laid out as the output's layout (wan2.1 decode, 1x1 after
    attention: one output-sized copy). Depthwise convolutions mostly run PyTorch's own NCHW kernel
    (see _cudnn_depthwise). Algorithm workspaces beyond the stride-1 512 bytes (0.5 KiB-16 MiB in
    the records, chosen by cuDNN's heuristics) are not modelled.
    """
    if len(ev.inputs) < 2 or not ev.outputs:
        return 0
    x, w = ev.inputs[0], ev.inputs[1]
    out = ev.outputs[0]
    if len(x.shape) < 3 or len(w.shape) != len(x.shape):
        return 0
    kernel = w.shape[2:]
    cin = x.shape[1]
    if all(k == 1 for k in kernel):
        return 0 if x.is_contiguous() or _is_channels_last(x) and _is_channels_last(out) else round_block(out.nbytes)
    if cin % 8 != 0:
        return 0
    if w.shape[1] == 1 and cin > 1 and w.shape[0] % cin == 0 and not _cudnn_depthwise(x):
        return 0  # PyTorch's own CudaDepthwise2d/3d kernels read NCHW directly
    item = x.itemsize
    spatial_in = _numel(x.shape[2:]) * x.shape[0]
    spatial_out = _numel(out.shape[2:]) * out.shape[0]
    x_nhwc = spatial_in * _padded(cin, item) * item
    out_nhwc = spatial_out * _padded(out.shape[1], item) * item
    w_nhwc = _padded(w.shape[0], item) * _numel(w.shape[1:]) * item
    # Stride-1 kernels also ask for a small workspace: 512 bytes after rounding in every stride-1
    # k>1 convolution of ops/*bf16* (none at stride 2).
    stride = next((s for s in ev.scalars if isinstance(s, (list, tuple, int)) and not isinstance(s, bool)), 1)
    strided = any(v != 1 for v in stride) if isinstance(stride, (list, tuple)) else stride != 1
    workspace = 0 if strided else BLOCK
    total = round_block(x_nhwc) + round_block(out_nhwc) + round_block(w_nhwc) + workspace
    if total >= _MAX_TRANSFORM_WORKSPACE:
        return 0
    return total


def _cudnn_depthwise(x: TensorMeta) -> bool:
    """Whether PyTorch hands a depthwise convolution to cuDNN (aten/src/ATen/native/Convolution.cpp,
    ConvParams::use_cudnn_depthwise): channels-last inputs, or fp16 4-D inputs with >= 32 channels
    (then a workload table decides; taken as cuDNN here). Otherwise its native depthwise kernel."""
    import torch

    if _is_channels_last(x):
        return True
    return x.dtype == torch.float16 and len(x.shape) == 4 and x.shape[1] >= 32


def _is_channels_last(t: TensorMeta) -> bool:
    """[N, C, *spatial] stored with C fastest (strides of the NHWC / NDHWC permutation)."""
    if len(t.shape) < 4:
        return False
    order = [0] + list(range(2, len(t.shape))) + [1]
    expected = 1
    for dim in reversed(order):
        if t.shape[dim] != 1 and t.stride[dim] != expected:
            return False
        expected *= t.shape[dim]
    return True


def _contiguous_copy(t: TensorMeta) -> int:
    return 0 if t.is_contiguous() else round_block(t.nbytes)


def group_norm_rule(ev: OpEvent) -> int:
    """native_group_norm on CUDA: X.contiguous(), mean and rstd [N, G] and the per-channel scale and
    shift a, b [N, C] in float32 (aten/src/ATen/native/cuda/group_norm_kernel.cu), all freed by the
    composite group_norm. ops/*: C=512 -> 5120 bytes, C=256 -> 3072, C=128 -> 2048; a channels-last
    input adds its own size."""
    x = ev.inputs[0]
    n, c = x.shape[0], x.shape[1]
    groups = next((s for s in ev.scalars if isinstance(s, int) and not isinstance(s, bool)), 1)
    return _contiguous_copy(x) + 2 * round_block(n * c * 4) + 2 * round_block(n * groups * 4)


def layer_norm_rule(ev: OpEvent) -> int:
    """native_layer_norm on CUDA: X.contiguous(), mean and rstd [M] float32 (ops/ltx-video: 792576 =
    786432 input copy + 2 * 3072)."""
    x = ev.inputs[0]
    normalized = next((s for s in ev.scalars if isinstance(s, (list, tuple))), (x.shape[-1],))
    m = _numel(x.shape[: len(x.shape) - len(normalized)])
    return _contiguous_copy(x) + 2 * round_block(m * 4)


def contiguous_input_rule(ev: OpEvent) -> int:
    """Kernels that read a contiguous input (CUDA upsample_nearest*, ops/sd decode bf16: the
    channels-last attention output is copied once, 4 MiB at 512x64x64)."""
    return _contiguous_copy(ev.inputs[0]) if ev.inputs else 0


def sdpa_rule(ev: OpEvent) -> int:
    """scaled_dot_product_attention on an sm90 GPU: which backend PyTorch picks, and what it allocates.

    flash (fp16/bf16, head dim <= 256 and a multiple of 8, no mask): the softmax log-sum-exp
    [B, H, L] float32, dropped by the composite. mem-efficient (the rest with head dim % 8 == 0):
    when the output is half and head dim > 128 the CUTLASS kernel keeps an fp32 output accumulator
    [B, L, H, Dv] (ops/sd decode bf16, head dim 512: 8 MiB = 4096*512*4; ops/wan2.1 head dim 384:
    6 MiB; at fp32 it accumulates in the output: 0). math: scores and softmax [B, H, L, S].
    """
    q, k = ev.inputs[0], ev.inputs[1]
    v = ev.inputs[2] if len(ev.inputs) > 2 else k
    has_mask = len(ev.inputs) > 3
    *batch, length, dim = q.shape
    bh = _numel(tuple(batch))
    half = q.itemsize == 2
    if half and dim <= 256 and dim % 8 == 0 and not has_mask:
        return round_block(bh * length * 4)
    if dim % (8 if half else 4) == 0:
        return round_block(bh * length * v.shape[-1] * 4) if half and dim > 128 else 0
    s = k.shape[-2]
    return 2 * round_block(bh * length * s * q.itemsize)


def _bmm_viewable(t: TensorMeta) -> bool:
    """[..., M, K] folds to [batch, M, K] without a copy: the batch dims are dense over the matrix and
    the matrix is row- or column-major (cuBLAS takes either)."""
    if len(t.shape) <= 2:
        return True
    *batch, m, k = t.shape
    sm, sk = t.stride[-2], t.stride[-1]
    if not ((sk == 1 and (sm == k or m == 1)) or (sm == 1 and (sk == m or k == 1))):
        return False
    expected = m * k
    for size, stride in zip(reversed(batch), reversed(t.stride[:-2]), strict=True):
        if size != 1 and stride != expected:
            return False  # includes broadcast (stride 0) batch dims: matmul materialises the expand
        expected *= size
    return True


def matmul_rule(ev: OpEvent) -> int:
    """at::matmul on >2-D operands folds them to bmm with expand + reshape; an operand that is not a
    view of a [batch, M, K] block (transposed batch dims, broadcast) is copied first (the copy has
    the expanded size). DC-AE's linear attention (sana) runs through it."""
    if not ev.inputs or not ev.outputs:
        return 0
    out = ev.outputs[0]
    total = 0
    for t in ev.inputs[:2]:
        if not _bmm_viewable(t):
            batch = _numel(out.shape[:-2]) if len(out.shape) > 2 else 1
            total += round_block(batch * t.shape[-2] * t.shape[-1] * t.itemsize)
    return total


RULES: dict[str, Rule] = {
    "aten.matmul.default": matmul_rule,
    "aten.conv1d.default": conv_rule,
    "aten.conv2d.default": conv_rule,
    "aten.conv3d.default": conv_rule,
    "aten.convolution.default": conv_rule,
    "aten.conv2d.padding": conv_rule,
    "aten.conv3d.padding": conv_rule,
    "aten.group_norm.default": group_norm_rule,
    "aten.native_group_norm.default": group_norm_rule,
    "aten.layer_norm.default": layer_norm_rule,
    "aten.upsample_nearest2d.vec": contiguous_input_rule,
    "aten.upsample_nearest3d.vec": contiguous_input_rule,
    "aten._upsample_nearest_exact2d.vec": contiguous_input_rule,
    "aten._upsample_nearest_exact3d.vec": contiguous_input_rule,
    "aten.scaled_dot_product_attention.default": sdpa_rule,
}


def transient(ev: OpEvent) -> int:
    """OpEvent -> bytes the CUDA kernel allocates and frees inside the operator (0 if none known)."""
    rule = RULES.get(ev.name)
    return rule(ev) if rule is not None else 0
