"""The families / shapes / explain commands: JSON contract, golden text, one-line errors."""

from __future__ import annotations

import pytest

BAD_INPUT = [
    (["shapes", "sdx"], "unknown family 'sdx'; did you mean"),
    (["shapes", "sdxl", "--size", "1024x"], "size '1024x' is not WIDTHxHEIGHT"),
    (["shapes", "sdxl", "--size", "0x512"], "width 0 must be a positive number"),
    (["shapes", "sdxl", "--size", "-8x8"], "width -8 must be a positive number"),
    (["shapes", "sdxl", "--size", "abc"], "size 'abc' is not WIDTHxHEIGHT"),
    (["shapes", "sdxl", "--size", "1024x1020"],
     "height 1020 is not a multiple of 8 for sdxl; nearest valid: 1016 or 1024"),
    (["shapes", "sdxl", "--size", "99999x512"], "width 99999 is above vaelens' limit of 16384"),
    (["shapes", "wan21", "--size", "832x480", "--frames", "0"], "frames 0 must be between 1 and"),
    (["shapes", "sdxl", "--frames", "9"], "sdxl is an image VAE"),
    (["shapes", "sdxl", "--dtype", "fp8"], "dtype 'fp8' is not supported; choose one of: fp32, fp16, bf16"),
    (["shapes", "sdxl", "--batch", "0"], "batch 0 must be between 1 and"),
    (["shapes", "sdxl", "--width", "512"], "give both"),
    (["shapes", "/nonexistent/config.json"], "does not exist"),
    # digits that str.isdigit() accepts but int() does not, and a doubled minus sign
    (["shapes", "sdxl", "--size", "\u00b2x512"], "is not WIDTHxHEIGHT"),
    (["shapes", "sdxl", "--size=--8x8"], "size '--8x8' is not WIDTHxHEIGHT"),
    (["memory", "sdxl", "--budget", "1e400GB"], "budget '1e400GB'"),
    (["memory", "sdxl", "--budget", "-5GiB"], "budget '-5GiB' is not a size"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUT)
def test_bad_input_is_one_line_exit_2(cli, argv, message):
    res = cli(*argv)
    assert res.code == 2
    assert res.out == ""
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert message in lines[0]
    assert "Traceback" not in res.err


@pytest.mark.parametrize(("config", "message"), [
    ("{}", "has no _class_name"),
    ('{"_class_name": "AutoencoderFoo"}', "'AutoencoderFoo' is not a class in diffusers"),
    ("not json", "is not valid JSON"),
    ('{"_class_name": "UNet2DConditionModel"}', "'UNet2DConditionModel' is not a VAE class"),
])
@pytest.mark.parametrize("command", ["shapes", "explain", "memory"])
def test_bad_config_is_one_line_exit_2(cli, tmp_path, command, config, message):
    path = tmp_path / "config.json"
    path.write_text(config)
    res = cli(command, str(path))
    assert res.code == 2 and res.out == ""
    assert len(res.err.strip().splitlines()) == 1 and message in res.err


def test_config_path_works_like_a_family(cli):
    import json

    cfg = {"_class_name": "AutoencoderKL", "latent_channels": 4, "block_out_channels": [8, 16, 16],
           "norm_num_groups": 4, "down_block_types": ["DownEncoderBlock2D"] * 3,
           "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 1, "scaling_factor": 0.25}
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vae" / "config.json"
        path.parent.mkdir()
        path.write_text(json.dumps(cfg))
        data = cli("shapes", tmp, "--size", "64x32", "--json").json()
        assert data["latent_shape"] == [1, 4, 8, 16]
        assert data["normalization"]["formula"] == "z × 0.25"
        text = " ".join(cli("explain", tmp, "--size", "64x32").out.split())
        assert "No pipeline is known for this config" in text


def test_unknown_option_is_one_line(cli):
    res = cli("shapes", "sdxl", "--sise", "1x1")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1


def test_shapes_json_contract(cli):
    res = cli("shapes", "sdxl", "--size", "1024x1024", "--json")
    assert res.code == 0
    data = res.json()
    for key in ("family", "pixel_shape", "used_size", "latent_shape", "decoded_shape", "tokens",
                "normalization", "bytes", "compression"):
        assert key in data
    assert data["latent_shape"] == [1, 4, 128, 128]
    assert data["normalized_latent_shape"] == [1, 4, 128, 128]
    assert data["tokens"] is None
    assert data["normalization"]["scale"] == 0.13025


def test_shapes_flux_tokens_and_wan_video(cli):
    flux = cli("shapes", "flux1", "--size", "1024x1024", "--json").json()
    assert flux["tokens"]["count"] == 4096 and flux["tokens"]["dim"] == 64
    wan = cli("shapes", "wan21", "--size", "832x480", "--frames", "81", "--json").json()
    assert wan["latent_shape"] == [1, 16, 21, 60, 104]
    assert wan["used_size"] == [480, 832]


def test_flux2_normalised_latent_is_patchified(cli):
    import torch

    from vaelens.families import get_family
    from vaelens.normalization import normalize

    data = cli("shapes", "flux2", "--size", "1024x768", "--json").json()
    assert data["latent_shape"] == [1, 32, 96, 128]
    # the shape normalize() really returns, given BatchNorm statistics for 128 packed channels
    bn = torch.nn.BatchNorm2d(128).eval()
    module = torch.nn.Module()
    module.bn = bn
    out = normalize(torch.randn(*data["latent_shape"]), get_family("flux2").normalization, module=module)
    assert data["normalized_latent_shape"] == list(out.shape) == [1, 128, 48, 64]


def test_floor_warning_on_stderr(cli):
    res = cli("shapes", "flux1", "--size", "1000x1000", "--json")
    assert res.code == 0
    assert "1000 → 992" in res.err
    assert res.json()["used_size"] == [992, 992]


def test_frames_off_rule_warn_with_frames_used(cli):
    wan = cli("shapes", "wan21", "--size", "832x480", "--frames", "80", "--json")
    assert wan.code == 0 and "frames 80 → 77" in wan.err
    assert wan.json()["pixel_shape"][2] == 77
    cog = cli("shapes", "cogvideox-5b", "--size", "720x480", "--frames", "50", "--json")
    assert cog.code == 0 and "decode to 49 frames" in cog.err
    assert cog.json()["decoded_shape"][2] == 49


def test_families_table_golden(cli, golden):
    res = cli("families")
    assert res.code == 0
    golden("families.out", res.out)


def test_families_json_lists_all(cli):
    from vaelens.families import family_names

    data = cli("families", "--json").json()
    assert [d["name"] for d in data] == family_names()


def test_shapes_table_golden(cli, golden):
    golden("shapes_sdxl_1024.out", cli("shapes", "sdxl", "--size", "1024x1024").out)
    golden("shapes_wan21_832x480x81_bf16.out",
           cli("shapes", "wan21", "--size", "832x480", "--frames", "81", "--dtype", "bf16").out)


def test_explain_says_what_matters(cli):
    res = cli("explain", "sdxl", "--size", "1024x1024")
    assert res.code == 0
    text = res.out
    assert "Latent channels are not colours" in text
    assert "[1, 4, 128, 128]" in text and "0.13025" in text
    assert "memory spikes" in text
    # compares with two other families' constants
    assert "sd15" in text and "flux1" in text


def test_explain_video(cli):
    res = cli("explain", "wan21", "--size", "832x480", "--frames", "81")
    assert res.code == 0
    assert "[1, 16, 21, 60, 104]" in res.out and "4k+1" in res.out


def test_family_name_wins_over_a_folder_of_that_name(cli, tmp_path, monkeypatch):
    # A user in ~/models with a folder sdxl/ still means the registry family by `sdxl`;
    # the folder is reached as ./sdxl.
    (tmp_path / "sdxl").mkdir()
    monkeypatch.chdir(tmp_path)
    res = cli("shapes", "sdxl", "--size", "1024x1024", "--json")
    assert res.code == 0, res.err
    assert res.json()["family"] == "sdxl"
    res = cli("shapes", "./sdxl")
    assert res.code == 2 and "holds neither config.json nor vae/config.json" in res.err
    res = cli("shapes", "")
    assert res.code == 2 and "unknown family ''" in res.err


def test_explain_writes_the_token_shape_without_thousands_separators(cli):
    # "[1, 4,096, 64]" reads as a 4-D shape; shapes are written as the shapes table writes them
    res = cli("explain", "flux1", "--size", "1024x1024")
    assert res.code == 0
    assert "6. tokens [1, 4096, 64]" in res.out


def test_config_without_scaling_factor_takes_the_class_default(cli, tmp_path):
    # SD 1.5's released vae/config.json leaves scaling_factor unset; diffusers fills in the class
    # default (AutoencoderKL: 0.18215), which is what the pipeline divides by before decode.
    import json

    from vaelens.families import get_family

    spec = get_family("sd15")
    assert "scaling_factor" not in spec.config
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_class_name": spec.diffusers_class, **spec.config}))
    data = cli("shapes", str(path), "--size", "64x64", "--json").json()
    assert data["normalization"]["formula"] == "z × 0.18215"


def test_config_with_zero_latent_channels_is_one_line(cli, tmp_path):
    # diffusers builds it; the probe then reads a latent [1, 0, h, w], which has no compression ratio
    path = tmp_path / "config.json"
    path.write_text('{"_class_name": "AutoencoderKL", "latent_channels": 0, "block_out_channels": [8], '
                    '"norm_num_groups": 4}')
    res = cli("shapes", str(path))
    assert res.code == 2 and res.out == ""
    assert len(res.err.strip().splitlines()) == 1 and "latent_channels is 0" in res.err


def test_budget_names_the_size_used_after_flooring(cli, tmp_path):
    # a config path floors to its spatial factor (4 here): 66x34 runs as 64x32, and the budget's
    # "largest batch at WxH" must name the size its estimates used
    import json

    cfg = {"_class_name": "AutoencoderKL", "latent_channels": 4, "block_out_channels": [8, 16, 16],
           "norm_num_groups": 4, "down_block_types": ["DownEncoderBlock2D"] * 3,
           "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 1}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    res = cli("memory", str(path), "--size", "66x34", "--op", "decode", "--budget", "1GiB")
    assert res.code == 0, res.err
    line = next(x for x in res.out.splitlines() if x.strip().startswith("decode:"))
    assert " at 64x32;" in line and "66x34" not in line


@pytest.mark.parametrize("command", ["memory", "trace"])
def test_memory_and_trace_json_carry_size_used(cli, command):
    data = cli(command, "flux1", "--size", "1000x504", "--dtype", "bf16", "--json").json()
    assert data["used_size"] == [496, 992]
    assert any("1000 → 992" in w for w in data["warnings"])


def test_budget_says_when_the_search_limit_is_reached(cli):
    from vaelens.options import MAX_BATCH

    res = cli("memory", "taesd", "--size", "64x64", "--op", "decode", "--budget", "80GiB")
    assert res.code == 0
    assert f"largest batch {MAX_BATCH} (vaelens searches no further than {MAX_BATCH})" in res.out
