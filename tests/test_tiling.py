"""Budgeted exact tiling (vaelens.tiling): tiled == untiled for every supported family, plans, budgets.

The modules are the real diffusers classes with reduced channel counts and the released block
structure (GroupNorm + mid-block attention for the KL families, causal 3-D convolutions with the
temporal cache and RMS norm for Wan / Qwen-Image, the bounded-receptive-field TAESD)."""

from __future__ import annotations

import json

import pytest
import torch

import vaelens.memory.estimate  # noqa: F401  (imports trace and memory in the order they need)
from vaelens.errors import BudgetError, VaeLensError
from vaelens.options import parse_bytes
from vaelens.tiling import decode, disable_budgeted_vae, enable_budgeted_vae, encode, plan_tiling

KL_BLOCKS = {"down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
             "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4}
WAN_LIKE = {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2], "num_res_blocks": 1, "temperal_downsample": [True]}


def _build(name: str):
    import diffusers

    torch.manual_seed(0)
    if name == "kl":  # sd15 / sd2 / sdxl structure (quant convs)
        m = diffusers.AutoencoderKL(**KL_BLOCKS, latent_channels=4)
    elif name == "kl-sd3":  # sd3 / flux1: no quant convs, 16 channels
        m = diffusers.AutoencoderKL(**KL_BLOCKS, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
    elif name == "flux2":
        m = diffusers.AutoencoderKLFlux2(**{**KL_BLOCKS, "down_block_types": ("DownEncoderBlock2D",) * 2,
                                            "up_block_types": ("UpDecoderBlock2D",) * 2}, latent_channels=8)
    elif name == "taesd":
        m = diffusers.AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                                      num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4)
    elif name == "wan21":
        m = diffusers.AutoencoderKLWan(**WAN_LIKE)
    elif name == "qwen-image":
        m = diffusers.AutoencoderKLQwenImage(**WAN_LIKE, latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    elif name == "sana":  # DC-AE: ReLU linear attention over the whole map (runs whole, exactly)
        m = diffusers.AutoencoderDC(
            latent_channels=4, attention_head_dim=4, encoder_block_types=("ResBlock", "EfficientViTBlock"),
            decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 16),
            decoder_block_out_channels=(8, 16), encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
            encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
            upsample_block_type="interpolate", downsample_block_type="Conv")
    elif name == "cogvideox":
        m = diffusers.AutoencoderKLCogVideoX(
            block_out_channels=(8, 16), down_block_types=("CogVideoXDownBlock3D",) * 2,
            up_block_types=("CogVideoXUpBlock3D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
            temporal_compression_ratio=2)
    elif name == "hunyuanvideo":
        m = diffusers.AutoencoderKLHunyuanVideo(
            block_out_channels=(8,) * 4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4, latent_channels=4, norm_num_groups=4, layers_per_block=1)
    elif name == "ltx-video":
        m = diffusers.AutoencoderKLLTXVideo(
            latent_channels=8, block_out_channels=(8,), decoder_block_out_channels=(8,), layers_per_block=(1, 1),
            decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,), decoder_spatio_temporal_scaling=(True,),
            decoder_inject_noise=(False, False), upsample_residual=(False,), upsample_factor=(1,),
            down_block_types=("LTXVideoDownBlock3D",), downsample_type=("conv",))
    elif name == "mochi":  # GroupNorm with 32 groups: 32 channels is the least it takes
        m = diffusers.AutoencoderKLMochi(encoder_block_out_channels=(32,) * 4, decoder_block_out_channels=(32,) * 4,
                                         latent_channels=4, layers_per_block=(1,) * 5, act_fn="silu")
    else:
        raise AssertionError(name)
    return m.eval()


# family -> (pixels shape, latent shape): odd latent sides, batch 2, video with 5 frames (2 latent frames)
CASES = {
    "kl": ((2, 3, 22, 26), (2, 4, 11, 13)),
    "kl-sd3": ((2, 3, 22, 26), (2, 16, 11, 13)),
    "flux2": ((2, 3, 22, 26), (2, 8, 11, 13)),
    "taesd": ((2, 3, 21, 27), (2, 4, 11, 13)),
    "wan21": ((2, 3, 5, 22, 26), (2, 4, 2, 11, 13)),
    "qwen-image": ((1, 3, 5, 18, 30), (1, 4, 2, 9, 15)),
    # the other classes: exact too (the executor runs what it does not know whole)
    "sana": ((1, 3, 22, 26), (1, 4, 11, 13)),
    "cogvideox": ((1, 3, 5, 22, 26), (1, 4, 3, 11, 13)),
    "hunyuanvideo": ((1, 3, 5, 40, 48), (1, 4, 2, 5, 6)),
    "ltx-video": ((1, 3, 9, 32, 48), (1, 8, 5, 4, 6)),
    "mochi": ((1, 3, 7, 32, 24), (1, 4, 2, 4, 3)),
}
MODULES: dict[str, torch.nn.Module] = {}


def module(name: str) -> torch.nn.Module:
    if name not in MODULES:
        MODULES[name] = _build(name)
    return MODULES[name]


def _one_tile_need(m, shape) -> int:
    """The least budget of a one-tile plan (whole maps op by op, spilling to the host): below it, tiles."""
    with pytest.raises(BudgetError) as err:
        plan_tiling(m, shape, budget=1, tile=10**4)
    return err.value.needed_bytes


def _untiled(m, op: str, x):
    from vaelens.trace import call_op
    from vaelens.trace.records import Op

    with torch.inference_mode():
        return call_op(m, Op.parse(op), [x])


BOTH_OPS = ("kl", "kl-sd3", "flux2", "taesd", "wan21", "qwen-image")  # the others: decode only (time)


@pytest.mark.parametrize(("name", "op"), [(n, op) for n in CASES for op in ("decode", "encode")
                                          if op == "decode" or n in BOTH_OPS])
def test_tiled_equals_untiled(name, op):
    m = module(name)
    pixels, latent = CASES[name]
    g = torch.Generator().manual_seed(1)
    x = torch.rand(pixels if op == "encode" else latent, generator=g) * 2 - 1
    tile = min(pixels[-2:]) // 2  # at least 2x2 tiles at full resolution, more on the lower-resolution maps
    plan = plan_tiling(m, tuple(x.shape), budget="80GiB", op=op, tile=tile)
    assert plan.method == "exact" and plan.tiles >= 4
    run = decode if op == "decode" else encode
    tiled = run(m, x, plan=plan)
    ref = _untiled(m, op, x)
    assert tiled.shape == ref.shape
    torch.testing.assert_close(tiled, ref, rtol=1e-4, atol=1e-5)
    assert not torch.equal(ref, torch.zeros_like(ref))


def test_a_budget_below_the_untiled_need_gives_several_tiles_and_the_same_pixels():
    m = module("kl")
    z = torch.randn(2, 4, 11, 13, generator=torch.Generator().manual_seed(3))
    full = plan_tiling(m, tuple(z.shape), budget="80GiB")
    assert full.method == "untiled" and full.to_json() is None
    # One tile = whole maps, one operation at a time, intermediates in host memory: it already
    # needs less than the untiled call; a budget below even that forces spatial tiles.
    one = plan_tiling(m, tuple(z.shape), budget="80GiB", tile=10**4)
    assert one.method == "exact" and one.tiles == 1 and one.predicted_peak_bytes < full.untiled_peak_bytes
    budget = _one_tile_need(m, tuple(z.shape)) - 1  # below what one tile can run in, even spilling
    plan = plan_tiling(m, tuple(z.shape), budget=budget)
    assert plan.method == "exact" and plan.tiles > 1
    assert plan.predicted_peak_bytes <= budget < plan.untiled_peak_bytes
    block = plan.to_json()
    assert {"tiles", "tile_shape", "halo", "predicted_peak_bytes", "budget_bytes", "host_bytes"} <= set(block)
    assert block["budget_bytes"] == budget and block["exact"] is True
    torch.testing.assert_close(decode(m, z, budget=budget), _untiled(m, "decode", z), rtol=1e-4, atol=1e-5)


def test_a_hopeless_budget_is_one_line_naming_the_smallest_budget_that_works():
    m = module("kl")
    shape = (1, 4, 16, 16)
    with pytest.raises(VaeLensError) as err:
        plan_tiling(m, shape, budget="1KiB")
    msg = str(err.value)
    assert "\n" not in msg and "1.00 KiB" in msg and "smallest budget that works is" in msg
    assert isinstance(err.value, BudgetError) and err.value.param == "budget" and err.value.value == 1024
    smallest = msg.rsplit("smallest budget that works is ", 1)[1]
    assert parse_bytes(smallest) >= err.value.needed_bytes
    plan = plan_tiling(m, shape, budget=err.value.needed_bytes)  # the budget it names does work
    assert plan.tiled and plan.predicted_peak_bytes <= err.value.needed_bytes
    with pytest.raises(BudgetError, match="smallest budget"):  # one byte less than the least need
        plan_tiling(m, shape, budget=err.value.needed_bytes - 1)


def test_enable_budgeted_vae_makes_the_modules_own_calls_exact_and_budgeted():
    m = _build("kl")
    z = torch.randn(1, 4, 12, 10, generator=torch.Generator().manual_seed(4))
    x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        ref_pixels, ref_latent = m.decode(z).sample, m.encode(x).latent_dist.mode()
    budget = _one_tile_need(m, tuple(z.shape)) - 1
    m.enable_tiling()  # a pipeline that had diffusers' tiling on: the budgeted path replaces it
    state = enable_budgeted_vae(m, budget=budget)
    with torch.no_grad():
        pixels = m.decode(z, return_dict=False)[0]  # how pipelines call it
        latent = m.encode(x).latent_dist.mode()
    torch.testing.assert_close(pixels, ref_pixels, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(latent, ref_latent, rtol=1e-4, atol=1e-5)
    assert [p.op for p in state.plans] == ["decode", "encode"] and state.plans[0].tiles > 1
    assert m.use_tiling  # the caller's flag is left as it was
    disable_budgeted_vae(m)
    assert "decode" not in m.__dict__ and "encode" not in m.__dict__


def test_a_class_without_exact_tiling_falls_back_to_its_own_labelled_approximate():
    from diffusers import AutoencoderKL

    from vaelens.families import get_family

    class ThirdPartyKL(AutoencoderKL):  # a class vaelens has not checked
        pass

    with torch.device("meta"):
        m = ThirdPartyKL.from_config(get_family("sdxl").diffusers_config())
    plan = plan_tiling(m, (1, 4, 256, 256), "bf16", "4GiB")
    assert plan.method == "approximate" and not plan.exact
    block = plan.to_json()
    assert block["exact"] is False and "enable_tiling" in block["approximate_reason"]
    assert plan.predicted_peak_bytes <= plan.budget_bytes < plan.untiled_peak_bytes


def test_memory_budget_prints_the_tiling_plan(cli, tmp_path):
    cfg = {"_class_name": "AutoencoderKL", **KL_BLOCKS, "latent_channels": 4}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    budget = f"{(_one_tile_need(cfg, (1, 4, 48, 64)) - 4096) // 1024}KiB"
    res = cli("memory", str(path), "--size", "128x96", "--op", "decode", "--budget", budget)
    assert res.code == 0, res.err
    assert "exact tiles" in res.out and "tiles of" in res.out
    data = cli("memory", str(path), "--size", "128x96", "--op", "decode", "--budget", budget, "--json").json()
    block = data["tiling"]["decode"]
    assert block["tiles"] > 1 and block["predicted_peak_bytes"] <= block["budget_bytes"] == parse_bytes(budget)


def test_roundtrip_budget_runs_in_tiles_with_the_same_score(cli, tmp_path):
    from vaelens.weights.demo import load_demo_vae

    demo = load_demo_vae(device="cpu").module
    budget = f"{(_one_tile_need(demo, (1, 4, 16, 24)) - 1024) // 1024}KiB"  # decode of 96x64
    base = ["roundtrip", "--size", "96x64", "--json", "--force"]
    plain = cli(*base, "-o", str(tmp_path / "a")).json()
    tiled = cli(*base, "-o", str(tmp_path / "b"), "--budget", budget).json()
    assert "tiling" not in plain
    assert tiled["tiling"]["tiles"] > 1 and tiled["tiling"]["exact"] is True
    assert tiled["tiling"]["predicted_peak_bytes"] <= tiled["tiling"]["budget_bytes"] == parse_bytes(budget)
    assert abs(tiled["psnr_db"][0] - plain["psnr_db"][0]) < 1e-3
    hopeless = cli(*base, "-o", str(tmp_path / "c"), "--budget", "1KiB")
    assert hopeless.code == 2 and hopeless.err.count("\n") == 1 and "smallest budget that works is" in hopeless.err


def test_groupnorm_statistics_are_the_whole_maps_not_an_average_of_tiles():
    """A map whose mean drifts across it (per-tile variances average far below the whole map's) and sits
    far from zero (sums of squares cancel): the tiled GroupNorm matches float64 as well as torch's own."""
    from vaelens.tiling.execute import run_tiled

    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(2, 4).eval()
    ramp = torch.linspace(0, 50, 41).view(1, 1, 1, 41)
    x = 1000 + ramp + torch.randn(2, 4, 37, 41)
    with torch.inference_mode():
        exact = norm.double()(x.double()).float()
        norm.float()
        plain = norm(x)
        tiled = run_tiled(norm, lambda: norm(x), fraction=(0.3, 0.25))
    err_plain = float((plain - exact).abs().max())
    err_tiled = float((tiled - exact).abs().max())
    assert err_tiled <= max(2 * err_plain, 1e-5), (err_tiled, err_plain)
    per_tile = x[..., :10].var() / x.var()  # what averaging tiles' variances would get wrong
    assert per_tile < 0.2


def test_issue20_edges_one_tile_is_singular():
    from vaelens.render.tiling import _tiles

    assert (_tiles(1), _tiles(9)) == ("1 tile", "9 tiles")


def test_issue20_10_plan_tiling_refuses_a_wrong_channel_count_with_a_vaelens_error():
    from vaelens.errors import VaeLensError
    from vaelens.tiling.plan import plan_tiling

    with pytest.raises(VaeLensError, match=r"shape \[1, 7, 32, 32\]") as info:
        plan_tiling("sd15", (1, 7, 32, 32), "fp32", "1GiB", device_profile="cpu")
    assert info.value.param == "shape"
    with pytest.raises(VaeLensError, match="positive sides"):
        plan_tiling("sd15", (1, 4, 0, 32), "fp32", "1GiB", device_profile="cpu")
