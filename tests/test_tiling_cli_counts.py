"""Counted bytes beside the plan's, through the CLI JSON and the Python API; --device-profile and --spill-dir.

A budgeted run reports `transfer_bytes` / `host_bytes` (the plan) and `measured_transfer_bytes` /
`measured_host_bytes` (what the executor copied, vaelens.tiling.execute.RunCounts). On CPU the executor
keeps "host" and "device" apart all the same (a spilled buffer's data lives in a separate host copy and
the device-side tensors point at a storage with no memory behind it; see tests/test_tiling_counted.py), so
every byte the schedule moves is a real, counted copy. The budgets sit at and just above the least budget
that works, where the schedule must spill (the test checks there is traffic to count).
"""

from __future__ import annotations

import pytest
import torch

import vaelens
import vaelens.memory.estimate  # noqa: F401  (imports trace and memory in the order they need)
from test_tiling import module
from test_tiling_counted import _least_budget
from vaelens.errors import OutputError, VaeLensError

PROFILE = "h100"  # the plans below are made, and the runs planned, on one named profile

# model -> (op, input shape): an image KL VAE (sd15/sdxl structure), a causal video VAE (Wan 2.1) and
# DC-AE (sana: linear attention run whole), each small enough that a budget near the least spills. The
# round trip below counts an encode too.
MODELS = {
    "kl": ("decode", (1, 4, 8, 10)),
    "wan21": ("decode", (1, 4, 2, 6, 8)),
    "sana": ("decode", (1, 4, 8, 10)),
}
# budget = the least that works x this. The chained executor keeps every map resident a few per cent above
# the least budget on these small models (nothing to count), so the counts are checked at the least.
BUDGETS = (1.0,)

_LEAST: dict[str, int] = {}


def _module(name: str):
    return module(name)


def _budget(name: str, factor: float) -> int:
    op, shape = MODELS[name]
    if name not in _LEAST:
        _LEAST[name] = _least_budget(_module(name), shape, op)
    return int(_LEAST[name] * factor)


def _input(name: str) -> torch.Tensor:
    op, shape = MODELS[name]
    return torch.rand(shape, generator=torch.Generator().manual_seed(3)) * 2 - 1


def _agree(block: dict) -> None:
    """A `tiling` JSON block: an exact plan that spills, and the run's counts equal to the plan's within 1%."""
    assert block["method"] == "exact" and block["predicted_peak_bytes"] <= block["budget_bytes"]
    assert block["transfer_bytes"] > 0  # the budget makes the schedule spill: there is traffic to count
    assert abs(block["measured_transfer_bytes"] - block["transfer_bytes"]) <= 0.01 * block["transfer_bytes"], block
    assert abs(block["measured_host_bytes"] - block["host_bytes"]) <= 0.01 * block["host_bytes"], block
    assert block["device_profile"] == PROFILE


@pytest.mark.parametrize("factor", BUDGETS)
@pytest.mark.parametrize("name", list(MODELS))
def test_python_api_counts_equal_the_plan(name, factor):
    op, _ = MODELS[name]
    m, x = _module(name), _input(name)
    verb = vaelens.decode if op == "decode" else vaelens.encode
    result = verb(m, x, normalized=False, budget=_budget(name, factor), device_profile=PROFILE)
    assert result.counts is not None and result.tiling.device_profile == PROFILE
    _agree(result.to_json()["tiling"])
    assert result.counts.transfer_bytes == result.counts.h2d_bytes + result.counts.d2h_bytes


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The test models saved as diffusers folders (what --vae takes), and their raw inputs as files."""
    from vaelens.latents import save_comfy_latent

    root = tmp_path_factory.mktemp("counts")
    for name in ("kl", "wan21", "sana"):
        _module(name).save_pretrained(root / name)
        save_comfy_latent(root / f"{name}.latent", _input(name))
    return root


@pytest.mark.parametrize("factor", BUDGETS)
@pytest.mark.parametrize("name", ["kl", "wan21", "sana"])
def test_cli_decode_json_counts_equal_the_plan(cli, weights, tmp_path, name, factor):
    res = cli("decode", str(weights / f"{name}.latent"), "--vae", str(weights / name), "-o",
              str(tmp_path / "out.png"), "--budget", f"{_budget(name, factor)}B", "--device-profile", PROFILE,
              "--json", "-q")
    assert res.code == 0, res.err
    _agree(res.json()["tiling"])


def test_cli_roundtrip_counts_both_calls(cli, tmp_path):
    """The demo VAE's round trip just above the least budget of its decode: the encode and the decode both
    spill, and each JSON block has its own counts."""
    from vaelens.weights.demo import load_demo_vae

    demo = load_demo_vae(device="cpu").module
    budget = f"{int(_least_budget(demo, (1, 4, 8, 12), 'decode') * 1.0)}B"
    res = cli("roundtrip", "--size", "48x32", "-o", str(tmp_path / "a"), "--budget", budget, "--device-profile",
              PROFILE, "--json", "-q")
    assert res.code == 0, res.err
    data = res.json()
    _agree(data["tiling"])
    _agree(data["tiling_encode"])
    assert data["tiling"]["transfer_bytes"] != data["tiling_encode"]["transfer_bytes"]


def test_cli_text_names_the_profile_and_the_counted_copies(cli, weights, tmp_path):
    res = cli("decode", str(weights / "kl.latent"), "--vae", str(weights / "kl"), "-o", str(tmp_path / "out.png"),
              "--budget", f"{_budget('kl', 1.0)}B", "--device-profile", "a100", "-q")
    assert res.code == 0, res.err
    line = next(s for s in res.out.splitlines() if s.strip().startswith("decode: exact tiles"))
    assert "s on the a100 profile" in line and "host<->device (plan" in line and "host peak" in line


def test_an_unknown_profile_is_refused_naming_the_choices(cli, tmp_path):
    from vaelens.tiling.profiles import profile_names

    for argv in (["decode", "x.latent", "--vae", "demo", "-o", str(tmp_path / "o.png")],
                 ["memory", "sdxl"], ["roundtrip"]):
        res = cli(*argv, "--budget", "1GiB", "--device-profile", "v100")
        assert res.code == 2 and res.err.count("\n") == 1, res.err
        assert "--device-profile" in res.err and "'v100'" in res.err
        assert all(name in res.err for name in profile_names())
    with pytest.raises(VaeLensError) as err:
        vaelens.decode(_module("kl"), _input("kl"), normalized=False, budget="1GiB", device_profile="v100")
    assert err.value.param == "device_profile" and set(err.value.choices) == set(profile_names())


def test_a_missing_spill_dir_is_refused_before_any_work(cli, tmp_path):
    missing = tmp_path / "no-such-folder"
    res = cli("roundtrip", "--size", "48x32", "-o", str(tmp_path / "a"), "--budget", "4MiB",
              "--spill-dir", str(missing))
    assert res.code == 2 and res.err.count("\n") == 1, res.err
    assert "argument --spill-dir" in res.err and "does not exist" in res.err and str(missing) in res.err
    assert not list(tmp_path.glob("a_*"))  # nothing written
    with pytest.raises(OutputError) as err:
        vaelens.decode(_module("kl"), _input("kl"), normalized=False, budget="1GiB", spill_dir=missing)
    assert err.value.param == "spill_dir"
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        vaelens.encode(_module("kl"), torch.zeros(1, 3, 16, 20), normalized=False, budget="1GiB", spill_dir=afile)


def test_a_profile_or_spill_dir_without_a_budget_is_refused(cli, tmp_path):
    res = cli("roundtrip", "--size", "48x32", "-o", str(tmp_path / "a"), "--device-profile", "a100")
    assert res.code == 2 and "argument --device-profile" in res.err and "budget" in res.err
    with pytest.raises(VaeLensError) as err:
        vaelens.decode(_module("kl"), _input("kl"), normalized=False, spill_dir=tmp_path)
    assert err.value.param == "spill_dir"


def test_spill_dir_holds_the_spilled_maps_while_the_run_lasts_and_none_after(weights, tmp_path, monkeypatch):
    """With spill_dir the host copies are memory-mapped files there (seen while the run is going), removed
    after; the pixels and the counts are those of a run in RAM."""
    from vaelens.tiling import residency

    m, x = _module("kl"), _input("kl")
    budget = _budget("kl", 1.0)
    plain = vaelens.decode(m, x, normalized=False, budget=budget, device_profile=PROFILE)
    seen: list[str] = []
    original = residency.Residency._host_empty

    def spy(self, n, *rest):
        out = original(self, n, *rest)
        seen.extend(p.name for p in tmp_path.iterdir())
        return out

    monkeypatch.setattr(residency.Residency, "_host_empty", spy)
    spilled = vaelens.decode(m, x, normalized=False, budget=budget, device_profile=PROFILE, spill_dir=tmp_path)
    assert seen and all(name.startswith("vaelens-spill-") for name in seen)
    assert list(tmp_path.iterdir()) == []
    assert spilled.counts == plain.counts
    torch.testing.assert_close(spilled.pixels, plain.pixels, rtol=0, atol=0)


def test_the_profile_changes_the_plans_time_not_its_exactness():
    """Two profiles, one input and budget: each plan names its profile and predicts its own time; both
    runs give the same pixels."""
    m, x = _module("kl"), _input("kl")
    budget = _budget("kl", 1.0)
    runs = {p: vaelens.decode(m, x, normalized=False, budget=budget, device_profile=p) for p in ("h100", "cpu")}
    assert {p: r.tiling.device_profile for p, r in runs.items()} == {"h100": "h100", "cpu": "cpu"}
    assert runs["h100"].tiling.predicted_seconds != runs["cpu"].tiling.predicted_seconds
    torch.testing.assert_close(runs["h100"].pixels, runs["cpu"].pixels, rtol=1e-4, atol=1e-5)


def test_the_tiling_layer_takes_the_same_arguments():
    """vaelens.tiling.decode(..., device_profile=, spill_dir=, counts=): the counts of the run its plan made;
    a profile without a budget is refused there too."""
    from vaelens.tiling import decode, plan_tiling

    m, x = _module("kl"), _input("kl")
    budget = _budget("kl", 1.0)
    plan = plan_tiling(m, tuple(x.shape), budget=budget, device_profile=PROFILE)
    counts: list = []
    with torch.inference_mode():
        decode(m, x, budget=budget, device_profile=PROFILE, counts=counts)
    assert plan.transfer_bytes > 0 and counts[0].transfer_bytes == plan.transfer_bytes
    assert counts[0].host_peak_bytes == plan.host_bytes
    with pytest.raises(VaeLensError) as err:
        decode(m, x, device_profile=PROFILE)
    assert err.value.param == "device_profile"


def test_a_runs_warnings_reach_the_result(monkeypatch):
    """What the executor says about a run (RunCounts.warnings, e.g. pinned memory unavailable) is in
    Decoded.warnings, not lost with the counts."""
    from vaelens.tiling import residency

    original = residency.Residency._host_empty

    def noisy(self, n, *rest):
        self.warnings.append("host copies use pageable memory (test)")
        return original(self, n, *rest)

    monkeypatch.setattr(residency.Residency, "_host_empty", noisy)
    result = vaelens.decode(_module("kl"), _input("kl"), normalized=False, budget=_budget("kl", 1.0),
                            device_profile=PROFILE)
    assert result.counts.warnings and result.warnings == ("host copies use pageable memory (test)",)


def test_a_runs_warnings_reach_the_round_trip(monkeypatch, tmp_path):
    from vaelens.run import roundtrip_files
    from vaelens.tiling import residency

    original = residency.Residency._host_empty

    def noisy(self, n, *rest):
        self.warnings.append("host copies use pageable memory (test)")
        return original(self, n, *rest)

    monkeypatch.setattr(residency.Residency, "_host_empty", noisy)
    from vaelens.weights.demo import load_demo_vae

    demo = load_demo_vae(device="cpu").module
    budget = int(_least_budget(demo, (1, 4, 8, 12), "decode") * 1.0)
    run = roundtrip_files("demo", tmp_path / "rt", vae="demo", size=(32, 48), budget=budget, device_profile=PROFILE)
    assert run.warnings.count("host copies use pageable memory (test)") == 1
