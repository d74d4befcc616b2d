"""Depth-first tile chains, dropped buffers and asynchronous copies (vaelens.tiling.chain, schedule, copies).

The run with asynchronous copies is checked on CPU with a stand-in for the CUDA streams that defers every
copy until something waits for it: a read of host memory before its copy has landed, or a write to memory
a pending copy still reads, would change the pixels."""

from __future__ import annotations

import pytest
import torch

import vaelens.memory.estimate  # noqa: F401  (imports trace and memory in the order they need)
from test_tiling import CASES, _untiled, module
from test_tiling_counted import _counted, _least_budget
from vaelens.memory.context import MetaContext
from vaelens.tiling import plan_tiling
from vaelens.tiling import residency as residency_module
from vaelens.tiling.copies import AsyncCopier
from vaelens.tiling.execute import Recorder, run_tiled, weight_ids
from vaelens.tiling.residency import Event, Residency
from vaelens.tiling.schedule import Policy, schedule


class _Event:
    def __init__(self, run) -> None:
        self.run = run
        self.done = False


class FakeStreams:
    """A side stream that runs nothing until waited for (FIFO, as a CUDA stream)."""

    def __init__(self) -> None:
        self.queue: list[_Event] = []
        self.copies = 0
        self.deferred_reads = 0  # copies still queued when the next one was issued

    def copy(self, dst, src):
        self.deferred_reads += len(self.queue)
        self.copies += 1
        e = _Event(lambda: dst.copy_(src))
        self.queue.append(e)
        return e

    def _until(self, event) -> None:
        while self.queue and not event.done:
            e = self.queue.pop(0)
            e.run()
            e.done = True

    wait = sync = _until

    def done(self, event) -> bool:
        return event.done

    def pinned(self, n: int) -> torch.Tensor:
        return torch.empty(n, dtype=torch.uint8)


def _events(name: str, op: str, shape, fraction):
    meta = MetaContext.of(module(name), "fp32").module
    res = Residency(device=torch.device("meta"), weights=weight_ids(meta), decisions=None)
    x = torch.empty(shape, device="meta")
    with torch.inference_mode():
        run_tiled(meta, lambda: getattr(meta, op)(x), fraction=fraction, recorder=Recorder(), residency=res,
                  inputs=[x])
    res.close()
    return res.events


def test_a_resnet_block_is_two_chains_and_groupnorm_statistics_need_no_pass_of_their_own():
    pixels, latent = CASES["kl"]
    names = [ev.name for ev in _events("kl", "decode", latent, (0.5, 0.5))]
    # GroupNorm apply, SiLU and the convolution run in one visit; the block's second chain ends in the residual add
    assert "chain:group_norm.apply+silu+conv2d" in names
    assert any(n.startswith("chain:group_norm.apply+silu+conv2d+add") for n in names)
    # statistics of a map a chain makes are that chain's epilogue: no separate pass over the decoder's maps
    # (the only pass left reads the attention block's input, which the mid block's reshape made)
    assert names.count("group_norm.stats") <= 1
    # nearest upsampling joins the convolution after it; the map stored is the smaller, pre-upsampling one
    assert "chain:interpolate+conv2d" in names
    # what is left unchained is the attention block's GroupNorm over a [B, C, tokens] sequence (one axis)
    assert [n for n in names if n.startswith("pointwise:")] == ["pointwise:group_norm.apply"]


@pytest.mark.parametrize(("name", "op"), [("kl", "decode"), ("wan21", "decode"), ("taesd", "decode"),
                                          ("kl", "encode")])
def test_asynchronous_copies_give_the_same_pixels_and_bytes(name, op, monkeypatch):
    streams = FakeStreams()
    monkeypatch.setattr(residency_module, "make_copier", lambda device, pin: AsyncCopier(streams, ring=2))
    m = module(name)
    pixels, latent = CASES[name]
    x = torch.rand(pixels if op == "encode" else latent, generator=torch.Generator().manual_seed(3)) * 2 - 1
    least = _least_budget(m, tuple(x.shape), op)
    plan = plan_tiling(m, tuple(x.shape), budget=least, op=op, device_profile="h100")
    assert plan.transfer_bytes > 0
    out, counts = _counted(m, plan, op, x)
    assert streams.copies > 0 and streams.deferred_reads > 0  # copies really were left in flight
    assert abs(counts.transfer_bytes - plan.transfer_bytes) <= 0.01 * plan.transfer_bytes
    torch.testing.assert_close(out, _untiled(m, op, x), rtol=1e-4, atol=1e-5)


def test_a_buffer_nothing_reads_again_is_dropped_without_a_copy():
    # buffer 0: born at event 0, read at 1, alive to the end (the caller's variable); buffer 1: born at 1
    events = [Event(kind="whole", name="a", new=[0], required={0}, uses={0: 0}),
              Event(kind="whole", name="b", new=[1], required={0, 1}, uses={0: 0, 1: 0}),
              Event(kind="whole", name="c", new=[2], required={1, 2}, uses={1: 0, 2: 0})]
    s = schedule(events, [100, 100, 100], [None, None, None], [0, 0, 0], 0, 250, Policy())
    assert s.feasible and s.transfer_bytes == 0  # 0 is dropped at event 2, not spilled
    assert 0 in s.decisions[2].drop


def test_lookahead_brings_a_block_input_back_once_instead_of_streaming_it_twice_per_block():
    from vaelens.options import DType
    from vaelens.tiling.plan import _Pricer, record_events

    ctx = MetaContext.of("sdxl", DType.BF16)
    meta, dt = ctx.module, ctx.dtype
    rec, res, _ = record_events(meta, "decode", (1, 4, 512, 512), dt, (0.25, 0.25), _Pricer())
    working = [rec.steps[ev.step].working if ev.step is not None else 0 for ev in res.events]
    weights = sum(p.numel() * p.element_size() for p in meta.parameters())
    args = (res.events, [b.nbytes for b in res.bufs], [b.death for b in res.bufs], working, weights, 8 * 2**30)
    plain, ahead = schedule(*args, Policy()), schedule(*args, Policy(lookahead=True))
    assert plain.feasible and ahead.feasible
    assert ahead.transfer_bytes < plain.transfer_bytes - 4 * 2**30  # at least one 4 GiB map not streamed twice
