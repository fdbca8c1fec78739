"""Describing the device and printing, summarising and saving the benchmark's results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # for annotations only: vitlab.bench.measure imports this module
    from vitlab.bench.measure import Settings

# ---------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------


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


def _number(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def format_table(results: list[dict]) -> str:
    """A plain-text table: row | baseline | vitlab | unit | ratio | target | met, then one note per row."""
    header = ("row", "baseline", "vitlab", "unit", "ratio", "target", "met")
    lines = []
    for r in results:
        if "error" in r:
            lines.append((r["row"], "error", "", "", "", r.get("target", ""), ""))
            continue
        if r.get("measured") is False:
            lines.append((r["row"], "not measured", "", "", "", r["target"], ""))
            continue
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        vitlab = _number(r["vitlab"])
        if r["row"] == "demo":
            vitlab += f" ({r['test_acc']:.1%})"
        lines.append((r["row"], _number(r["baseline"]), vitlab, r["unit"], ratio, r["target"], met))
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    out = [" | ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
           for line in [header, tuple("-" * w for w in widths), *lines]]
    notes = [f"  {r['row']}: {r['error'] if 'error' in r else r['notes']}" for r in results]
    return "\n".join(out + ["", "notes:", *notes])


def report(results: list[dict], settings: Settings, wall_seconds: float, device_info: dict, argv: list[str]) -> dict:
    """Everything the run measured, as one JSON-ready dict."""
    import torchvision

    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python -m vitlab.bench", *argv]),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": device_info,
        "load_average_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "settings": {k: str(v) if isinstance(v, torch.device) else v for k, v in asdict(settings).items()},
        "wall_seconds": wall_seconds,
        "rows": results,
    }


def write_json(path: str | os.PathLike, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
