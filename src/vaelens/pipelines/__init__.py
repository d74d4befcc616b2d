"""Whole-pipeline memory: text encoders, denoiser and VAE of a diffusers pipeline, stage by stage."""

from __future__ import annotations

from vaelens.errors import UnknownPipelineError, did_you_mean
from vaelens.pipelines.catalog import PIPELINES
from vaelens.pipelines.estimate import (
    Offload,
    PipelineEstimate,
    PipelineRequest,
    estimate_pipeline,
)
from vaelens.pipelines.spec import ComponentSpec, Guidance, PipelineSpec, Role


def pipeline_names() -> list[str]:
    """Built-in pipeline names, in catalog order."""
    return [p.name for p in PIPELINES]


def get_pipeline(name: str) -> PipelineSpec:
    """'flux1-dev' | alias -> PipelineSpec; unknown names raise with the list of built-in pipelines.

    >>> get_pipeline("FLUX-DEV").name
    'flux1-dev'
    """
    key = name.strip().lower()
    for spec in PIPELINES:
        if key == spec.name or key in spec.aliases:
            return spec
    keys = [k for p in PIPELINES for k in (p.name, *p.aliases)]
    raise UnknownPipelineError(
        f"unknown pipeline {name!r}; {did_you_mean(key, keys)}built-in: {', '.join(pipeline_names())}",
        param="pipeline", value=name, choices=pipeline_names(),
    )


__all__ = [
    "PIPELINES",
    "ComponentSpec",
    "Guidance",
    "Offload",
    "PipelineEstimate",
    "PipelineRequest",
    "PipelineSpec",
    "Role",
    "UnknownPipelineError",
    "estimate_pipeline",
    "get_pipeline",
    "pipeline_names",
]
