"""vaelens.trace: per-layer records equal a real CPU run; lifetimes follow Python's frees; hooks cleaned up."""

from __future__ import annotations

import pytest
import torch

from vaelens.memory.allocator import round_block
from vaelens.trace import Op, trace_module

TINY_KL = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 32,
}


def tiny_vae(device: str = "cpu"):
    from vaelens.build import build_module

    torch.manual_seed(0)
    return build_module(TINY_KL, device=device)


def real_layer_shapes(module, x, op: str) -> list[tuple[str, tuple[int, ...]]]:
    """Independent record: forward hooks on a real CPU run, first tensor of each output."""
    names = {id(m): n for n, m in module.named_modules()}
    seen: list[tuple[str, tuple[int, ...]]] = []

    def hook(mod, _args, out):
        t = out if isinstance(out, torch.Tensor) else next(o for o in out if isinstance(o, torch.Tensor))
        seen.append((names[id(mod)], tuple(t.shape)))

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        with torch.inference_mode():
            getattr(module, op)(x)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("op,shape", [("encode", (2, 3, 32, 48)), ("decode", (2, 4, 8, 12))])
def test_meta_trace_shapes_equal_real_cpu_run(op, shape):
    real = tiny_vae("cpu")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    expected = real_layer_shapes(real, x, op)
    tr = trace_module(tiny_vae("meta"), [torch.empty(shape, device="meta")], op=op)
    # records are in call-start order; hooks above fire in call-end order: compare as path -> shapes
    got = sorted((r.path, r.output_shape) for r in tr.layers if r.depth > 0)
    assert got == sorted(expected)
    assert len(got) > 20


def test_trace_on_real_cpu_module_matches_meta():
    x = torch.randn(1, 3, 32, 32)
    cpu = trace_module(tiny_vae("cpu"), [x], op="encode")
    meta = trace_module(tiny_vae("meta"), [x], op="encode")  # inputs follow the module to meta
    assert [(r.path, r.output_shape, r.live_bytes) for r in cpu.layers] == \
        [(r.path, r.output_shape, r.live_bytes) for r in meta.layers]
    assert [e.name for e in cpu.events] == [e.name for e in meta.events]
    # the encode output is latent_dist.mode(): [B, C, H/2, W/2] (the last down block keeps the size)
    assert cpu.output_shape == (1, 4, 16, 16)


def test_any_module_hand_counted_live_bytes():
    """conv(3->8) -> SiLU -> conv(8->8) at 16x16 fp32: every tensor is 8*16*16*4 = 8192 bytes."""
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 8, 3, padding=1))
    tr = trace_module(m, torch.randn(1, 3, 16, 16), op="forward")
    by_path = {r.path: r for r in tr.layers}
    assert by_path["0"].live_bytes == 8192  # conv output
    assert by_path["1"].live_bytes == 16384  # silu output while the conv output is still referenced
    # after the second conv the first conv's output has died (Sequential rebinds its variable)
    assert by_path["2"].live_bytes == 16384
    assert by_path[""].live_bytes == 8192  # only the result remains
    assert tr.input_bytes == 3 * 16 * 16 * 4
    assert tr.weights_bytes == (8 * 3 * 9 + 8 + 8 * 8 * 9 + 8) * 4
    allocs = [n for e in tr.events for _, n in e.allocs]
    assert allocs == [8192, 8192, 8192]


def test_views_share_storage_and_inplace_allocates_nothing():
    class M(torch.nn.Module):
        def forward(self, x):
            y = x * 2  # new storage
            z = y.view(-1)  # view: same storage
            z.add_(1)  # in place: nothing new
            return y.transpose(0, 1).contiguous()  # one more storage

    tr = trace_module(M(), torch.randn(4, 6), op="forward")
    allocs = [n for e in tr.events for _, n in e.allocs]
    assert allocs == [96, 96]  # the storages' own bytes: the tracer does not round
    from vaelens.memory.estimate import simulate

    # the allocator model rounds each to its 512-byte block when it replays the trace
    assert simulate(tr, device=False).peak_bytes == 2 * round_block(96)


def test_hooks_removed_and_mode_restored():
    m = tiny_vae("meta").train()
    trace_module(m, torch.empty(1, 3, 32, 32, device="meta"), op="encode")
    assert m.training
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    assert not any(hasattr(mod, "_vaelens_call") for mod in m.modules())


def test_round_block_matches_caching_allocator():
    assert [round_block(n) for n in (0, 1, 512, 513, 4096)] == [0, 512, 512, 1024, 4096]


def test_bad_op_names_choices():
    from vaelens.errors import VaeLensError

    with pytest.raises(VaeLensError, match="encode, decode, forward"):
        Op.parse("sample")


def test_cli_trace_json_and_table(cli, tmp_path):
    import json

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY_KL))
    r = cli("trace", str(cfg), "--size", "48x32", "--op", "decode", "--json")
    assert r.code == 0, r.err
    data = r.json()
    assert data["latent_shape"] == [1, 4, 16, 24]
    assert data["output_shape"] == [1, 3, 32, 48]
    stages = {layer["stage"] for layer in data["layers"]}
    assert {"mid block", "up blocks", "latent in"} <= stages
    r = cli("trace", str(cfg), "--size", "48x32", "--op", "encode", "--depth", "2")
    assert r.code == 0, r.err
    assert "── down blocks" in r.out and "encoder.down_blocks.0" in r.out
    shallow = cli("trace", str(cfg), "--size", "48x32", "--op", "encode", "--depth", "1").out
    assert "quant_conv" in shallow and "encoder.down_blocks.0" not in shallow
    assert cli("trace", str(cfg), "--size", "48x32", "--depth", "0").code == 2


def test_live_bytes_equal_independent_gc_count():
    """After each block of a real CPU encode, the activation bytes alive (every tensor the garbage
    collector can reach, distinct storages, weights and input excluded) equal the trace's count."""
    import gc
    import warnings

    m = tiny_vae("cpu")
    x = torch.randn(1, 3, 32, 32)
    resident = {t.untyped_storage().data_ptr() for t in [*m.parameters(), *m.buffers(), x]}

    def live() -> int:
        seen = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for obj in gc.get_objects():
                if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                    s = obj.untyped_storage()
                    if s.data_ptr() not in resident and s.nbytes():
                        seen[s.data_ptr()] = s.nbytes()
        return sum(round_block(n) for n in seen.values())

    watched = {m.encoder.conv_in, *m.encoder.down_blocks, m.encoder.mid_block, m.encoder.conv_out, m.quant_conv}
    names = {id(mod): n for n, mod in m.named_modules()}
    base = live()
    counts: dict[str, int] = {}
    handles = [mod.register_forward_hook(lambda mod, a, o: counts.__setitem__(names[id(mod)], live() - base))
               for mod in watched]
    try:
        with torch.inference_mode():
            m.encode(x)
    finally:
        for h in handles:
            h.remove()
    tr = trace_module(m, [x], op="encode")
    traced = {r.path: r.live_bytes for r in tr.layers if r.path in counts}
    assert len(counts) == len(watched) == len(traced) == 6
    assert traced == counts
