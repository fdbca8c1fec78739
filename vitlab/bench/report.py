"""Printing, summarising and saving the benchmark's results."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torchvision

from vitlab.atomic import atomic_write
from vitlab.bench.measure import Settings

# ---------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------


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
    """Write the report as indented JSON, atomically (vitlab.atomic): never a half-written report."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    return atomic_write(path, lambda file: file.write(text.encode()))
