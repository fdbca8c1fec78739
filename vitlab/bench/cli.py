"""`python -m vitlab.bench`: the registry of rows (ROWS), the command line that runs them, the table and the JSON.

A new row is a function `bench_<name>(settings) -> dict` (made by `measure.paired_row` or `measure.row_result`) in the
module of its topic, and one line in ROWS naming the flags it reads.
"""

from __future__ import annotations

import argparse
import difflib
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from functools import partial
from typing import NamedTuple

import torch
import torchvision

from vitlab.atomic import atomic_write
from vitlab.bench import epoch, explain, explorer, rows
from vitlab.bench.measure import Settings, row_result
from vitlab.cli import Parser, Rule, command, file_to_write, flag_name, number_flag
from vitlab.device import describe_device, pick_device
from vitlab.errors import VitlabError


class Row(NamedTuple):
    measure: Callable[[Settings], dict]
    flags: frozenset[str]  # the flags (Settings fields) it reads: one that no row of a run reads is refused
    optional: bool = False  # runs only when named in --rows


STEPS = frozenset({"device", "quick", "repeats", "batch_size", "arch"})  # rows that time steps, interleaved
RUNS = frozenset({"device", "quick", "repeats"})  # rows that train whole runs (one seed a repeat) or a preset
ROWS: dict[str, Row] = {
    "data_pipeline": Row(rows.bench_data_pipeline, STEPS),
    "capture_overhead": Row(rows.bench_capture_overhead, STEPS),
    "train_step": Row(rows.bench_train_step, STEPS),
    "eval_throughput": Row(rows.bench_eval_throughput, STEPS),
    "peak_memory": Row(rows.bench_peak_memory, STEPS - {"repeats"}),  # one fresh process a side
    "demo": Row(rows.bench_demo, frozenset({"device"})),  # the preset as it ships
    "epoch": Row(epoch.bench_epoch, STEPS - {"repeats"} | {"force_epoch", "epoch_images", "compile"}),
    "transfer": Row(rows.bench_transfer, RUNS, optional=True),
    "demo_frontier": Row(partial(rows.bench_demo, frontier=rows.FRONTIER_EPOCHS), frozenset({"device"}), optional=True),
    "train_step_160": Row(partial(rows.bench_resolution_step, image_size=160), STEPS, optional=True),
    "train_step_112": Row(partial(rows.bench_resolution_step, image_size=112), STEPS, optional=True),
    "laptop_estimate": Row(epoch.bench_laptop_estimate, RUNS, optional=True),
    "explorer": Row(explorer.bench_explorer, frozenset({"quick", "repeats", "arch"}), optional=True),  # the CPU's
    "explain": Row(explain.bench_explain, frozenset({"device", "quick", "repeats", "arch"}), optional=True),
    "tensorboard": Row(rows.bench_tensorboard, RUNS, optional=True),
}
DEFAULT_ROWS = tuple(name for name, row in ROWS.items() if not row.optional)
BENCH_DEVICES = ("cuda", "cpu")  # the device types the rows time, synchronise and measure memory on
# Upper bounds say "absurd", not "impossible": far past what any row needs, short of what would run for days.
RULES = {"repeats": Rule(1, 1_000, "--repeats 3"), "batch_size": Rule(1, 4_096, "--batch-size 8"),
         "epoch_images": Rule(10, 50_000, "--epoch-images 200")}  # CIFAR-100's training set: 50,000


def build_parser() -> Parser:
    """The flags. Every default is None, so that a flag the user typed is told apart from one left out."""
    optional = ", ".join(name for name in ROWS if name not in DEFAULT_ROWS)
    parser = Parser(rules=RULES, examples={"arch": "--arch vit_tiny"}, prog="python -m vitlab.bench",
                    description="Time vitlab against the notebook's way, interleaved: medians, ratio, target per row.",
                    epilog=f"Rows: {', '.join(DEFAULT_ROWS)}; only with --rows: {optional}. A flag that no row of "
                    "the run reads is refused. Targets are reported, never enforced: the exit code is 0 unless a row "
                    "failed to run.")
    switch, count = argparse.BooleanOptionalAction, {name: number_flag(name, rule) for name, rule in RULES.items()}
    parser.add_argument("--device", help="auto (the default: CUDA if present, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--quick", action=switch, help="small repeat and step counts")
    parser.add_argument("--json", metavar="PATH", help="also write every measurement, the device and versions here")
    parser.add_argument("--repeats", type=count["repeats"], metavar="N",
                        help="timed repeats per side, or seeds of the rows that train whole runs (default: per row)")
    parser.add_argument("--batch-size", type=count["batch_size"], metavar="N", help="one batch size for every row")
    parser.add_argument("--rows", metavar="A,B,...", help="these rows, in this order (default: the default rows)")
    parser.add_argument("--arch", choices=("vit_b_16", "vit_tiny"), help="the timed model (default: vit_b_16)")
    parser.add_argument("--epoch", action=switch, help="without --rows: run the epoch row too (a GPU target)")
    parser.add_argument("--force-epoch", action=switch, help="run the epoch row without CUDA too")
    parser.add_argument("--epoch-images", type=count["epoch_images"], metavar="N",
                        help="train+val images of the epoch row (default: 50000, CIFAR-100's training set)")
    parser.add_argument("--compile", action=switch, help="torch.compile in the epoch row (default: on CUDA only)")
    return parser


def chosen_rows(args: argparse.Namespace) -> tuple[str, ...]:
    """The rows of --rows, each known and named once (a typo is told the closest name), or the default rows."""
    if args.rows is None:
        return DEFAULT_ROWS
    if args.epoch is not None:
        raise VitlabError(f"--epoch adds the epoch row to the default rows; with --rows {args.rows}, name the row "
                          f"there (for example --rows epoch) and drop --epoch.")
    names, problem = [name.strip() for name in args.rows.split(",") if name.strip()], "names no row"
    for name in names:
        close = "".join(f" (did you mean {match}?)" for match in difflib.get_close_matches(name, list(ROWS), n=1))
        problem = f"has an unknown row {name!r}{close}" if name not in ROWS else \
            f"names {name} twice; name each row once" if names.count(name) > 1 else ""
        if problem:
            break
    if problem:
        raise VitlabError(f"--rows {args.rows!r} {problem}. Choose from: {', '.join(ROWS)}; for example "
                          f"--rows demo,epoch.")
    return tuple(names)


def skip_reason(name: str, settings: Settings, args: argparse.Namespace) -> str | None:
    """Why row `name` is reported as not measured in this run (the epoch row, a GPU target); None when it runs."""
    if name == "epoch" and args.rows is None and not args.epoch:
        return "run with --epoch"
    if name == "epoch" and not settings.cuda and not settings.force_epoch:  # a whole epoch takes hours on a CPU
        return "needs CUDA; --force-epoch runs it anyway"
    return None


def refuse_unread_flags(args: argparse.Namespace, names: tuple[str, ...], skipped: dict[str, str]) -> None:
    """Refuse a flag the user typed that no row of this run reads, naming the rows it is for."""
    running = [ROWS[name] for name in names if name not in skipped]
    for field in ("device", "quick", "repeats", "batch_size", "arch", "force_epoch", "epoch_images", "compile"):
        if getattr(args, field) is not None and not any(field in row.flags for row in running):
            users = [name for name, row in ROWS.items() if field in row.flags]
            why = "".join(f" ({name}: {skipped[name]})" for name in users if name in skipped)
            named = f"row{'s' * (len(users) > 1)} {', '.join(users)}"
            raise VitlabError(f"{flag_name(field)} is for the {named}; no row of this run reads it{why}. Drop "
                              f"{flag_name(field)}, or name such a row in --rows.")


def format_table(results: list[dict]) -> str:
    """A plain-text table: row | baseline | vitlab | unit | ratio | target | met, then one note per row."""

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"

    lines = [("row", "baseline", "vitlab", "unit", "ratio", "target", "met")]
    for r in results:
        if "error" in r or r.get("measured") is False:
            lines.append((r["row"], "error" if "error" in r else "not measured", "", "", "", r.get("target", ""), ""))
            continue
        vitlab = number(r["vitlab"]) + (f" ({r['test_acc']:.1%})" if "test_acc" in r else "")
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        lines.append((r["row"], number(r["baseline"]), vitlab, r["unit"], ratio, r["target"], met))
    widths = [max(len(line[i]) for line in lines) for i in range(7)]
    lines.insert(1, tuple("-" * width for width in widths))
    table = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join([*table, "", "notes:", *(f"  {r['row']}: {r.get('error', r.get('notes'))}" for r in results)])


def run_row(name: str, settings: Settings, skipped: dict[str, str]) -> dict:
    """Measure one row, or say why not; a row that fails is an "error" entry, so that the others still report."""
    print(f"  {name} ...", file=sys.stderr, end="", flush=True)
    started = time.perf_counter()
    try:
        result = ROWS[name].measure(settings) if name not in skipped else row_result(
            name, settings, None, None, "", target="", notes=f"not measured ({skipped[name]})", measured=False)
    except Exception as error:  # one broken row must not hide the others' numbers
        result = {"row": name, "error": f"{type(error).__name__}: {error}", "device": str(settings.device)}
    result["seconds"] = time.perf_counter() - started
    print(f" {result['seconds']:.0f} s", file=sys.stderr, flush=True)
    return result


@command("vitlab.bench")
def main(argv: list[str] | None = None) -> int:
    """Run the chosen rows, print the table, write the JSON. Returns 0, 1 when a row failed to run, 2 bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)  # every check comes before any row runs or any file is written
    names = chosen_rows(args)
    typed = {f.name: getattr(args, f.name) for f in fields(Settings) if getattr(args, f.name, None) is not None}
    settings = Settings(**{**typed, "device": pick_device(args.device or "auto", kinds=BENCH_DEVICES)})
    skipped = {name: why for name in names if (why := skip_reason(name, settings, args)) is not None}
    refuse_unread_flags(args, names, skipped)
    if args.json is not None:
        file_to_write("json", args.json)
    device = describe_device(settings.device)
    print(f"vitlab.bench on {device['name']}, torch {torch.__version__}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    results = [run_row(name, settings, skipped) for name in names]
    data = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(["python -m vitlab.bench", *argv]),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
            "device": device, "load_average_1min_end": describe_device(settings.device)["load_average_1min"],
            "settings": {**asdict(settings), "device": str(settings.device)},
            "wall_seconds": time.perf_counter() - started, "rows": results}
    print(f"Device: {device['name']}; torch {data['torch']}; {data['timestamp']}\n{format_table(results)}")
    if args.json is not None:
        text = json.dumps(data, indent=2, default=str) + "\n"  # written atomically: never a half-written report
        print(f"JSON written to {atomic_write(args.json, lambda file: file.write(text.encode()))}")
    return 1 if any("error" in r for r in results) else 0
