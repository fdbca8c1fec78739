"""Which device a job runs on: one picker for the training job (`--device`) and the benchmark, and the words that
name it in a report (`device_name`, `describe_device`).

    pick_device("auto")                          # CUDA, then Apple's MPS, then the CPU
    pick_device("cuda:1")                        # exactly that GPU, or a VitlabError saying what to use instead
    pick_device("auto", kinds=("cuda", "cpu"))   # the benchmark: it measures CUDA and the CPU only
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from vitlab.errors import VitlabError

KINDS = ("cuda", "mps", "cpu")  # the device types vitlab trains on, in the order 'auto' prefers them


def available(kind: str) -> bool:
    """Whether PyTorch can use a device of this type here (the CPU always)."""
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    return kind == "cpu"


def pick_device(name: str = "auto", kinds: tuple[str, ...] = KINDS) -> torch.device:
    """The device `name` asks for: 'auto' takes the first available of `kinds`, any other name must be available.

    Args:
        name: "auto", or a torch device name of one of `kinds` ("cpu", "cuda", "cuda:1", "mps").
        kinds: the device types the caller supports, in the order 'auto' prefers them; end with "cpu" so that
            'auto' always finds one. The benchmark passes ("cuda", "cpu"): its timings and memory rows know those.

    Raises:
        VitlabError: `name` is not a device, not one of `kinds`, or not available on this machine.
    """
    if name == "auto":
        return torch.device(next(kind for kind in kinds if available(kind)))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VitlabError(f"--device {name} is not a device name. Use auto or one of: {', '.join(kinds)}.") from None
    if device.type not in kinds:
        raise VitlabError(f"--device {name} is not supported here. Use auto or one of: {', '.join(kinds)}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VitlabError(f"--device {name} asked for CUDA, but PyTorch sees no CUDA GPU here. Use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise VitlabError(f"--device {name}: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s) here, numbered from "
                          f"0. Use --device cuda:0, or --device cuda for the first.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise VitlabError(f"--device {name} asked for Apple's MPS, which is not available here. Use --device cpu.")
    return device


def device_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3 (CUDA)' or 'Intel(R) Xeon(R) ... (CPU, 2 cores, 2 torch threads)'."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.processor())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu} (CPU, {cores} cores, {torch.get_num_threads()} torch threads)"


def describe_device(device: torch.device) -> dict:
    """The machine the numbers come from, for the JSON and the table's header."""
    return {"name": device_name(device), "type": device.type,
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
