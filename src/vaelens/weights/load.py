"""Local weights -> the real diffusers module with its family: folders, single files, the HF cache.

source (diffusers folder | pipeline folder with vae/ | single *.safetensors file in diffusers or
original (ldm) key layout | full checkpoint with first_stage_model.* keys | repo id in the local
Hugging Face cache) -> LoadedVae(module on device at dtype, FamilySpec, how the family was decided).

Nothing is downloaded. Original-layout files are converted with diffusers' own single-file mapping
(diffusers/src/diffusers/loaders/single_file_model.py SINGLE_FILE_LOADABLE_CLASSES), with HF_HUB_OFFLINE=1
set for the duration of the call. The family is detected from tensor shapes: every registry family
whose real module has exactly the file's keys and shapes is a candidate; a given family that does not
fit is refused naming both.
"""

from __future__ import annotations

import enum
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from vaelens.errors import VaeLensError, WeightsError
from vaelens.families import FAMILIES, FamilySpec
from vaelens.hfcache import hf_cache_folder, looks_like_repo_id, offline
from vaelens.options import DType
from vaelens.weights.checkpoints import PICKLE_SUFFIXES, VAE_PREFIXES, read_state_dict

WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)


class Layout(str, enum.Enum):
    """Where the weights came from."""

    DIFFUSERS_FOLDER = "diffusers-folder"
    SINGLE_FILE = "single-file"
    HF_CACHE = "hf-cache"
    MODULE = "module"  # a diffusers module handed in (vaelens.encode / decode), no files


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedVae:
    """A real diffusers VAE with weights on `device` at `dtype`, and the family it belongs to."""

    module: Any
    spec: FamilySpec
    source: str
    files: tuple[str, ...]
    layout: Layout
    detection: str
    converted: bool
    device: str
    dtype: DType
    warnings: tuple[str, ...] = field(default=())

    @property
    def family(self) -> str:
        return self.spec.name

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.spec.name,
            "class": self.spec.diffusers_class,
            "source": self.source,
            "files": list(self.files),
            "layout": self.layout.value,
            "detection": self.detection,
            "converted_from_original_keys": self.converted,
            "device": self.device,
            "dtype": self.dtype.value,
            "parameters": sum(p.numel() for p in self.module.parameters()),
        }


def default_device() -> str:
    """-> 'cuda' when torch sees a GPU, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cast_module(module, *, device: str | None = None, dtype=None):
    """module.to(device, dtype) without the warning diffusers logs on every dtype cast."""
    from vaelens.build import quiet_diffusers

    kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    with quiet_diffusers():
        return module.to(**kwargs)


# ------------------------------------------------------------------------------------------ fitting


@dataclass(frozen=True, slots=True, kw_only=True)
class Fit:
    """How a checkpoint fits one family's real module (meta device)."""

    spec: FamilySpec
    state: dict[str, Any] | None  # diffusers-keyed tensors when it fits
    converted: bool
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.state is not None


def _strip_prefix(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    for prefix in VAE_PREFIXES:
        if ckpt and all(k.startswith(prefix) for k in ckpt):
            return {k[len(prefix) :]: v for k, v in ckpt.items()}
    return dict(ckpt)


def _convert(cls_name: str, ckpt: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any] | None:
    """original-layout checkpoint -> diffusers keys with diffusers' own single-file mapping, or None."""
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    fn = SINGLE_FILE_LOADABLE_CLASSES.get(cls_name, {}).get("checkpoint_mapping_fn")
    if fn is None:
        return None
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {"checkpoint": ckpt}
    if "config" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs["config"] = cfg
    from vaelens.build import quiet_diffusers

    try:
        with offline(), quiet_diffusers():
            return dict(fn(**kwargs))
    except Exception:  # noqa: BLE001 — a mapping that fails on this file means: not this layout
        return None


def fit_family(spec: FamilySpec, ckpt: Mapping[str, Any]) -> Fit:
    """checkpoint tensors -> Fit: do its keys and shapes equal those of spec's real module?"""
    from vaelens.build import build_module

    try:
        module = build_module(spec)
    except VaeLensError as exc:
        return Fit(spec=spec, state=None, converted=False, problem=str(exc))
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    ckpt = _strip_prefix(ckpt)
    converted = False
    shared = len(set(expected) & set(ckpt))
    # A file already in this class's key layout (most of its keys are the module's) is compared as is;
    # converting it as if it were an original-layout file would only blur the report.
    if not set(expected) <= set(ckpt) and shared < len(ckpt) / 2:
        mapped = _convert(spec.diffusers_class, ckpt, spec.diffusers_config())
        if mapped is None or not set(expected) & set(mapped):
            return Fit(spec=spec, state=None, converted=False, problem=f"key layout is not {spec.diffusers_class}'s")
        ckpt, converted = mapped, True
    missing = sorted(set(expected) - set(ckpt))
    unexpected = sorted(set(ckpt) - set(expected))
    for key in _latent_first(k for k in expected if k in ckpt):  # shapes first: they say the most
        got = tuple(ckpt[key].shape)
        if got != expected[key]:
            extra = f"; and {len(missing)} missing / {len(unexpected)} unexpected keys" if missing or unexpected else ""
            return Fit(
                spec=spec,
                state=None,
                converted=converted,
                problem=f"{key} is {list(got)} in the file, {list(expected[key])} in {spec.name}{extra}",
            )
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        return Fit(
            spec=spec,
            state=None,
            converted=converted,
            problem=f"{len(missing)} missing / {len(unexpected)} unexpected keys ({what})",
        )
    return Fit(spec=spec, state={k: ckpt[k] for k in expected}, converted=converted)


def _latent_first(keys) -> list[str]:
    """Keys with decoder.conv_in first: its input width is the latent channel count, the clearest clue."""
    return sorted(keys, key=lambda k: (k != "decoder.conv_in.weight", k))


def latent_channels_hint(ckpt: Mapping[str, Any]) -> int | None:
    """checkpoint -> latent channels read off decoder.conv_in.weight [C_out, C_latent, k, k] (KL layouts)."""
    w = _strip_prefix(ckpt).get("decoder.conv_in.weight")
    return int(w.shape[1]) if w is not None and w.ndim >= 2 else None


# -------------------------------------------------------------------------------------------- loading


def _check_device(device: str) -> str:
    """'cpu' | 'cuda' | 'cuda:N' -> the same; another type, a CPU index other than 0 ('cpu:7') or a CUDA
    index this machine does not have is refused."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    bad = dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0))
    if bad:
        raise VaeLensError(f"device {device!r} is not one of: cpu, cuda, cuda:N", param="device", value=device,
                           choices=("cpu", "cuda", "cuda:N"))
    if dev.type == "cuda" and dev.index is not None and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if dev.index >= count:
            raise VaeLensError(f"device {device!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}",
                               param="device", value=device)
    return device


class _Found(NamedTuple):
    """What a source holds: its tensors, the family they are said or detected to be, and from where."""

    ckpt: dict[str, Any]
    spec: FamilySpec
    detection: str
    file: str
    layout: Layout


def _find_weights(text: str, given: FamilySpec | None, *, allow_pickle: bool,
                  cache_dir: str | Path | None) -> _Found:
    """folder | file | repo id in the HF cache -> its checkpoint and family (given, or detected)."""
    from vaelens.build import load_config

    p = Path(text).expanduser()
    from_cache = not p.exists() and looks_like_repo_id(text)
    if from_cache:
        p = hf_cache_folder(text, cache_dir=cache_dir)
    if p.is_dir():
        cfg = load_config(p)
        folder = p / "vae" if not (p / "config.json").is_file() else p
        wfile = _weights_in(folder, allow_pickle)
        ckpt, _ = read_state_dict(wfile, allow_pickle=allow_pickle)
        name = text if from_cache else p.resolve().name  # not 'vae' or a snapshot hash
        spec, detection = _spec_for_folder(cfg, folder, given, ckpt, name=name)
        layout = Layout.HF_CACHE if from_cache else Layout.DIFFUSERS_FOLDER
        return _Found(ckpt=ckpt, spec=spec, detection=detection, file=str(wfile), layout=layout)
    if p.is_file():
        ckpt, meta = read_state_dict(p, allow_pickle=allow_pickle)
        spec, detection = _spec_for_file(p, ckpt, meta, given)
        return _Found(ckpt=ckpt, spec=spec, detection=detection, file=str(p), layout=Layout.SINGLE_FILE)
    raise WeightsError(
        f"source={text!r} is neither a file, a folder, nor a repo id (owner/name) in the local Hugging Face cache",
        param="source",
    )


def load_vae(
    source: str | Path,
    *,
    family: str | FamilySpec | None = None,
    device: str | None = None,
    dtype: DType | str = DType.FP32,
    allow_pickle: bool = False,
    cache_dir: str | Path | None = None,
) -> LoadedVae:
    """folder | file | repo id -> LoadedVae (module in eval mode on device, at dtype).

    `family` (registry name, alias, config path or FamilySpec) is checked against the weights' shapes;
    without it the family is detected from them. source "demo" is vaelens' built-in demo VAE (unless a
    file or folder of that name exists), as `--vae demo` is. dtype "auto": bf16 on CUDA, fp32 on CPU.
    """
    import torch

    from vaelens.run.steps import resolve_dtype

    device = _check_device(device or default_device())
    dtype, _ = resolve_dtype(dtype, device=device)
    if str(source) == "demo" and not Path("demo").exists():
        from vaelens.weights.demo import demo_weights_path

        source = demo_weights_path()
    given = _resolve(family) if family is not None else None
    found = _find_weights(str(source), given, allow_pickle=allow_pickle, cache_dir=cache_dir)
    fit = fit_family(found.spec, found.ckpt)
    if not fit.ok:
        raise _mismatch(found.file, found.ckpt, found.spec, fit)
    module = _module_with_weights(found.spec, fit.state, found.file)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VaeLensError(f"device {device!r} asked for, but torch sees no CUDA GPU; use device='cpu'", param="device")
    module = cast_module(module, device=device, dtype=dtype.torch).eval()
    pickled = found.file.endswith(PICKLE_SUFFIXES)
    notes = ("pickle checkpoint read with torch.load(weights_only=True)",) if pickled else ()
    return LoadedVae(
        module=module,
        spec=found.spec,
        source=str(source),
        files=(found.file,),
        layout=found.layout,
        detection=found.detection,
        converted=fit.converted,
        device=device,
        dtype=dtype,
        warnings=notes,
    )


def _module_with_weights(spec: FamilySpec, state: dict[str, Any], path: str):
    """Build on the meta device and assign the checkpoint's tensors (no random init of a module that is
    about to be overwritten); a module with buffers the checkpoint lacks is built on CPU instead."""
    from vaelens.build import build_module

    module = build_module(spec)
    try:
        module.load_state_dict(state, strict=True, assign=True)
        if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
            module = build_module(spec, device="cpu")
            module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights {path!r} could not be loaded into {spec.diffusers_class}: {exc}",
            param="source") from None
    return module.float()


def _mismatch(path: str, ckpt: Mapping[str, Any], spec: FamilySpec, fit: Fit) -> WeightsError:
    """The weights do not fit `spec`: name both, and the families they do fit."""
    fits = [f.spec.name for f in (fit_family(s, ckpt) for s in FAMILIES if s.name != spec.name) if f.ok]
    hint = latent_channels_hint(ckpt)
    chans = f"the file has {hint} latent channels; " if hint is not None else ""
    also = f"families it fits: {', '.join(fits)}" if fits else "no registry family fits it"
    return WeightsError(
        f"weights {path!r} are not {spec.name} ({spec.latent_channels} latent channels): {fit.problem}; {chans}{also}",
        param="family", value=spec.name, choices=fits,
    )


def _resolve(family: str | FamilySpec) -> FamilySpec:
    from vaelens.contract import resolve_model

    return resolve_model(family)


def _weights_in(folder: Path, allow_pickle: bool) -> Path:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors")) + (sorted(folder.glob("*.bin")) if allow_pickle else [])
    if len(found) == 1:
        return found[0]
    listing = ", ".join(sorted(x.name for x in folder.iterdir())) or "nothing"
    raise WeightsError(
        f"folder {str(folder)!r} has a config.json but no weights vaelens can pick "
        f"(looked for {', '.join(WEIGHT_NAMES)}); it holds: {listing}",
        param="source",
    )


def _spec_for_folder(
    cfg: dict[str, Any], folder: Path, given: FamilySpec | None, ckpt, *, name: str
) -> tuple[FamilySpec, str]:
    """A folder's family: given, the registry family its config matches, or one derived from its config
    and named `name` (the folder or repo id the user gave)."""
    from dataclasses import replace

    from vaelens.families.from_config import spec_from_config

    if given is not None:
        return given, f"given ({given.name}); tensor shapes checked against its module"
    match = registry_match(cfg)
    if match is not None:
        return match, f"config.json matches registry family {match.name} (architecture and normalisation)"
    spec = replace(spec_from_config(cfg, source=str(folder / "config.json")), name=name)
    return spec, "derived from config.json (no registry match)"


def _spec_for_file(p: Path, ckpt, meta: Mapping[str, str], given: FamilySpec | None) -> tuple[FamilySpec, str]:
    if given is not None:
        return given, f"given ({given.name}); tensor shapes checked against its module"
    if "vaelens_config" in meta:  # vaelens' own files (the demo model) carry their diffusers config
        from dataclasses import replace

        from vaelens.families.from_config import spec_from_config

        cfg = json.loads(meta["vaelens_config"])
        spec = spec_from_config(cfg, source=str(p))
        if meta.get("vaelens_family"):
            spec = replace(spec, name=meta["vaelens_family"], title=meta.get("vaelens_title", spec.title))
        return spec, "config stored in the file's metadata"
    fits = [f for f in (fit_family(s, ckpt) for s in FAMILIES) if f.ok]
    if len(fits) == 1:
        return fits[0].spec, f"tensor shapes fit {fits[0].spec.name} only"
    hint = latent_channels_hint(ckpt)
    chans = f" ({hint} latent channels)" if hint is not None else ""
    if not fits:
        raise WeightsError(
            f"weights {str(p)!r}{chans} fit no registry family's module; pass family=NAME, or a config.json "
            "that describes the architecture (family=path/to/config.json)",
            param="family",
        )
    names = ", ".join(f.spec.name for f in fits)
    raise WeightsError(
        f"weights {str(p)!r}{chans} fit {names} alike (same tensor shapes; the families differ in "
        "normalisation or pipeline rules); pass family= to say which",
        param="family",
    )


def registry_match(cfg: Mapping[str, Any]) -> FamilySpec | None:
    """config dict -> the one registry family with the same class and equal values for every key both set."""

    def norm(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    hits = []
    for spec in FAMILIES:
        if spec.diffusers_class != cfg.get("_class_name"):
            continue
        shared = [k for k in spec.config if k in cfg]
        if shared and all(norm(spec.config[k]) == norm(cfg[k]) for k in shared):
            hits.append(spec)
    return hits[0] if len(hits) == 1 else None


def weights_sha256(vae: LoadedVae) -> tuple[str, ...]:
    """LoadedVae -> the sha256 of each weights file it was loaded from (empty for a module handed in):
    what a latent file records so a decode with other weights of the same architecture is caught."""
    import hashlib

    digests = []
    for f in vae.files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                h.update(chunk)
        digests.append(h.hexdigest())
    return tuple(digests)
