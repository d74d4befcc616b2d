"""Per-operator rules: the temporary bytes a CUDA kernel allocates and frees inside one aten operator.

OpEvent -> Transient(best, low, high, fallback): bytes allocated and released within the operator,
on top of its outputs. `best` is the estimate, `low`/`high` bracket a choice the model cannot know
(which cuDNN engine runs a large batched convolution, algorithm workspaces), `fallback` what the
operator needs when `high` cannot be allocated (Conv_v8.cpp's try_configs catches the
out-of-memory error of a plan's workspace and runs the next engine).

Each rule is conditioned on the operator, its dtypes, shapes and memory layout — never on the model.
They were read off the per-operator allocator records in shared/measurements/ops/*.json (H100,
torch 2.11+cu130, cuDNN 9.19): `peak_during - after` of each operator, compared with the operator's
tensor sizes, and checked against the whole-call peaks of shared/measurements/h100*.jsonl. What each
rule mirrors in PyTorch's CUDA code is said beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vaelens.memory.allocator import BLOCK, round_block
from vaelens.trace import OpEvent, TensorMeta


@dataclass(frozen=True, slots=True)
class Transient:
    """One operator's kernel temporaries: estimate, range, and what it can fall back to."""

    best: int
    low: int
    high: int
    fallback: int  # bytes needed when `high`/`best` cannot be allocated (an engine without workspace)
    uncertain: str = ""  # why low < high ("" when the rule is sure)


NONE = Transient(0, 0, 0, 0)


def exact(nbytes: int) -> Transient:
    """A temporary the operator cannot do without (no fallback, no range)."""
    return Transient(nbytes, nbytes, nbytes, nbytes)


Rule = Callable[[OpEvent], Transient]

# cuDNN's NHWC tensor-core kernels want channel counts padded to 16 bytes (8 half / 4 float
# elements): ops/*decode*: a 128->3 conv at bf16 holds an 8-channel output, at fp32 a 4-channel one.
_ALIGN_BYTES = 16

# Algorithm workspaces on top of the layout buffers: 512 B for every stride-1 k>1 convolution of
# ops/*bf16*, more where cuDNN's heuristics picked another algorithm: 16 MiB at most (ops/wan2.1-
# decode: conv3d 384->384 at 3x66x66, 1.6x its 10 MB input), 7.5 MiB (ops/sd-kl-f8c4-decode-fp32:
# 256->128 at 512², 0.03x its input). Which one an unseen shape gets is not knowable: `high` allows
# the largest seen, and no more than twice the input.
_ALGO_WORKSPACE_HIGH = 16 << 20

# Batched convolutions (N > 1) on the layout-buffer path: the engine cuDNN ranks first is a
# closed-source function of the shape. Single-image convolutions took the NHWC engine with its
# buffers at every size measured (64² to 4096², buffers up to 16 GiB: h100-large.jsonl decode 4096²
# is exact with them). Batched ones did up to 3 GiB of buffers (h100.jsonl 4x1024² encode and the
# decode's 256->128 conv at 1024², both at their call's peak) and did not at 4 GiB (the decode's
# 256->256 conv at 1024²: the measured peak is 1.5 GiB below what its buffers would give). The
# best estimate follows that evidence — without the buffers from 2^32 bytes on — and the range
# [without, with] covers every batched convolution, because nothing in the data says where the
# choice flips for other shapes.
_BATCHED_NO_BUFFERS_FROM = 2**32


def _padded(channels: int, itemsize: int) -> int:
    per = max(1, _ALIGN_BYTES // itemsize)
    return (channels + per - 1) // per * per


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def conv_rule(ev: OpEvent) -> Transient:
    """cuDNN convolution on NCHW tensors.

    A k>1 convolution runs in NHWC: cuDNN's engine transforms the input, the weight and the output
    into NHWC buffers (channels padded to 16 bytes) and back, all inside the plan's workspace
    (Conv_v8.cpp run_conv_plan: one allocation of plan.getWorkspaceSize()), so the temporaries are
    input + weight + output again (ops/sd-kl-f8c4-decode-bf16: conv 512->512 at 64² holds
    4 + 4.5 + 4 MiB + 512). Inputs with fewer than 8 channels take cuDNN's direct NCHW kernel: no
    temporaries (conv_in 3->128, post_quant 4->512). A 1x1 convolution is a GEMM on the NCHW
    tensor; a channels-last input to it is first laid out as the output's layout (wan2.1 decode,
    1x1 after attention: one output-sized copy). Depthwise convolutions mostly run PyTorch's own
    NCHW kernel (see _cudnn_depthwise).

    The workspace is optional: when it cannot be allocated (under a memory cap), try_configs
    catches the out-of-memory error and runs the next engine cuDNN lists, down to ones without
    layout buffers (`fallback` 0) — h100.jsonl 4x1024² decode shows such an engine runs these
    convolutions. Batched convolutions: see _BATCHED_NO_BUFFERS_FROM.
    """
    if len(ev.inputs) < 2 or not ev.outputs:
        return NONE
    x, w = ev.inputs[0], ev.inputs[1]
    out = ev.outputs[0]
    if len(x.shape) < 3 or len(w.shape) != len(x.shape):
        return NONE
    kernel = w.shape[2:]
    cin = x.shape[1]
    if all(k == 1 for k in kernel):
        return NONE if x.is_contiguous() or _is_channels_last(x) and _is_channels_last(out) \
            else exact(round_block(out.nbytes))
    if cin % 8 != 0:
        return NONE
    if w.shape[1] == 1 and cin > 1 and w.shape[0] % cin == 0 and not _cudnn_depthwise(x):
        return NONE  # PyTorch's own CudaDepthwise2d/3d kernels read NCHW directly
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
    buffers = round_block(x_nhwc) + round_block(out_nhwc) + round_block(w_nhwc)
    high = buffers + workspace + min(_ALGO_WORKSPACE_HIGH, round_block(2 * x.nbytes))
    if x.shape[0] > 1:
        best = workspace if buffers >= _BATCHED_NO_BUFFERS_FROM else buffers + workspace
        return Transient(best, workspace, high, 0, "cuDNN engine for a batched convolution (NHWC layout buffers "
                                                   "or none)")
    return Transient(buffers + workspace, buffers + workspace, high, 0, "")


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


_CONV = ("aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default", "aten.convolution.default",
         "aten.conv2d.padding", "aten.conv3d.padding")

# Rules that are sure of their bytes (no engine choice): operator -> bytes.
_EXACT: dict[str, Callable[[OpEvent], int]] = {
    "aten.matmul.default": matmul_rule,
    "aten.group_norm.default": group_norm_rule,
    "aten.native_group_norm.default": group_norm_rule,
    "aten.layer_norm.default": layer_norm_rule,
    "aten.upsample_nearest2d.vec": contiguous_input_rule,
    "aten.upsample_nearest3d.vec": contiguous_input_rule,
    "aten._upsample_nearest_exact2d.vec": contiguous_input_rule,
    "aten._upsample_nearest_exact3d.vec": contiguous_input_rule,
    "aten.scaled_dot_product_attention.default": sdpa_rule,
}

RULES: dict[str, Rule] = {
    **{name: conv_rule for name in _CONV},
    **{name: (lambda ev, f=f: exact(f(ev))) for name, f in _EXACT.items()},
}


def transient_range(ev: OpEvent) -> Transient:
    """OpEvent -> Transient: the kernel's temporaries, best estimate and range (NONE if none known)."""
    rule = RULES.get(ev.name)
    return rule(ev) if rule is not None else NONE


def transient(ev: OpEvent) -> int:
    """OpEvent -> bytes the CUDA kernel allocates and frees inside the operator (best estimate)."""
    return transient_range(ev).best
