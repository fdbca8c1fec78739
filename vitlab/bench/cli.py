"""`python -m vitlab.bench`: the command line that runs the rows and prints the table."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from vitlab.bench.cached import bench_cached_trunk_shapes, bench_cached_trunk_step, bench_epoch_cached
from vitlab.bench.compiled import bench_compile
from vitlab.bench.epoch import bench_epoch
from vitlab.bench.explorer import bench_explorer
from vitlab.bench.flags import COUNT_TYPES, RULES, check_flags
from vitlab.bench.machine import describe_device
from vitlab.bench.measure import OPTIONAL_ROWS, ROWS, Settings
from vitlab.bench.memory import bench_peak_memory
from vitlab.bench.overhead import bench_capture_overhead
from vitlab.bench.report import format_table, report, write_json
from vitlab.bench.resolution import bench_laptop_estimate, bench_resolution_step
from vitlab.bench.rows import (
    bench_data_pipeline,
    bench_demo,
    bench_eval_throughput,
    bench_train_step,
)
from vitlab.bench.transfer import bench_transfer
from vitlab.cli import Parser, command
from vitlab.device import pick_device

# The device types the rows know how to time, synchronise and measure memory on, in the order 'auto' prefers them.
BENCH_DEVICES = ("cuda", "cpu")

# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


BENCHES: dict[str, Callable[[Settings], dict]] = {
    "data_pipeline": bench_data_pipeline,
    "capture_overhead": bench_capture_overhead,
    "train_step": bench_train_step,
    "eval_throughput": bench_eval_throughput,
    "peak_memory": bench_peak_memory,
    "demo": bench_demo,
    "epoch": bench_epoch,
    # Optional rows, run only when named in --rows:
    "train_step_cpu_bf16": lambda settings: bench_train_step(settings, cpu_bf16=True),
    "cached_trunk_step": bench_cached_trunk_step,
    "cached_trunk_shapes": bench_cached_trunk_shapes,
    "epoch_cached": bench_epoch_cached,
    "transfer": bench_transfer,
    "train_step_224": lambda settings: bench_resolution_step(settings, 224),
    "train_step_160": lambda settings: bench_resolution_step(settings, 160),
    "train_step_112": lambda settings: bench_resolution_step(settings, 112),
    "laptop_estimate": bench_laptop_estimate,
    "compile": bench_compile,
    "explorer": bench_explorer,
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(  # its errors are one-line VitlabErrors: main prints them and exits 2
        rules=RULES,
        examples={"arch": "--arch vit_tiny"},
        prog="python -m vitlab.bench",
        description="Measure vitlab against the notebook's way (PIL per image, fp32, Adam), interleaved in one "
        "process, and print a table of medians, ratios and targets.",
        epilog="Rows: " + ", ".join(ROWS) + ". Targets are reported, never enforced: the exit code is 0 unless a "
        "row failed to run. Optional rows (only with --rows): " + ", ".join(OPTIONAL_ROWS) + ".",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="small repeat counts: about 3 minutes on a 2-core CPU")
    parser.add_argument("--json", metavar="PATH", help="also write every measurement, the device and versions here")
    parser.add_argument("--repeats", type=COUNT_TYPES["repeats"], metavar="N",
                        help="timed repeats per side (default: per row)")
    parser.add_argument("--batch-size", type=COUNT_TYPES["batch_size"], metavar="N",
                        help="one batch size for every row (default: per row)")
    parser.add_argument("--rows", metavar="A,B,...", help=f"only these rows (default: all of {', '.join(ROWS)})")
    parser.add_argument("--arch", default="vit_b_16", choices=("vit_b_16", "vit_tiny"),
                        help="the model of the timing rows (default: vit_b_16, the notebook's)")
    parser.add_argument("--epoch", action="store_true", help="run the full-epoch row (a GPU target)")
    parser.add_argument("--force-epoch", action="store_true", help="run the epoch row without CUDA too")
    parser.add_argument("--epoch-images", type=COUNT_TYPES["epoch_images"], metavar="N",
                        help="train+val images of the epoch row (default: 50000, CIFAR-100's training set)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile in the epoch row (default: on CUDA only)")
    return parser


@command("vitlab.bench")
def main(argv: list[str] | None = None) -> int:
    """Run the chosen rows, print the table, write the JSON. Returns 0, 1 when a row failed to run, 2 bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # every flag is checked here, before any row runs or any file is written
    args = build_parser().parse_args(argv)
    rows = check_flags(args, tuple(BENCHES), ROWS)
    device = pick_device(args.device, kinds=BENCH_DEVICES)
    settings = Settings(device=device, quick=args.quick, repeats=args.repeats,
                        batch_size=args.batch_size, arch=args.arch,
                        run_epoch=args.epoch or (args.rows is not None and "epoch" in rows),
                        force_epoch=args.force_epoch, epoch_images=args.epoch_images, compile=args.compile)
    device_info = describe_device(settings.device)
    print(f"vitlab.bench on {device_info['name']}, torch {torch.__version__}, load average "
          f"{device_info.get('load_average_1min', float('nan')):.1f}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    results = []
    for row in rows:
        print(f"  {row} ...", file=sys.stderr, end="", flush=True)
        row_start = time.perf_counter()
        try:
            result = BENCHES[row](settings)
        except Exception as error:  # one broken row must not hide the others' numbers
            result = {"row": row, "error": f"{type(error).__name__}: {error}", "device": device_info["name"]}
        result["seconds"] = time.perf_counter() - row_start
        results.append(result)
        print(f" {result['seconds']:.0f} s", file=sys.stderr, flush=True)
    data = report(results, settings, time.perf_counter() - started, device_info, argv)
    print(f"Device: {device_info['name']}; torch {data['torch']}; {data['timestamp']}")
    print(format_table(results))
    if args.json:
        print(f"JSON written to {write_json(args.json, data)}")
    return 1 if any("error" in r for r in results) else 0

