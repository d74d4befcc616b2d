"""The library's own vocabulary: typed fields instead of prose flags, one name lookup."""

from __future__ import annotations

import pytest

from tiny_models import TINY_KL
from vaelens.contract import apply_size_rule
from vaelens.errors import UnknownFamilyError, did_you_mean
from vaelens.families import FAMILIES, SpecOrigin, get_family
from vaelens.families.from_config import spec_from_config


def test_spec_origin_is_a_typed_field_not_a_note():
    derived = spec_from_config(dict(TINY_KL), source="tiny/config.json")
    assert derived.origin is SpecOrigin.CONFIG
    assert {s.origin for s in FAMILIES} == {SpecOrigin.REGISTRY}
    # The floor warning names who floors: VaeImageProcessor for a bare config, the pipeline otherwise,
    # whatever the notes say.
    _, bare = apply_size_rule(derived, "height", derived.spatial_factor + 1)
    assert bare is not None and "VaeImageProcessor" in bare
    _, flux = apply_size_rule(get_family("flux1"), "height", 1000)
    assert flux is not None and "as its pipeline does" in flux


@pytest.mark.parametrize(("name", "known", "hint"), [
    ("sdxll", ["sd15", "sdxl", "flux1"], "did you mean sdxl? "),
    ("zzz", ["sd15", "sdxl"], ""),
])
def test_did_you_mean(name, known, hint):
    assert did_you_mean(name, known) == hint


def test_unknown_family_and_pipeline_share_the_suggestion():
    from vaelens.pipelines import get_pipeline

    with pytest.raises(UnknownFamilyError, match="did you mean sdxl"):
        get_family("sdxll")
    with pytest.raises(ValueError, match="did you mean .*flux1-dev"):
        get_pipeline("flux1-devv")
