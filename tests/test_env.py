"""`vaelens env` and vaelens.envinfo: versions, driver, devices — the block validate prints too."""

from __future__ import annotations

import sys

import pytest
import torch

from vaelens.envinfo import DeviceInfo, Environment, cudnn_version, driver_version, environment
from vaelens.render.env import render_environment


@pytest.mark.parametrize("raw,text", [(91900, "9.19.0"), (90100, "9.1.0"), (8902, "8.9.2"), (8700, "8.7.0"),
                                      (None, None), (0, None)])
def test_cudnn_versions_read_as_torch_encodes_them(raw, text):
    assert cudnn_version(raw) == text


def test_driver_version_from_the_kernel_module_file(tmp_path):
    f = tmp_path / "version"
    f.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build\n"
                 "GCC version:  gcc version 12.2.0\n")
    assert driver_version(f) == "570.86.15"
    f.write_text("something else\n")
    assert driver_version(f) is None
    assert driver_version(tmp_path / "missing") is None


def test_environment_is_this_process():
    env = environment()
    assert env.torch == torch.__version__ and env.python == sys.version.split()[0]
    assert env.cuda == torch.version.cuda and env.cuda_available == torch.cuda.is_available()
    assert len(env.devices) == (torch.cuda.device_count() if env.cuda_available else 0)
    assert env.diffusers and env.cpu_threads == torch.get_num_threads()


def test_the_block_names_every_device_with_its_memory():
    env = Environment(vaelens="0.1.0", python="3.11.7", platform="Linux", torch="2.13.0+cu130", diffusers="0.42.1",
                      cuda="13.0", cudnn="9.19.0", driver="580.65.06", cuda_available=True,
                      devices=(DeviceInfo(index=0, name="NVIDIA H100 80GB HBM3", total_bytes=85520809984,
                                          capability="9.0", multiprocessors=132),), cpu_threads=16)
    text = render_environment(env)
    assert "cudnn:" in text and "9.19.0" in text and "580.65.06" in text
    assert "cuda:0:" in text and "NVIDIA H100 80GB HBM3, 79.65 GiB, compute 9.0, 132 SMs" in text
    assert env.to_json()["devices"][0]["total_bytes"] == 85520809984 and env.device(1) is None


def test_cli_env_text_and_json(cli):
    r = cli("env")
    assert r.code == 0 and "torch:" in r.out and torch.__version__ in r.out
    r = cli("env", "--json")
    data = r.json()
    assert r.code == 0 and data["torch"] == torch.__version__
    assert set(data) >= {"python", "torch", "cuda", "cudnn", "diffusers", "driver", "devices", "cuda_available"}
