"""The local Hugging Face cache, read offline: where it is, whether a name is a repo id, and a repo's
snapshot folder (never downloads). At the bottom of the package, so the registry (a config named by repo
id) and the weights loader both use it without one importing the other."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from vaelens.errors import WeightsError


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Set HF_HUB_OFFLINE=1 (and restore it) so no Hugging Face call inside can reach the network."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def hf_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """-> the hub cache folder: cache_dir, $HF_HUB_CACHE, $HF_HOME/hub, or ~/.cache/huggingface/hub."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home).expanduser() / "hub"


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_like_repo_id(text: str) -> bool:
    """'owner/name' as the Hugging Face Hub writes it (not './x/y', '~/x', 'a/b/c' or a name with spaces).

    >>> looks_like_repo_id("stabilityai/sdxl-vae"), looks_like_repo_id("./models/vae")
    (True, False)
    """
    return _REPO_ID.fullmatch(text) is not None


def hf_cache_folder(repo_id: str, *, cache_dir: str | Path | None = None) -> Path:
    """'owner/name' -> snapshot folder holding config.json or vae/config.json (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    root = hf_cache_dir(cache_dir)
    with offline():
        for name in ("vae/config.json", "config.json"):
            hit = try_to_load_from_cache(repo_id, name, cache_dir=str(root))
            if isinstance(hit, str):
                folder = Path(hit).parent
                return folder.parent if name.startswith("vae/") else folder
    cached = (
        sorted(d.name[len("models--") :].replace("--", "/") for d in root.glob("models--*")) if root.is_dir() else []
    )
    listing = f"; cached repos: {', '.join(cached[:12])}" if cached else f"; the cache ({root}) holds no models"
    raise WeightsError(
        f"{repo_id!r} is not a local path, and as a repo id it has no config.json or vae/config.json in the "
        f"local Hugging Face cache ({root}); "
        f"vaelens never downloads — fetch it first (e.g. `huggingface-cli download {repo_id} --include 'vae/*'`) "
        f"or pass a local path{listing}",
        param="source",
    )
