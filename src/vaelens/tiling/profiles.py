"""Device profiles: what a device can move and compute per second, each figure with its source.

name -> DeviceProfile (PCIe host<->device rates, pinned and pageable; dense throughput per dtype;
device memory bandwidth and size). The tiling planner prices a plan with one (vaelens.tiling.cost).

Rates are bytes or floating-point operations per second (an FMA counts as 2 flops, as datasheets
count). Vendor peak figures are quoted dense (datasheets print "with sparsity" figures twice the dense
ones; sparse kernels are never used by a VAE). What a real kernel reaches is a separate, documented
fraction (`achieved`), so the datasheet figure stays checkable against its source.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vaelens.errors import VaeLensError, did_you_mean
from vaelens.options import DType

__all__ = ["DeviceProfile", "detect_profile", "get_profile", "profile_names"]

GB = 1e9  # datasheets write GB/s and TFLOPS in powers of ten
TFLOPS = 1e12
GiB = 1 << 30


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceProfile:
    """One device's rates: copies over the host link, dense compute per dtype, memory bandwidth and size.

    `dense_flops[dtype]` is the datasheet's dense peak for the units PyTorch uses at that dtype (tensor
    cores for bf16/fp16; for fp32 see `fp32_conv_flops`); `achieved` the fraction of it a large
    convolution or matmul reaches (a separate figure with its own source); `sources` names the source of
    every other field.
    """

    name: str
    title: str
    kind: str  # "cuda" | "cpu"
    h2d_pinned: float  # bytes/s, host -> device from page-locked memory
    h2d_pageable: float  # bytes/s, host -> device from ordinary (pageable) memory
    d2h_pinned: float
    d2h_pageable: float
    dense_flops: Mapping[str, float]  # dtype value ("bf16", "fp16", "fp32") -> flop/s, dense peak
    fp32_conv_flops: float  # flop/s of an fp32 convolution (TF32 tensor cores where PyTorch allows them)
    achieved: Mapping[str, float]  # dtype value -> fraction of the dense peak dense operations reach
    memory_bandwidth: float  # bytes/s of device memory (bytes-bound operations)
    memory_bytes: int  # device memory size
    match: tuple[str, ...] = ()  # lower-case substrings of torch.cuda.get_device_name() that select it
    sources: Mapping[str, str] = field(default_factory=dict)

    def copy_rate(self, direction: str, pinned: bool) -> float:
        """'h2d' | 'd2h', pinned -> bytes/s."""
        if direction == "h2d":
            return self.h2d_pinned if pinned else self.h2d_pageable
        if direction == "d2h":
            return self.d2h_pinned if pinned else self.d2h_pageable
        raise VaeLensError(f"direction {direction!r} is not a copy direction; choose one of: h2d, d2h",
                           param="direction", value=direction, choices=("h2d", "d2h"))

    def compute_rate(self, dtype: DType | str, *, conv: bool = False) -> float:
        """dtype (+ whether the op is a convolution) -> flop/s a dense kernel reaches (peak x achieved).

        fp32 convolutions use `fp32_conv_flops`: PyTorch lets cuDNN use TF32 tensor cores for them by
        default (torch.backends.cudnn.allow_tf32 = True) but not for matmuls
        (torch.backends.cuda.matmul.allow_tf32 = False), per PyTorch's "TensorFloat-32 (TF32) on Ampere
        (and later) devices" notes (docs/source/notes/cuda.rst).
        """
        dt = DType.parse(dtype)
        peak = self.fp32_conv_flops if (conv and dt is DType.FP32) else self.dense_flops[dt.value]
        return peak * self.achieved[dt.value]

    def to_dict(self) -> dict[str, Any]:
        """The profile as JSON-ready plain data (figures and sources)."""
        return {
            "name": self.name, "title": self.title, "kind": self.kind,
            "h2d_pinned": self.h2d_pinned, "h2d_pageable": self.h2d_pageable,
            "d2h_pinned": self.d2h_pinned, "d2h_pageable": self.d2h_pageable,
            "dense_flops": dict(self.dense_flops), "fp32_conv_flops": self.fp32_conv_flops,
            "achieved": dict(self.achieved), "memory_bandwidth": self.memory_bandwidth,
            "memory_bytes": self.memory_bytes, "sources": dict(self.sources),
        }


# --- shared assumptions about the host link, each with its source ------------------------------------
# PCIe rates per direction: PCIe 4.0 is 16 GT/s per lane, PCIe 5.0 32 GT/s, both with 128b/130b
# encoding (PCI-SIG PCI Express Base Specification 4.0 / 5.0): x16 -> 31.5 / 63.0 GB/s each way.
# (NVIDIA datasheets print the sum of both directions: "PCIe Gen4: 64GB/s", "PCIe Gen5: 128GB/s".)
PCIE4_X16 = 16e9 * 16 / 8 * 128 / 130
PCIE5_X16 = 32e9 * 16 / 8 * 128 / 130
# Pinned copies reach about 80% of the link: the CUDA C++ Best Practices Guide ("Pinned Memory") quotes
# > 5 GB/s pinned on an 8 GB/s PCIe x16 Gen2 link (63%+), and NVIDIA's bandwidthTest sample on Gen3/4/5
# hosts typically reports 75-90% of the link; DMA and packet headers (TLP overhead) take the rest.
PINNED_FRACTION = 0.8
PINNED_SOURCE = ("link rate x 0.8: TLP/DMA overhead; CUDA C++ Best Practices Guide, 'Pinned Memory' "
                 "(> 5 GB/s of an 8 GB/s Gen2 link) and typical CUDA bandwidthTest results")
# Pageable copies go through a driver staging buffer (an extra host memcpy, not overlapped with the
# DMA): NVIDIA Developer Blog, "How to Optimize Data Transfers in CUDA C/C++" (M. Harris) measures
# pageable transfers at about half the pinned rate.
PAGEABLE_FRACTION = 0.5
PAGEABLE_SOURCE = "pinned rate x 0.5: NVIDIA Developer Blog, 'How to Optimize Data Transfers in CUDA C/C++'"
# Achieved fraction of the dense peak, per dtype: calibrated, not a datasheet figure. diffusers runs its
# convolutions on NCHW tensors, and cuDNN's NCHW bf16 kernels (plus layout transforms) reach far less of
# the tensor-core peak than NHWC benchmarks suggest. Method: on the SD-KL rows of
# ../shared/measurements/h100.jsonl at 1024x1024, batch 1 (encode + decode, one H100 SXM), achieved =
# (dense flops / dense peak) / (measured seconds - bytes-bound seconds), summed over the two rows:
# bf16 0.119, fp32 (TF32 convolutions, FP32 matmuls) 0.263. fp16 takes bf16's (same tensor-core rate and
# kernels; h100-large.jsonl's 2048x2048 fp16 and bf16 rows time within 1% of each other).
# tests/test_tiling_cost.py recomputes the fit from those files and checks the other rows against it.
# The A100 and RTX 4090 profiles carry the same fractions over: an assumption, not a measurement.
GPU_ACHIEVED = {"bf16": 0.12, "fp16": 0.12, "fp32": 0.26}
GPU_ACHIEVED_SOURCE = ("calibrated on one H100 SXM: SD-KL 1024x1024 encode + decode rows of "
                       "../shared/measurements/h100.jsonl (see vaelens/tiling/profiles.py)")


def _gpu(name: str, title: str, *, link: float, link_source: str, bf16: float, fp16: float, fp32: float,
         tf32: float, flops_source: str, bandwidth: float, memory: int, memory_source: str,
         match: tuple[str, ...]) -> DeviceProfile:
    pinned = link * PINNED_FRACTION
    pageable = pinned * PAGEABLE_FRACTION
    return DeviceProfile(
        name=name, title=title, kind="cuda", h2d_pinned=pinned, h2d_pageable=pageable, d2h_pinned=pinned,
        d2h_pageable=pageable, dense_flops=_frozen({"bf16": bf16, "fp16": fp16, "fp32": fp32}),
        fp32_conv_flops=tf32, achieved=_frozen(GPU_ACHIEVED), memory_bandwidth=bandwidth, memory_bytes=memory,
        match=match,
        sources=_frozen({
            "h2d_pinned": f"{link_source}; {PINNED_SOURCE}", "d2h_pinned": f"{link_source}; {PINNED_SOURCE}",
            "h2d_pageable": PAGEABLE_SOURCE, "d2h_pageable": PAGEABLE_SOURCE,
            "dense_flops": flops_source, "fp32_conv_flops": flops_source + " (TF32 tensor core, dense)",
            "achieved": GPU_ACHIEVED_SOURCE, "memory_bandwidth": memory_source, "memory_bytes": memory_source,
        }),
    )


# NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column: FP32 67 TFLOPS; TF32 / BF16 / FP16 tensor core
# 989 / 1,979 / 1,979 TFLOPS "with sparsity" (dense: half); 80 GB HBM3 at 3.35 TB/s; PCIe Gen5.
# The measured GPU of ../shared/measurements (torch name "NVIDIA H100 80GB HBM3") is this SXM5 part.
H100 = _gpu(
    "h100", "NVIDIA H100 SXM5 80GB (HBM3)", link=PCIE5_X16,
    link_source="PCIe 5.0 x16, 63.0 GB/s each way (NVIDIA H100 datasheet: 'PCIe Gen5: 128GB/s' both ways)",
    bf16=989.5 * TFLOPS, fp16=989.5 * TFLOPS, fp32=67 * TFLOPS, tf32=494.5 * TFLOPS,
    flops_source="NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: sparse tensor-core figures / 2; FP32 67 TF",
    bandwidth=3.35e12, memory=80 * GiB, memory_source="NVIDIA H100 datasheet, H100 SXM: 80 GB HBM3, 3.35 TB/s",
    match=("h100",),
)
# NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM column: FP32 19.5 TFLOPS; TF32 156, BF16 / FP16 312
# TFLOPS dense (312 / 624 with sparsity); 80 GB HBM2e at 2,039 GB/s; PCIe Gen4.
A100 = _gpu(
    "a100", "NVIDIA A100 SXM4 80GB (HBM2e)", link=PCIE4_X16,
    link_source="PCIe 4.0 x16, 31.5 GB/s each way (NVIDIA A100 datasheet: 'PCIe Gen4: 64GB/s' both ways)",
    bf16=312 * TFLOPS, fp16=312 * TFLOPS, fp32=19.5 * TFLOPS, tf32=156 * TFLOPS,
    flops_source="NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM: dense tensor-core figures; FP32 19.5 TF",
    bandwidth=2.039e12, memory=80 * GiB,
    memory_source="NVIDIA A100 datasheet, A100 80GB SXM: 80 GB HBM2e, 2,039 GB/s", match=("a100",),
)
# NVIDIA Ada Lovelace GPU Architecture whitepaper, appendix table "GeForce RTX 4090": FP32 82.6 TFLOPS;
# FP16 / BF16 tensor with FP32 accumulate 165.2 TFLOPS dense (GeForce runs FP32-accumulate at half the
# FP16-accumulate rate, and cuDNN/cuBLAS accumulate in FP32); TF32 tensor 82.6 dense; 24 GB GDDR6X at
# 1,008 GB/s; PCIe 4.0 x16.
RTX4090 = _gpu(
    "rtx4090", "NVIDIA GeForce RTX 4090 24GB (GDDR6X)", link=PCIE4_X16,
    link_source="PCIe 4.0 x16, 31.5 GB/s each way (PCI Express Base Specification 4.0)",
    bf16=165.2 * TFLOPS, fp16=165.2 * TFLOPS, fp32=82.6 * TFLOPS, tf32=82.6 * TFLOPS,
    flops_source=("NVIDIA Ada Lovelace GPU Architecture whitepaper, RTX 4090: tensor FP16/BF16 with FP32 "
                  "accumulate, dense; FP32 82.6 TF"),
    bandwidth=1.008e12, memory=24 * GiB,
    memory_source="NVIDIA Ada Lovelace whitepaper, RTX 4090: 24 GB GDDR6X, 1,008 GB/s", match=("4090",),
)

# A generic desktop CPU: 8 cores at 3.5 GHz with AVX2, two 256-bit FMA units per core (Intel 64 and
# IA-32 Architectures Optimization Reference Manual: Skylake-class cores issue 2 FMA/cycle):
# 8 x 3.5e9 x 2 FMA x 8 fp32 lanes x 2 flops = 896 GFLOP/s fp32 peak. Without AVX-512 BF16 / AMX, PyTorch
# runs bf16 and fp16 convolutions through fp32 arithmetic plus conversions, so they get the fp32 figure.
# Memory: dual-channel DDR5-4800 = 2 x 4800e6 x 8 B = 76.8 GB/s (JEDEC JESD79-5). A "host <-> device"
# copy on a CPU is a memcpy in the same DRAM (read + write): half the memory bandwidth each way, pinned
# or not. `achieved` 0.5: oneDNN's direct/Winograd-free 3x3 convolutions in PyTorch reach roughly half the
# FMA peak on AVX2 (an assumption; calibrate with benchmarks/tiled_cpu.py on your machine).
_CPU_FP32 = 8 * 3.5e9 * 2 * 8 * 2
_CPU_MEM = 2 * 4800e6 * 8
CPU = DeviceProfile(
    name="cpu", title="generic 8-core AVX2 desktop CPU, dual-channel DDR5-4800", kind="cpu",
    h2d_pinned=_CPU_MEM / 2, h2d_pageable=_CPU_MEM / 2, d2h_pinned=_CPU_MEM / 2, d2h_pageable=_CPU_MEM / 2,
    dense_flops=_frozen({"bf16": _CPU_FP32, "fp16": _CPU_FP32, "fp32": _CPU_FP32}), fp32_conv_flops=_CPU_FP32,
    achieved=_frozen({"bf16": 0.5, "fp16": 0.5, "fp32": 0.5}), memory_bandwidth=_CPU_MEM, memory_bytes=32 * GiB,
    sources=_frozen({
        "h2d_pinned": "memcpy in host DRAM: half of 76.8 GB/s (read + write)", "h2d_pageable": "as pinned",
        "d2h_pinned": "as h2d", "d2h_pageable": "as h2d",
        "dense_flops": ("8 cores x 3.5 GHz x 2 AVX2 FMA/cycle x 8 fp32 lanes x 2 (Intel Optimization Reference "
                        "Manual); bf16/fp16 run as fp32 without AMX"),
        "fp32_conv_flops": "as dense_flops fp32",
        "achieved": "assumption: half the FMA peak for oneDNN 3x3 convolutions on AVX2",
        "memory_bandwidth": "dual-channel DDR5-4800: 2 x 4800 MT/s x 8 B (JEDEC JESD79-5)",
        "memory_bytes": "a typical 32 GiB workstation",
    }),
)

_PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (H100, A100, RTX4090, CPU)}


def profile_names() -> tuple[str, ...]:
    """The profile names get_profile accepts, sorted.

    >>> profile_names()
    ('a100', 'cpu', 'h100', 'rtx4090')
    """
    return tuple(sorted(_PROFILES))


def get_profile(name: str | DeviceProfile) -> DeviceProfile:
    """profile name (any case) -> DeviceProfile; a DeviceProfile is returned as is.

    >>> get_profile("H100").memory_bytes // 2**30
    80
    """
    if isinstance(name, DeviceProfile):
        return name
    key = str(name).strip().lower()
    if key in _PROFILES:
        return _PROFILES[key]
    raise VaeLensError(
        f"device_profile {name!r} is not known; {did_you_mean(key, _PROFILES)}choose one of: "
        f"{', '.join(profile_names())}", param="device_profile", value=name, choices=profile_names())


def detect_profile(device: Any = None) -> DeviceProfile:
    """torch device (or 'cuda:0', 'cpu', None = the current CUDA device if any) -> the matching profile.

    A CUDA device is matched by its name (torch.cuda.get_device_name); an unknown GPU gets the h100
    profile with a warning naming the profiles to choose from. A CPU device gets the cpu profile. None
    and 'meta' (a plan made without weights) mean the machine this runs on: its CUDA device if it has
    one, else the cpu profile.
    """
    import torch

    dev = torch.device(device) if device is not None else torch.device("meta")
    if dev.type == "meta":
        dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if dev.type != "cuda":
        return CPU
    gpu = torch.cuda.get_device_name(dev)
    for profile in _PROFILES.values():
        if any(m in gpu.lower() for m in profile.match):
            return profile
    warnings.warn(f"no device profile for GPU {gpu!r}; timing predictions use the h100 profile "
                  f"(pass device_profile= one of: {', '.join(profile_names())})", stacklevel=2)
    return H100
