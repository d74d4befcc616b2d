"""Video VAE families (and their frame rules). Configs are the released `vae/config.json`."""

from __future__ import annotations

from vaelens.families.spec import FamilySpec

FAMILIES: tuple[FamilySpec, ...] = ()
