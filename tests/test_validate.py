"""`vaelens validate` on CPU: the orchestration, the bisection (in real subprocesses, with a fake OOM), the
tolerance checks and the output, against a fake measurement backend; `--dry-run`; the no-CUDA refusal."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import torch

from vaelens.errors import VaeLensError
from vaelens.memory.context import MetaContext
from vaelens.memory.estimate import estimate_memory
from vaelens.memory.measure import (
    Measured,
    Probe,
    context_bytes,
    min_device_cap,
    probe_in_subprocess,
    probe_job,
    runs_twice,
)
from vaelens.options import DType
from vaelens.validate import TOLERANCES, Section, plan_cases, validate
from vaelens.validate.backend import PrecisionMeasurement, ThroughputMeasurement, TiledMeasurement
from vaelens.validate.tolerances import Rule, judge

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
_CONTEXTS: dict = {}  # one meta module per family and dtype, shared by the fake backend's calls


@dataclass
class FakeBackend:
    """Measures nothing: returns the prediction scaled by the factors a test sets (1.0: exactly right)."""

    peak: float = 1.0
    reserved: float = 1.0
    need: float = 1.0  # the true device minimum ÷ the predicted one
    tiled: float = 1.0  # the measured tiled peak ÷ the plan's
    psnr_db: float = 80.0
    speedup: float = 1.5
    overflow: dict = field(default_factory=dict)  # dtype -> the real first overflow layer
    real_psnr: float = 40.0
    free: int = 80 << 30
    raise_in: str = ""
    device: str = "cuda"
    calls: list = field(default_factory=list)
    _need_bytes: int = 0

    def _maybe_raise(self, what: str) -> None:
        self.calls.append(what)
        if what == self.raise_in:
            raise RuntimeError(f"{what} broke\nsecond line")

    def free_bytes(self) -> int:
        return self.free

    def measure_peak(self, case, input_shape) -> Measured:
        self._maybe_raise("peak")
        key = (case.spec.name, case.request.dtype)
        if key not in _CONTEXTS:
            _CONTEXTS[key] = MetaContext.of(case.spec, case.request.dtype)
        est = estimate_memory(_CONTEXTS[key], case.request, op=case.op)
        assert tuple(input_shape) == tuple(est.input_shape)
        self._need_bytes = int(est.min_device_bytes * self.need)
        return Measured(peak_bytes=int(est.peak_bytes * self.peak),
                        reserved_peak_bytes=int(est.reserved_peak_bytes * self.reserved), base_bytes=est.base_bytes,
                        seconds_median=0.01, output_shape=tuple(est.output_shape))

    def probe(self, job) -> Probe:
        self._maybe_raise("probe")
        assert job["device"] == self.device
        return Probe(ok=job["cap_bytes"] >= self._need_bytes)

    def context_bytes(self) -> int:
        return 400 * MIB

    def measure_tiled(self, case, plan) -> TiledMeasurement:
        self._maybe_raise("tiled")
        return TiledMeasurement(peak_bytes=int(plan.predicted_peak_bytes * self.tiled), seconds=1.0,
                                untiled_seconds=0.5, diffusers_tiling_seconds=0.8, psnr_db=self.psnr_db)

    def measure_throughput(self, case) -> ThroughputMeasurement:
        self._maybe_raise("throughput")
        return ThroughputMeasurement(images=case.images, cache_images_per_s=10.0 * self.speedup,
                                     naive_images_per_s=10.0)

    def measure_precision(self, case) -> PrecisionMeasurement:
        self._maybe_raise("precision")
        return PrecisionMeasurement(first_overflow=self.overflow.get(case.request.dtype.value),
                                    psnr_db=self.real_psnr)


def _fake_precision(vae, images):
    assert len(images) == 1 and Path(images[0]).exists()
    return {"fp16": {"first_overflow": None, "psnr_db": 40.4}, "bf16": {"first_overflow": None, "psnr_db": 39.5}}


@pytest.fixture
def emulation(monkeypatch):
    """vaelens.precision as the precision helper's result reads (it may not exist in this tree)."""
    monkeypatch.setattr("vaelens.validate.emulation.precision_function", lambda: _fake_precision)


QUICK_SDXL = dict(models=["sdxl"], quick=True)


# ---- tolerances ---------------------------------------------------------------------------------------------


def test_judge_each_rule_passes_and_fails_where_it_should():
    assert judge("peak_bytes", 100, 110, low=90, high=112).passed  # outside 2% but inside the range
    assert not judge("peak_bytes", 100, 110, low=95, high=105).passed
    assert judge("peak_bytes", 100, 101.5).passed  # no range: 2%
    assert judge("reserved_peak_bytes", 119, 100).passed and not judge("reserved_peak_bytes", 121, 100).passed
    assert judge("tiled_peak_bytes", 100, 100).passed and not judge("tiled_peak_bytes", 100, 101).passed
    assert judge("tiled_psnr_db", None, 60.0, unit="dB").passed
    assert not judge("tiled_psnr_db", None, 59.9, unit="dB").passed
    assert judge("tiled_psnr_db", None, float("inf"), unit="dB").passed
    assert not judge("tiled_psnr_db", None, float("nan"), unit="dB").passed
    assert judge("first_overflow", "decoder.conv_out", "decoder.conv_out", unit="layer").passed
    assert not judge("first_overflow", None, "decoder.conv_out", unit="layer").passed
    c = judge("precision_psnr_db", 40.4, 39.5, unit="dB")
    assert c.passed and c.error == pytest.approx(0.9)
    assert not judge("precision_psnr_db", 40.0, 38.9, unit="dB").passed
    assert judge("precision_psnr_db", float("inf"), float("inf"), unit="dB").error == 0.0
    assert judge("tiled_seconds", 1.0, 2.0, unit="seconds").passed is None  # info: shown, never judged
    assert judge("peak_bytes", 100, None).passed is None  # not measured
    assert judge("min_device_bytes", 105, 100).error == pytest.approx(0.05)


def test_the_docs_state_every_tolerance_of_the_table():
    text = (ROOT / "docs" / "validate.md").read_text(encoding="utf-8")
    for t in TOLERANCES:
        assert f"| `{t.quantity}` | {t.text} | {t.why} |" in text, t.quantity
    assert all(t.rule is Rule.INFO or t.limit is not None or t.rule in (Rule.AT_MOST, Rule.EQUAL) for t in TOLERANCES)


# ---- cases --------------------------------------------------------------------------------------------------


def test_default_cases_cover_three_sizes_two_dtypes_both_ops_for_three_families():
    from vaelens.contract import resolve_model, shapes

    specs = [resolve_model(m) for m in ("sdxl", "flux1", "wan21")]
    cases = plan_cases(specs)
    peaks = [c for c in cases if c.section is Section.PEAK]
    assert len(peaks) == 3 * 3 * 2 * 2
    for spec in specs:
        mine = [c for c in peaks if c.spec is spec]
        assert len({(c.request.height, c.request.width, c.request.frames) for c in mine}) == 3
        assert {c.request.dtype for c in mine} == {DType.BF16, DType.FP32}
        for c in mine:
            assert shapes(spec, c.request).used_size == (c.request.height, c.request.width), c.label  # no floor
    assert [c.spec.name for c in cases if c.section is Section.DEVICE_MIN] == ["sdxl", "wan21"]
    assert [c.section for c in cases][-4:] == [Section.TILING, Section.THROUGHPUT, Section.PRECISION,
                                                Section.PRECISION]
    quick = plan_cases(specs, quick=True)
    assert sum(c.section is Section.PEAK for c in quick) == 3 * 2 * 2
    assert sum(c.section is Section.DEVICE_MIN for c in quick) == 1
    wide = next(c for c in peaks if c.request.width != c.request.height and not c.spec.is_video)
    assert f"{wide.request.width}x{wide.request.height}" in wide.label  # sizes print WxH, as on the command line


# ---- orchestration against the fake backend ----------------------------------------------------------------


def test_a_run_that_matches_its_predictions_passes_every_row(emulation):
    fake = FakeBackend()
    rep = validate(**QUICK_SDXL, backend=fake)
    assert rep.passed and rep.exit_code == 0 and not rep.dry_run
    by = {s: [r for r in rep.rows if r.section is s] for s in Section}
    assert len(by[Section.PEAK]) == 4 and all(r.passed for r in by[Section.PEAK])
    assert all(r.passed for r in rep.rows), [(r.label, r.failure, r.skipped) for r in rep.rows if not r.passed]
    peak = by[Section.PEAK][1]
    est = estimate_memory("sdxl", peak_request(peak), op=peak.op)
    assert peak.measured["peak_above_base"] == est.peak_bytes and peak.predicted["peak_bytes"] == est.peak_bytes
    dmin = by[Section.DEVICE_MIN][0]
    # the bisection found the fake's true need to one step, in about log2(range / step) probes
    assert dmin.measured["min_device_bytes"] - dmin.measured["bisection_step_bytes"] < fake._need_bytes
    assert dmin.measured["min_device_bytes"] >= fake._need_bytes
    assert 3 <= dmin.measured["probes"] <= 9 and dmin.measured["cuda_context_bytes"] == 400 * MIB
    tiling = by[Section.TILING][0]
    assert tiling.predicted["budget_bytes"] == 2 * 2**30 and tiling.predicted["method"] in ("exact", "untiled")
    assert {c.quantity for c in tiling.checks} >= {"tiled_peak_bytes", "tiled_psnr_db", "diffusers_tiling_seconds"}
    assert by[Section.THROUGHPUT][0].checks[0].measured == pytest.approx(1.5)
    assert [r.measured["psnr_db"] for r in by[Section.PRECISION]] == [40.0, 40.0]
    overflow = [c for r in by[Section.PRECISION] for c in r.checks if c.quantity == "first_overflow"]
    assert [(c.predicted, c.measured, c.passed) for c in overflow] == [("(none)", "(none)", True)] * 2


def peak_request(row):
    from vaelens.options import PixelRequest

    return PixelRequest(width=row.shape[-1], height=row.shape[-2], dtype=DType.parse(row.dtype))


@pytest.mark.parametrize("fake,section,quantity", [
    (FakeBackend(peak=1.3), Section.PEAK, "peak_bytes"),
    (FakeBackend(reserved=1.5), Section.PEAK, "reserved_peak_bytes"),
    (FakeBackend(need=1.25), Section.DEVICE_MIN, "min_device_bytes"),
    (FakeBackend(tiled=2.0), Section.TILING, "tiled_peak_bytes"),
    (FakeBackend(psnr_db=35.0), Section.TILING, "tiled_psnr_db"),
    (FakeBackend(speedup=0.5), Section.THROUGHPUT, "cache_speedup"),
    (FakeBackend(overflow={"fp16": "decoder.up_blocks.0.resnets.0.conv2"}), Section.PRECISION, "first_overflow"),
    (FakeBackend(real_psnr=30.0), Section.PRECISION, "precision_psnr_db"),
])
def test_a_missed_tolerance_fails_its_row_and_the_run(emulation, fake, section, quantity):
    rep = validate(**QUICK_SDXL, backend=fake, sections=[section])
    assert not rep.passed and rep.exit_code == 1
    missed = {c.quantity for r in rep.failed for c in r.checks if c.passed is False}
    assert missed == {quantity}
    assert all(r.section is section for r in rep.rows)


def test_a_measurement_that_raises_is_a_failed_row_and_the_run_goes_on(emulation):
    rep = validate(**QUICK_SDXL, backend=FakeBackend(raise_in="tiled"), sections=["tiling", "throughput"])
    tiling, throughput = rep.rows
    assert tiling.passed is False and tiling.failure == "RuntimeError: tiled broke"
    assert throughput.passed is True and rep.exit_code == 1


def test_a_case_that_does_not_fit_the_device_is_skipped_not_failed(emulation):
    fake = FakeBackend(free=700 * MIB)
    rep = validate(**QUICK_SDXL, backend=fake, sections=["peak"])
    skipped = [r for r in rep.rows if r.skipped]
    ran = [r for r in rep.rows if not r.skipped]
    assert skipped and ran and rep.exit_code == 0
    assert all("the device has 700.00 MiB free" in r.skipped for r in skipped)
    assert all(r.predicted["min_device_bytes"] > 700 * MIB for r in skipped)
    assert fake.calls.count("peak") == len(ran)


def test_precision_rows_are_skipped_with_a_reason_without_vaelens_precision(monkeypatch):
    monkeypatch.setattr("vaelens.validate.emulation.precision_function", lambda: None)
    rep = validate(**QUICK_SDXL, backend=FakeBackend(), sections=["precision"])
    assert [r.skipped for r in rep.rows] == ["vaelens.precision does not exist in this version of vaelens"] * 2
    assert rep.exit_code == 0


def test_the_emulation_reader_takes_numbers_or_per_op_figures():
    from vaelens.validate.emulation import read_result

    class Result:
        def to_json(self):
            return {"fp16": {"first_overflow": "decoder.mid_block", "psnr_db": {"encode": 50.0, "decode": 31.0}},
                    "bf16": {"first_overflow": None, "psnr_db": 38}}

    assert read_result(Result()) == {"fp16": ("decoder.mid_block", 31.0), "bf16": (None, 38.0)}

    @dataclass
    class NonFinite:
        layer: str

    @dataclass
    class DTypeResult:
        first: object
        psnr_db: float | None

    @dataclass
    class Report:  # vaelens.precision's PrecisionReport, as the precision helper shapes it
        fp16: object
        bf16: object

    got = read_result(Report(fp16=DTypeResult(NonFinite("decoder.up_blocks.0"), None), bf16=DTypeResult(None, 41.5)))
    assert got == {"fp16": ("decoder.up_blocks.0", None), "bf16": (None, 41.5)}


def test_plan_figures_reads_whatever_the_plan_has():
    from dataclasses import dataclass as dc

    from vaelens.validate.run import plan_figures

    @dc(frozen=True)
    class FuturePlan:
        method: str
        tile_shape: tuple
        predicted_seconds: float | None
        whole_ops: frozenset

    got = plan_figures(FuturePlan(method="exact", tile_shape=(1366, 1366), predicted_seconds=0.4,
                                  whole_ops=frozenset()))
    assert got == {"method": "exact", "tile_shape": [1366, 1366], "predicted_seconds": 0.4}


# ---- the device minimum: bisection in fresh processes --------------------------------------------------------

FAKE_PROBE = """
import json, os, sys
job = json.loads(sys.stdin.readline())
if job["cap_bytes"] == {crash}:
    print("RuntimeError: CUDA error: an illegal memory access", file=sys.stderr)
    sys.exit(3)
with open({log!r}, "a") as f:
    f.write(str(job["cap_bytes"]) + "\\n")
holder = {log!r} + ".held"
used = 1000 + (700 if os.path.exists(holder) else 0)  # one more context while the holder lives
print("torch noise on stdout")
print(json.dumps({{"ok": job["cap_bytes"] is None or job["cap_bytes"] >= {need}, "used_bytes": used}}), flush=True)
if job.get("hold"):
    open(holder, "w").close()
    sys.stdin.read()
    os.remove(holder)
"""


def _fake_probe(tmp_path, need, crash=-1):
    script = tmp_path / "fake_probe.py"
    log = tmp_path / "caps.txt"
    script.write_text(FAKE_PROBE.format(need=need, log=str(log), crash=crash))
    return partial(probe_in_subprocess, argv=[sys.executable, str(script)], timeout=60), log


def test_device_minimum_bisection_in_subprocesses_with_a_fake_oom(tmp_path):
    need = 300 * MIB + 12345
    probe, log = _fake_probe(tmp_path, need)
    cap = min_device_cap({"_class_name": "AutoencoderKL"}, (1, 4, 8, 8), "bf16", op="decode", lo=100 * MIB,
                         hi=1000 * MIB, step=8 * MIB, probe=probe)
    assert cap == 304 * MIB  # the first multiple of the step at or above the need
    caps = [int(x) for x in log.read_text().split()]
    assert caps[0] == 1000 * MIB and len(caps) == 1 + 7  # hi first, then log2(900 / 8) tries, one process each
    assert all(c % (8 * MIB) == 0 for c in caps)
    assert probe(probe_job({}, (1,), "fp32", op="encode", cap_bytes=None)) == Probe(ok=True, used_bytes=1000)


def test_context_bytes_is_the_difference_while_a_first_probe_holds_its_context(tmp_path):
    probe, log = _fake_probe(tmp_path, need=0)
    argv = probe.keywords["argv"]
    assert context_bytes("cuda:0", argv=argv, timeout=60) == 700
    assert not Path(str(log) + ".held").exists()  # the holder was told to go, and went
    probe, _ = _fake_probe(tmp_path, need=0, crash="None")
    with pytest.raises(VaeLensError, match=r"probe process failed \(exit 3\): RuntimeError: CUDA error"):
        context_bytes("cuda:0", argv=probe.keywords["argv"], timeout=60)


def test_a_probe_that_crashes_or_a_cap_that_never_runs_is_an_error(tmp_path):
    probe, _ = _fake_probe(tmp_path, need=0, crash=512 * MIB)
    with pytest.raises(VaeLensError, match=r"probe process failed \(exit 3\): RuntimeError: CUDA error"):
        min_device_cap({}, (1,), "fp32", op="decode", lo=0, hi=1024 * MIB, step=512 * MIB, probe=probe)
    probe, _ = _fake_probe(tmp_path, need=2000 * MIB)
    with pytest.raises(VaeLensError, match="does not run even under a cap"):
        min_device_cap({}, (1,), "fp32", op="decode", lo=0, hi=1024 * MIB, probe=probe)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the probe process's answer without CUDA")
def test_the_real_probe_process_fails_cleanly_without_cuda():
    with pytest.raises(VaeLensError, match=r"probe process failed \(exit 3\)"):
        probe_in_subprocess(probe_job({}, (1, 3, 8, 8), "fp32", op="encode", cap_bytes=MIB), timeout=120)


def test_runs_twice_counts_only_an_out_of_memory_error_as_a_no():
    calls = []

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert runs_twice(lambda: lambda: calls.append(1)) and calls == [1, 1]
    assert not runs_twice(lambda: oom)
    assert not runs_twice(oom)  # out of memory while loading the weights
    with pytest.raises(ZeroDivisionError):
        runs_twice(lambda: lambda: 1 / 0)


# ---- output --------------------------------------------------------------------------------------------------


def test_table_json_and_jsonl_rows_in_the_measurement_file_format(emulation):
    from vaelens.render.validate import render_validation, validation_json, validation_jsonl

    rep = validate(**QUICK_SDXL, backend=FakeBackend(peak=1.3))
    text = render_validation(rep)
    assert text.startswith("vaelens validate on cuda: FAIL") and "missed a tolerance: sdxl encode 512x512 bf16" in text
    assert "torch:" in text and "Peaks:" in text and "Device minimum:" in text and "+30.00%" not in text
    assert "-23.08%" in text  # predicted / measured - 1 with the measurement 1.3x the prediction
    data = validation_json(rep)
    assert data["pass"] is False and data["counts"]["failed"] == 4 and len(data["rows"]) == len(rep.rows)
    lines = validation_jsonl(rep).splitlines()
    assert len(lines) == len(rep.rows)
    measured_keys = set(json.loads((ROOT.parent / "shared" / "measurements" / "h100.jsonl").open().readline())
                        if (ROOT.parent / "shared" / "measurements" / "h100.jsonl").exists() else
                        ["family", "op", "shape", "dtype", "input_shape", "output_shape", "weights_bytes",
                         "input_bytes", "output_bytes", "peak_above_base", "seconds_median", "torch", "diffusers",
                         "gpu", "base_allocated", "reserved_peak"])
    first = json.loads(lines[0])
    assert measured_keys <= set(first), measured_keys - set(first)
    assert first["family"] == "sdxl" and first["shape"] == [1, 3, 512, 512] and first["pass"] is False
    assert first["section"] == "peak" and first["predicted"]["peak_bytes"] < first["peak_above_base"]
    assert {c["quantity"] for c in first["checks"]} == {"peak_bytes", "reserved_peak_bytes"}


# ---- the command ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_cuda(monkeypatch, emulation):
    """The CLI as on a CUDA machine, measuring through a FakeBackend (`fake_cuda.backend`)."""
    holder = type("Holder", (), {"backend": FakeBackend()})()
    monkeypatch.setattr("vaelens.memory.measure.cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("vaelens.validate.cuda.CudaBackend", lambda device: holder.backend)
    return holder


def test_cli_writes_the_jsonl_table_and_configs_and_exits_by_the_verdict(cli, fake_cuda, tmp_path):
    out = tmp_path / "v"
    r = cli("validate", "sdxl", "--quick", "--only", "peak", "-o", str(out))
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == ["sdxl.json", "validate.jsonl", "validate.txt"]
    assert json.loads((out / "sdxl.json").read_text())["_class_name"] == "AutoencoderKL"
    assert len((out / "validate.jsonl").read_text().splitlines()) == 4
    assert "all judged rows pass" in r.out and f"wrote {out / 'validate.jsonl'}" in r.out
    r = cli("validate", "sdxl", "--quick", "--only", "peak", "-o", str(out))
    assert r.code == 2 and "already exists" in r.err and len(r.err.strip().splitlines()) == 1
    fake_cuda.backend = FakeBackend(peak=1.3)
    r = cli("validate", "sdxl", "--quick", "--only", "peak", "--json", "-o", str(out), "--force")
    assert r.code == 1
    data = r.json()
    assert data["pass"] is False and data["written"][0].endswith("validate.jsonl")


def test_cli_refuses_a_device_that_is_not_there(cli, fake_cuda):
    r = cli("validate", "--device", "cuda:3")
    assert r.code == 2 and "cuda:3" in r.err and "1 CUDA device" in r.err
    r = cli("validate", "--device", "cpu")
    assert r.code == 2 and "not a CUDA device" in r.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without CUDA")
def test_cli_without_cuda_says_so_in_one_line_and_exits_2(cli, tmp_path):
    r = cli("validate", "-o", str(tmp_path / "out"))
    assert r.code == 2 and r.out == ""
    assert len(r.err.strip().splitlines()) == 1 and "needs a CUDA GPU" in r.err and "dry run" in r.err
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_cli_dry_run_lists_cases_and_predictions_anywhere(cli):
    r = cli("validate", "sdxl", "--dry-run", "--quick", "--only", "peak", "--only", "tiling", "--json")
    assert r.code == 0, r.err
    data = r.json()
    assert data["dry_run"] is True and [row["section"] for row in data["rows"]] == ["peak"] * 4 + ["tiling"]
    first = data["rows"][0]
    est = estimate_memory("sdxl", peak_request(type("R", (), {"shape": first["shape"], "dtype": first["dtype"]})),
                          op=first["op"])
    assert first["predicted"]["peak_bytes"] == est.peak_bytes and first["measured"]["weights_bytes"] > 0
    assert all(c["pass"] is None and c["measured"] is None for row in data["rows"] for c in row["checks"])
    assert data["rows"][-1]["predicted"]["budget_bytes"] == 2 * 2**30
    r = cli("validate", "sdxl", "--dry-run", "--quick", "--only", "throughput")
    assert r.code == 0 and "1 case would run" in r.out and "16 generated 512x512 JPEGs" in r.out
    assert "measured" not in r.out.split("Throughput")[1]  # no measured/error/result columns in a dry run


# ---- the CUDA backend's code paths, on the CPU with CUDA's counters stubbed --------------------------------


@pytest.fixture
def cpu_backend(monkeypatch):
    """CudaBackend running its modules on the CPU: torch.cuda's counters return fixed numbers (so the figures
    are not measurements; what is tested is that every path runs and wires its results through)."""
    from vaelens.validate import cuda

    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats", "set_device", "init"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    counters = {"memory_allocated": 1000, "max_memory_allocated": 5000, "max_memory_reserved": 8000,
                "memory_reserved": 0}
    for name, value in counters.items():
        monkeypatch.setattr(torch.cuda, name, lambda *a, _v=value, **k: _v)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (10 << 30, 16 << 30))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("vaelens.memory.measure.cuda_available", lambda: True)
    monkeypatch.setattr(cuda, "THROUGHPUT_WORKERS", 0)
    backend = cuda.CudaBackend("cuda")
    backend.torch_device = "cpu"
    monkeypatch.setattr("vaelens.memory.measure.require_cuda", lambda *a, **k: None)  # measure_call on "cpu"
    return backend


def _tiny_spec(tmp_path):
    from tiny_models import TINY_KL
    from vaelens.contract import resolve_model

    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_KL))
    return resolve_model(str(path))


def test_cuda_backend_peak_and_tiled_paths_run(cpu_backend, tmp_path):
    from vaelens.options import PixelRequest
    from vaelens.tiling.plan import plan_tiling
    from vaelens.trace import Op
    from vaelens.validate.cases import Case

    spec = _tiny_spec(tmp_path)
    case = Case(section=Section.PEAK, spec=spec, op=Op.DECODE, request=PixelRequest(width=32, height=32))
    m = cpu_backend.measure_peak(case, (1, 4, 16, 16))
    assert (m.peak_bytes, m.reserved_peak_bytes, m.base_bytes) == (4000, 8000, 1000)
    assert m.output_shape == (1, 3, 32, 32) and m.seconds_median > 0
    assert cpu_backend.free_bytes() == (10 << 30) - 1000  # free on the device + cached, unused blocks
    plan = plan_tiling(spec, (1, 4, 48, 40), "fp32", "1GiB", op="decode", tile=32)
    assert plan.method == "exact" and plan.tiles > 1
    tcase = Case(section=Section.TILING, spec=spec, op=Op.DECODE, request=PixelRequest(width=80, height=96),
                 budget_bytes=plan.budget_bytes)
    t = cpu_backend.measure_tiled(tcase, plan)
    assert t.peak_bytes == 5000 and t.seconds > 0 and t.untiled_seconds > 0 and t.diffusers_tiling_seconds > 0
    assert t.psnr_db >= 60  # exact tiles in fp32


def test_cuda_backend_throughput_and_precision_paths_run(cpu_backend, tmp_path):
    from vaelens.options import PixelRequest
    from vaelens.trace import Op
    from vaelens.validate.cases import Case

    spec = _tiny_spec(tmp_path)
    case = Case(section=Section.THROUGHPUT, spec=spec, op=Op.ENCODE, images=8,
                request=PixelRequest(width=48, height=32, dtype=DType.BF16))
    t = cpu_backend.measure_throughput(case)
    assert t.images == 8 and t.cache_images_per_s > 0 and t.naive_images_per_s > 0
    p = cpu_backend.measure_precision(Case(section=Section.PRECISION, spec=None, op=Op.FORWARD,
                                           request=PixelRequest(width=296, height=200, dtype=DType.BF16)))
    assert p.first_overflow is None and 20 < p.psnr_db < 60  # bf16 rounding, every output finite
