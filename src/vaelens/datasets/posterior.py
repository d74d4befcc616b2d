"""The posterior of one cached latent as a record: mean and log-variance in one latent space, and the one
way to sample it.

A KL VAE's encoder gives a diagonal Gaussian N(mean, exp(logvar)) over the raw latent z. A normalisation
is elementwise affine, n(z) = a·z + b (a = scale, or scale/std_c per channel, or 1/std per patch channel),
so n(z) is Gaussian too, with mean n(mean) and variance a²·exp(logvar): logvar_n = logvar + 2·log|a|
(for SD's ×0.18215 that is logvar − 3.41). `LatentPosterior.normalized` does exactly that, and
`sample()` in the normalised space equals normalising a raw sample drawn with the same noise.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class LatentPosterior(NamedTuple):
    """mean and logvar [..., C, (F,) h, w], both in one latent space (raw, or the family's normalised one).

    A NamedTuple rather than a dataclass so that torch's default_collate batches it field by field: a
    DataLoader batch's "posterior" is a LatentPosterior of [B, ...] tensors, and `.sample()` works there.
    """

    mean: Any
    logvar: Any

    @property
    def std(self) -> Any:
        import torch

        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: Any = None) -> Any:
        """-> mean + std · ε, ε ~ N(0, 1) drawn with `generator` (a torch.Generator) on mean's device."""
        import torch

        eps = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + self.std * eps

    def normalized(self, norm: Any, *, module: Any = None) -> LatentPosterior:
        """raw-latent posterior [C,(F,)h,w] + Normalization -> the same posterior in the normalised space."""
        import torch

        from vaelens.families.spec import NormKind
        from vaelens.normalization import normalize, patchify

        m = self.mean[None]
        zero = normalize(torch.zeros_like(m), norm, module=module)
        scale = normalize(torch.ones_like(m), norm, module=module) - zero  # a in n(z) = a·z + b
        lv = self.logvar[None]
        if norm.kind is NormKind.BATCHNORM_PATCHED:
            lv = patchify(lv, norm.patch or (2, 2))
        return LatentPosterior(mean=normalize(m, norm, module=module)[0],
                               logvar=(lv + 2.0 * torch.log(scale.abs()))[0])
