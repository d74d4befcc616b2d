"""The environment a bug report needs: Python, torch, CUDA, cuDNN, diffusers, the GPU driver, the devices.

environment() -> Environment (nothing is allocated on a device; CUDA is initialised only when torch
already says it is available). `vaelens env` prints it; `vaelens validate` prints the same block.
"""

from __future__ import annotations

import platform
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# The NVIDIA kernel module states its version here on Linux ("NVRM version: NVIDIA UNIX x86_64 Kernel
# Module  550.54.15 ..."); torch exposes the CUDA runtime version but not the driver's.
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")

# Packages whose versions change what vaelens computes or measures (besides torch and diffusers).
OPTIONAL_PACKAGES = ("numpy", "safetensors", "transformers", "accelerate", "pillow", "av", "ray")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceInfo:
    """One CUDA device as torch sees it."""

    index: int
    name: str
    total_bytes: int
    capability: str  # compute capability "9.0"
    multiprocessors: int

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "total_bytes": self.total_bytes,
                "capability": self.capability, "multiprocessors": self.multiprocessors}


@dataclass(frozen=True, slots=True, kw_only=True)
class Environment:
    """Versions and devices -> what a bug report about a prediction or a measurement needs."""

    vaelens: str
    python: str
    platform: str
    torch: str
    diffusers: str | None
    cuda: str | None  # the CUDA runtime torch was built with (None: a CPU build)
    cudnn: str | None  # cuDNN as torch loads it, e.g. "9.19.0"
    driver: str | None  # NVIDIA driver (None where it cannot be read)
    cuda_available: bool
    devices: tuple[DeviceInfo, ...] = ()
    cpu_threads: int = 0  # torch.get_num_threads()
    packages: tuple[tuple[str, str], ...] = ()  # other installed packages that matter, (name, version)

    def to_json(self) -> dict[str, Any]:
        return {"vaelens": self.vaelens, "python": self.python, "platform": self.platform, "torch": self.torch,
                "diffusers": self.diffusers, "cuda": self.cuda, "cudnn": self.cudnn, "driver": self.driver,
                "cuda_available": self.cuda_available, "devices": [d.to_json() for d in self.devices],
                "cpu_threads": self.cpu_threads, "packages": dict(self.packages)}

    def device(self, index: int) -> DeviceInfo | None:
        return next((d for d in self.devices if d.index == index), None)


def cudnn_version(raw: int | None) -> str | None:
    """torch.backends.cudnn.version() -> "major.minor.patch" (9.x encodes 91900 as 9.19.0; 8.x 8902 as 8.9.2).

    >>> cudnn_version(91900), cudnn_version(8902), cudnn_version(None)
    ('9.19.0', '8.9.2', None)
    """
    if not raw:
        return None
    if raw >= 10000:  # cuDNN 9: major*10000 + minor*100 + patch
        return f"{raw // 10000}.{raw % 10000 // 100}.{raw % 100}"
    return f"{raw // 1000}.{raw % 1000 // 100}.{raw % 100}"


def driver_version(path: Path = NVIDIA_DRIVER_FILE) -> str | None:
    """The NVIDIA driver version from the kernel module's version file, or None.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "version"
    >>> _ = f.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\\n")
    >>> driver_version(f)
    '550.54.15'
    """
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("NVRM version:"):  # the open module says "Open Kernel Module for x86_64  570.86.15"
            found = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", line + " ")
            return found.group(1) if found else None
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> Environment:
    """-> Environment of this process (versions, driver, every CUDA device torch sees)."""
    import torch

    from vaelens import __version__

    available = bool(torch.cuda.is_available())
    devices = []
    if available:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append(DeviceInfo(index=i, name=p.name, total_bytes=int(p.total_memory),
                                      capability=f"{p.major}.{p.minor}", multiprocessors=int(p.multi_processor_count)))
    cudnn = cudnn_version(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    packages = tuple((n, v) for n in OPTIONAL_PACKAGES if (v := _version(n)) is not None)
    return Environment(
        vaelens=__version__, python=sys.version.split()[0], platform=platform.platform(), torch=torch.__version__,
        diffusers=_version("diffusers"), cuda=torch.version.cuda, cudnn=cudnn, driver=driver_version(),
        cuda_available=available, devices=tuple(devices), cpu_threads=torch.get_num_threads(), packages=packages,
    )
