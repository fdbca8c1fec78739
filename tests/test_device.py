"""How a CPU is named in reports: family, model and bfloat16 instructions tell apart machines that share a name."""

from __future__ import annotations

import pytest
import torch

from vitlab import device as vitlab_device
from vitlab.device import CpuInfo, device_name, parse_cpuinfo

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu vme avx2 avx512f avx512_bf16 avx512_vnni

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: Another CPU
flags\t\t: fpu amx_bf16
"""

SAPPHIRE_RAPIDS = """processor\t: 0
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx512f amx_bf16 amx_tile avx512_bf16
"""

ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd bf16
CPU implementer\t: 0x41
"""


def test_the_first_processor_gives_name_family_model_and_bfloat16_instructions() -> None:
    assert parse_cpuinfo(ZEN4) == CpuInfo("AMD EPYC", 25, 17, ("avx512_bf16",))
    assert parse_cpuinfo(SAPPHIRE_RAPIDS) == CpuInfo("Intel(R) Xeon(R) Platinum 8480+", 6, 143,
                                                     ("avx512_bf16", "amx_bf16"))


def test_a_cpu_without_x86_fields_falls_back_to_the_platform_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vitlab_device.platform, "processor", lambda: "aarch64")
    info = parse_cpuinfo(ARM)
    assert info == CpuInfo("aarch64", None, None, ())
    assert info.describe() == ""
    assert parse_cpuinfo("").name == "aarch64"


def test_device_name_tells_two_epycs_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vitlab_device, "cpu_info", lambda: parse_cpuinfo(ZEN4))
    monkeypatch.setattr(vitlab_device.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert device_name(torch.device("cpu")) == "AMD EPYC (CPU, family 25 model 17, avx512_bf16, 2 cores, 2 torch " \
                                               "threads)"
    monkeypatch.setattr(vitlab_device, "cpu_info", lambda: CpuInfo("aarch64", None, None, ()))
    assert device_name(torch.device("cpu")) == "aarch64 (CPU, 2 cores, 2 torch threads)"
