"""Which device a job runs on: one picker for the training job (`--device`) and the benchmark, and the words that
name it in a report (`device_name`, `describe_device`).

    pick_device("auto")                          # CUDA, then Apple's MPS, then the CPU
    pick_device("cuda:1")                        # exactly that GPU, or a VitlabError saying what to use instead
    pick_device("auto", kinds=("cuda", "cpu"))   # the benchmark: it measures CUDA and the CPU only

A CPU is named with its family and model numbers and its bfloat16 instructions, not only its marketing name: two
virtual machines that both call themselves "AMD EPYC" can be a Zen 4 (family 25) and a Zen 5 (family 26), and
ViT-B/16's bfloat16 forward pass takes more than twice as long on the first.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from vitlab.errors import VitlabError

KINDS = ("cuda", "mps", "cpu")  # the device types vitlab trains on, in the order 'auto' prefers them
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that multiply bfloat16 matrices (/proc/cpuinfo names)


@dataclass(frozen=True)
class CpuInfo:
    """What tells one CPU's speed from another's that shares its name."""

    name: str  # the model name, e.g. "AMD EPYC" or "Intel(R) Xeon(R) Platinum 8480+"
    family: int | None  # x86 "cpu family" (AMD: 25 is Zen 3 and Zen 4, 26 is Zen 5); None where not reported
    model: int | None  # x86 "model" within the family; None where not reported
    bfloat16: tuple[str, ...]  # the entries of BFLOAT16_FLAGS it has, in that order

    def describe(self) -> str:
        """'family 25 model 17, avx512_bf16', or '' when the CPU reports neither."""
        which = "" if self.family is None else f"family {self.family}"
        if which and self.model is not None:
            which += f" model {self.model}"
        return ", ".join(part for part in (which, *self.bfloat16) if part)


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's entry of a Linux /proc/cpuinfo; the name is platform.processor() if it has none."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's value of each field
    flags = fields.get("flags", "").split()
    return CpuInfo(name=fields.get("model name") or platform.processor() or "unknown CPU",
                   family=_integer(fields.get("cpu family")), model=_integer(fields.get("model")),
                   bfloat16=tuple(flag for flag in BFLOAT16_FLAGS if flag in flags))


def cpu_info() -> CpuInfo:
    """This machine's `CpuInfo`, from /proc/cpuinfo where there is one (Linux)."""
    path = Path("/proc/cpuinfo")
    return parse_cpuinfo(path.read_text() if path.is_file() else "")


def _integer(text: str | None) -> int | None:
    """'25' -> 25; None or anything not a decimal number -> None."""
    return int(text) if text is not None and text.isdecimal() else None


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
    """'NVIDIA H100 80GB HBM3 (CUDA)' or 'AMD EPYC (CPU, family 25 model 17, avx512_bf16, 2 cores, 2 torch threads)'."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    cpu = cpu_info()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    details = ", ".join(part for part in ("CPU", cpu.describe(), f"{cores} cores") if part)
    return f"{cpu.name} ({details}, {torch.get_num_threads()} torch threads)"


def describe_device(device: torch.device) -> dict:
    """The machine the numbers come from, for the JSON and the table's header."""
    return {"name": device_name(device), "type": device.type,
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
