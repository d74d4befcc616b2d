"""The one adapter to diffusers: encode/decode outputs unwrapped in one place, and vaelens.encode runs
the encoder exactly once for every kind of VAE (KL posterior, AutoencoderTiny, AutoencoderDC)."""

from __future__ import annotations

import pytest
import torch

from tiny_models import tiny_kl
from vaelens.build import build_module, decoded_pixels, encoded_latent, quiet_diffusers, run_encode
from vaelens.run import encode, roundtrip
from vaelens.weights.load import load_vae


def _kl():
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(tiny_kl(force_upcast=False))


def _tiny():
    from diffusers import AutoencoderTiny

    return AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                           num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4)


def _dc():
    from diffusers import AutoencoderDC

    return AutoencoderDC(
        latent_channels=4, attention_head_dim=4, encoder_block_types=("ResBlock",) * 2,
        decoder_block_types=("ResBlock",) * 2, encoder_block_out_channels=(8, 16),
        decoder_block_out_channels=(8, 16), encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), ()), decoder_qkv_multiscales=((), ()),
        upsample_block_type="interpolate", downsample_block_type="Conv", scaling_factor=0.5,
    )


MODULES = {"kl": _kl, "taesd": _tiny, "dc-ae": _dc}
PIXELS = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("kind", sorted(MODULES))
@pytest.mark.parametrize("sample", [False, True])
def test_encode_runs_the_encoder_once(tmp_path, kind, sample):
    torch.manual_seed(0)
    MODULES[kind]().eval().save_pretrained(tmp_path / kind)
    vae = load_vae(tmp_path / kind, device="cpu")
    calls: list[tuple[int, ...]] = []
    handle = vae.module.encoder.register_forward_pre_hook(lambda _m, args: calls.append(tuple(args[0].shape)))
    try:
        z = encode(vae, PIXELS, normalized=True, posterior="sample" if sample else "mode", seed=1).latent
        assert calls == [(1, 3, 16, 16)]
        rt = roundtrip(vae, PIXELS)
        assert len(calls) == 2  # the round trip's own encode, once
    finally:
        handle.remove()
    with torch.inference_mode():
        direct = run_encode(vae.module, PIXELS)
    assert rt.latent.shape == z.shape == direct.shape


def test_encoded_latent_unwraps_every_output_convention():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    moments = torch.randn(1, 8, 2, 2, generator=torch.Generator().manual_seed(3))
    dist = DiagonalGaussianDistribution(moments)
    mean = moments[:, :4]

    class Out:  # attribute-style outputs, as diffusers' BaseOutput subclasses are
        def __init__(self, **kw):
            self.__dict__.update(kw)

    assert torch.equal(encoded_latent(Out(latent_dist=dist)), mean)  # AutoencoderKL
    assert torch.equal(encoded_latent((dist,)), mean)  # return_dict=False
    assert torch.equal(encoded_latent(Out(latent=mean)), mean)  # AutoencoderDC
    assert torch.equal(encoded_latent(Out(latents=mean)), mean)  # AutoencoderTiny
    assert torch.equal(encoded_latent(mean), mean)  # a bare tensor is the latent, not tensor.mode()
    gen = torch.Generator().manual_seed(4)
    drawn = encoded_latent(Out(latent_dist=dist), posterior="sample", generator=gen)
    assert drawn.shape == mean.shape and not torch.equal(drawn, mean)
    assert torch.equal(decoded_pixels(Out(sample=mean)), mean) and torch.equal(decoded_pixels((mean,)), mean)


def test_quiet_diffusers_restores_the_callers_verbosity():
    from diffusers.utils import logging as dlogging

    before = dlogging.get_verbosity()
    dlogging.set_verbosity_info()
    try:
        with quiet_diffusers():
            assert dlogging.get_verbosity() == dlogging.ERROR
            build_module(tiny_kl())
        assert dlogging.get_verbosity() == dlogging.INFO
    finally:
        dlogging.set_verbosity(before)


def test_build_does_not_import_the_registry():
    import ast
    import pathlib

    import vaelens.build

    tree = ast.parse(pathlib.Path(vaelens.build.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m and m.startswith("vaelens.families")}


def test_keyword_call_is_traced_with_the_modules_own_paths():
    """trace_module(call=) traces a module called with keyword arguments (a pipeline component) without a
    wrapper module, so layer paths and pipeline peak_at are the component's own (no 'inner.' prefix)."""
    from vaelens.options import DType
    from vaelens.pipelines.estimate import trace_peak
    from vaelens.pipelines.inputs import CallPlan, TensorSpec
    from vaelens.trace import trace_module

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 64)
            self.out = torch.nn.Linear(64, 8)

        def forward(self, *, hidden_states, scale):
            return self.out(torch.nn.functional.gelu(self.proj(hidden_states))) * scale

    net = Net().to("meta")
    plan = CallPlan(tensors=(TensorSpec(name="hidden_states", shape=(2, 16, 8)),), constants=(("scale", 2.0),))
    tr = trace_module(net, plan.make_tensors(DType.FP32), call=lambda m, xs: m(**plan.kwargs(xs)))
    assert [r.path for r in tr.layers] == ["", "proj", "out"]
    assert tr.output_shape == (2, 16, 8)
    peak = trace_peak(net, plan, DType.FP32)
    assert peak.peak_at in {"proj", "out", "(Net)"} and peak.peak_bytes > 0
