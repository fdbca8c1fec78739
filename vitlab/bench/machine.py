"""Which machine the benchmark's numbers come from: its name, CPU, cores, GPU and load."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3 (CUDA)' or 'Intel(R) Xeon(R) ... (CPU, 2 cores, 2 torch threads)'."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"{cpu_model()} (CPU, {usable_cores()} cores, {torch.get_num_threads()} torch threads)"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def describe_device(device: torch.device) -> dict:
    """The machine the numbers come from, for the JSON and the table's header."""
    info = {"name": device_name(device), "type": device.type, "cpu": cpu_model(), "cores": usable_cores(),
            "torch_threads": torch.get_num_threads()}
    with contextlib.suppress(OSError):
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        info["cpu_bf16"] = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = os.getloadavg()[0]
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    capability=f"{properties.major}.{properties.minor}", bf16=torch.cuda.is_bf16_supported())
    return info
