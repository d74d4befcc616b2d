"""Options shared by every stage: dtype and the pixel request (size, frames, batch)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are strings here (PEP 563)
    from typing_extensions import Self

from vaelens.errors import FrameError, SizeError, VaeLensError
from vaelens.units import parse_bytes  # noqa: F401  (options is where a caller looks for the parsers)

E = TypeVar("E", bound=enum.Enum)


def parse_choice(cls: type[E], value: str | E, what: str) -> E:
    """A string option -> its enum member (any case); anything else raises naming the choices.

    >>> parse_choice(DType, "BF16", "dtype")
    <DType.BF16: 'bf16'>
    """
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).lower())
    except ValueError:
        choices = tuple(str(m.value) for m in cls)
        raise VaeLensError(f"{what} {value!r} is not supported; choose one of: {', '.join(choices)}", param=what,
                           value=value, choices=choices) from None


class Choice(str, enum.Enum):
    """A string option given by users: `parse` takes a member or its value in any case, and anything
    else raises naming the choices (the option is called by the class name in lower case)."""

    @classmethod
    def parse(cls, value: str | Self) -> Self:
        return parse_choice(cls, value, cls.__name__.lower())


class Posterior(Choice):
    """Which latent an encode keeps: the posterior's mode (its mean, for KL VAEs) or a seeded sample of it.
    A VAE without a posterior (TAESD, DC-AE) has one deterministic latent, which both choices return."""

    MODE = "mode"
    SAMPLE = "sample"


# A size beyond this is refused before any work: 16384² RGB at fp32 is already 3 GiB of pixels,
# and the decode activations of an f8 VAE at that size pass a terabyte.
MAX_SIDE = 16384
MAX_FRAMES = 1025
MAX_BATCH = 4096


class DType(Choice):
    """Floating dtypes a VAE runs in."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    @property
    def itemsize(self) -> int:
        return 4 if self is DType.FP32 else 2

    @property
    def torch(self):  # -> torch.dtype (torch imported lazily)
        import torch

        return {DType.FP32: torch.float32, DType.FP16: torch.float16, DType.BF16: torch.bfloat16}[self]

    @classmethod
    def of(cls, torch_dtype) -> DType:
        """torch.float32 | torch.float16 | torch.bfloat16 -> DType; other dtypes raise naming these three."""
        for member in cls:
            if member.torch == torch_dtype:
                return member
        raise VaeLensError(f"dtype {torch_dtype} is not one vaelens runs a VAE in; choose one of: fp32, fp16, bf16",
                           param="dtype", value=str(torch_dtype), choices=tuple(m.value for m in cls))

    @classmethod
    def parse(cls, value: str | DType) -> DType:
        """'fp32' | 'float32' | 'fp16' | 'half' | 'bf16' | 'bfloat16' -> DType"""
        if isinstance(value, DType):
            return value
        aliases = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
        key = aliases.get(str(value).lower(), str(value).lower())
        try:
            return cls(key)
        except ValueError:
            return parse_choice(cls, value, "dtype")  # raises, naming the choices


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' (width first, as image tools write it) -> (height, width), as everywhere in the library.

    >>> parse_size("1024x768")
    (768, 1024)
    """
    raw = text.strip().lower().replace("×", "x")
    parts = raw.split("x")
    # \d (Unicode decimal digits) is exactly what int() accepts; isdigit() also passes '²'.
    if len(parts) != 2 or not all(re.fullmatch(r"\s*-?\d+\s*", p) for p in parts):
        raise SizeError(f"size {text!r} is not WIDTHxHEIGHT; write e.g. 1024x1024 or 832x480", param="size",
                        value=text)
    width, height = (int(p) for p in parts)
    check_side("width", width)
    check_side("height", height)
    return height, width


def check_count(name: str, value: object, low: int, high: int, *, error: type[VaeLensError] = VaeLensError) -> int:
    """A count given by a caller (width, frames, batch) -> the int, if it is a whole number in [low, high]; a
    string, a float with a fraction, a bool or None raises naming the parameter.

    >>> check_count("batch", 4.0, 1, 4096)
    4
    """
    n = _whole(name, value, low, high, error)
    if not low <= n <= high:
        raise error(f"{name} {n} must be between {low} and {high}", param=name, value=value)
    return n


def _whole(name: str, value: object, low: int, high: int, error: type[VaeLensError]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise error(f"{name} {value!r} must be a whole number ({low}..{high})", param=name, value=value)
    return int(value)


def check_side(name: str, value: object) -> int:
    """A pixel width or height -> the int, when it is a whole number in 1..MAX_SIDE; anything else raises."""
    n = _whole(name, value, 1, MAX_SIDE, SizeError)
    if n <= 0:
        raise SizeError(f"{name} {n} must be a positive number of pixels (1..{MAX_SIDE})", param=name, value=value)
    if n > MAX_SIDE:
        raise SizeError(f"{name} {n} is above vaelens' limit of {MAX_SIDE} pixels per side", param=name,
                        value=value)
    return n


@dataclass(frozen=True, slots=True, kw_only=True)
class PixelRequest:
    """What the user asked for: pixels [batch, 3, (frames,) height, width] at dtype."""

    width: int
    height: int
    frames: int | None = None
    batch: int = 1
    dtype: DType = DType.FP32

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", check_side("width", self.width))
        object.__setattr__(self, "height", check_side("height", self.height))
        object.__setattr__(self, "batch", check_count("batch", self.batch, 1, MAX_BATCH))
        if self.frames is not None:
            object.__setattr__(self, "frames", check_count("frames", self.frames, 1, MAX_FRAMES, error=FrameError))
        object.__setattr__(self, "dtype", DType.parse(self.dtype))
