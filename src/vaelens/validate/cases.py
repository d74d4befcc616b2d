"""What `vaelens validate` runs: the cases of each section, for the default models or the ones given.

models + quick -> tuple[Case]: peaks (encode and decode, three sizes, two dtypes per model), the device
minimum (two cases), a budgeted tiled decode, cache throughput, precision (the demo VAE on its image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vaelens.families import FamilySpec
from vaelens.options import Choice, DType, PixelRequest
from vaelens.trace import Op

# SDXL's architecture, FLUX.1's (16 channels, no quant convs) and one video family (Wan 2.1, causal 3-D).
DEFAULT_MODELS = ("sdxl", "flux1", "wan21")
DTYPES = (DType.BF16, DType.FP32)
# (height, width); non-square last, so a swapped H and W shows. Quick: the smallest only.
IMAGE_SIZES = ((512, 512), (1024, 1024), (1024, 1536))
# (frames, height, width): one frame (the image path of a video VAE), then clips (4k+1 frames).
VIDEO_SIZES = ((1, 512, 512), (5, 480, 832), (9, 480, 832))
QUICK_IMAGE_SIZES = IMAGE_SIZES[:1]
QUICK_VIDEO_SIZES = ((5, 256, 448),)

# The tiled decode: fp32 so that exactness can be judged in dB (bf16 rounding differs between tile
# shapes), at a size whose untiled decode needs several times the budget.
TILING_SIZE, QUICK_TILING_SIZE = (2048, 2048), (1024, 1024)
TILING_BUDGET, QUICK_TILING_BUDGET = 6 * 2**30, 2 * 2**30
THROUGHPUT_IMAGES, QUICK_THROUGHPUT_IMAGES = 64, 16
THROUGHPUT_SIZE = (512, 512)
DEMO_SIZE = (200, 296)  # (height, width) of src/vaelens/data/demo_coffee.png


class Section(Choice):
    """The sections of a validation run, in the order they run."""

    PEAK = "peak"
    DEVICE_MIN = "device_min"
    TILING = "tiling"
    THROUGHPUT = "throughput"
    PRECISION = "precision"


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One thing to measure: a section, a family, an op on a request (pixels [B,3,(F,)H,W] at a dtype)."""

    section: Section
    spec: FamilySpec | None  # None: the demo VAE (precision)
    op: Op
    request: PixelRequest
    budget_bytes: int | None = None  # tiling
    images: int | None = None  # throughput

    @property
    def family(self) -> str:
        return self.spec.name if self.spec is not None else "demo"

    @property
    def label(self) -> str:
        """'sdxl decode 1024x1024 bf16' (sizes WxH, as on the command line; frames as 'x9f')."""
        r = self.request
        if self.section is Section.PRECISION:
            return f"demo encode+decode {r.dtype.value}"
        frames = f"x{r.frames}f" if r.frames else ""
        batch = f"{r.batch}x" if r.batch != 1 else ""
        return f"{self.family} {self.op.value} {batch}{r.width}x{r.height}{frames} {r.dtype.value}"


def _request(spec: FamilySpec, size: tuple[int, ...], dtype: DType) -> PixelRequest:
    if spec.is_video:
        frames, h, w = size
        return PixelRequest(width=w, height=h, frames=frames, dtype=dtype)
    h, w = size
    return PixelRequest(width=w, height=h, dtype=dtype)


def _sizes(spec: FamilySpec, quick: bool) -> tuple[tuple[int, ...], ...]:
    if spec.is_video:
        return QUICK_VIDEO_SIZES if quick else VIDEO_SIZES
    return QUICK_IMAGE_SIZES if quick else IMAGE_SIZES


def plan_cases(specs: Sequence[FamilySpec], *, quick: bool = False,
               sections: Sequence[Section] = tuple(Section)) -> tuple[Case, ...]:
    """families + quick -> every Case of the run, in order (peaks, device minimum, tiling, throughput,
    precision). The device-minimum, tiling and throughput cases use the first image family given."""
    cases: list[Case] = []
    if Section.PEAK in sections:
        for spec in specs:
            for size in _sizes(spec, quick):
                for dtype in DTYPES:
                    for op in (Op.ENCODE, Op.DECODE):
                        cases.append(Case(section=Section.PEAK, spec=spec, op=op, request=_request(spec, size, dtype)))
    image = next((s for s in specs if not s.is_video), None)
    video = next((s for s in specs if s.is_video), None)
    if Section.DEVICE_MIN in sections:
        # bisection costs a fresh process per try: one case quick, two (an image and a video VAE) otherwise
        picks = [s for s in (image, video) if s is not None][: 1 if quick else 2]
        for spec in picks:
            size = _sizes(spec, True)[0] if quick else _sizes(spec, False)[1]
            cases.append(Case(section=Section.DEVICE_MIN, spec=spec, op=Op.DECODE,
                              request=_request(spec, size, DType.BF16)))
    if image is not None and Section.TILING in sections:
        size = QUICK_TILING_SIZE if quick else TILING_SIZE
        cases.append(Case(section=Section.TILING, spec=image, op=Op.DECODE, request=_request(image, size, DType.FP32),
                          budget_bytes=QUICK_TILING_BUDGET if quick else TILING_BUDGET))
    if image is not None and Section.THROUGHPUT in sections:
        cases.append(Case(section=Section.THROUGHPUT, spec=image, op=Op.ENCODE,
                          request=_request(image, THROUGHPUT_SIZE, DType.BF16),
                          images=QUICK_THROUGHPUT_IMAGES if quick else THROUGHPUT_IMAGES))
    if Section.PRECISION in sections:
        for dtype in (DType.FP16, DType.BF16):  # the demo VAE on the demo photograph (its own size)
            cases.append(Case(section=Section.PRECISION, spec=None, op=Op.FORWARD,
                              request=PixelRequest(width=DEMO_SIZE[1], height=DEMO_SIZE[0], dtype=dtype)))
    return tuple(cases)
