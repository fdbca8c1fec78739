"""The rows that run the fine-tuning job end to end (`python -m vitlab.finetune`): demo and transfer.

A row comparing ways to run the job (with and without a flag, say) hands their flags to `seeded_runs`, as transfer does.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from vitlab.bench.measure import Settings, in_fresh_process, row_result
from vitlab.cli import flag_name
from vitlab.training import finetune

# transfer: the demo's 8,000 training images, and few labels: 500 of them (val and test stay whole).
VARIANTS = {"8000 images, 5 epochs": {}, "500 images, 10 epochs": {"subset": 500, "epochs": 10}}
# From scratch at lr 1e-3, its best measured rate (1e-2 is the preset's rate for a head on a pretrained base).
FROM_SCRATCH = ["--pretrained", "none", "--trainable-blocks", "all", "--lr", "1e-3"]


def finetune_job(args: list[str], out: Path, fresh_process: bool = False) -> dict:
    """`python -m vitlab.finetune ARGS --quiet --out OUT`, in this process or a new one (whose wall time includes
    starting torch): its summary.json, with its wall "seconds"."""
    command, started = [*args, "--quiet", "--out", str(out)], time.perf_counter()
    code = in_fresh_process("vitlab.training.finetune", "main", [command]) if fresh_process else finetune.main(command)
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"python -m vitlab.finetune {' '.join(command)} exited with {code} (its message is above)")
    return {**json.loads((out / "summary.json").read_text()), "seconds": seconds}


def seeded_runs(common: list[str], sides: dict[str, list[str]], seeds: range, folder: Path) -> dict[str, list[dict]]:
    """The job with `common` and each side's flags once per seed, the sides' order alternating from seed to seed:
    {side: [finetune_job's result, with its "seed", for each seed]}."""
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for seed in seeds:
        for side in list(sides) if seed % 2 == 0 else list(sides)[::-1]:
            runs[side].append({"seed": seed, **finetune_job([*common, *sides[side], "--seed", str(seed)],
                                                            folder / f"{side}-{seed}")})
    return runs


def bench_demo(settings: Settings) -> dict:
    """The offline demo end to end, in a fresh process: wall seconds (starting Python included) and test accuracy."""
    with tempfile.TemporaryDirectory(prefix="vitlab-bench-demo-") as folder:
        run = finetune_job(["--preset", "demo", "--device", settings.device.type, *settings.demo_args],
                           Path(folder) / "demo", fresh_process=True)
    return row_result(
        "demo", settings, None, run["seconds"], "s", target=">= 97% test acc, <= 30 s",
        met=run["test_acc"] >= 0.97 and run["seconds"] <= 30.0, test_acc=run["test_acc"],
        pointing_game=run.get("pointing_game"), attention_mass_ratio=run.get("attention_mass_ratio"),
        wall_seconds_in_process=run["wall_seconds"],
        notes=f"python -m vitlab.finetune --preset demo {' '.join(settings.demo_args)}: test acc {run['test_acc']:.1%}"
        f", pointing game {run.get('pointing_game', float('nan')):.2f}; {run['wall_seconds']:.0f} s inside the run",
    )


def transfer_runs(seed: int, device: str, extra: dict, folder: Path) -> dict[str, dict[str, float]]:
    """One seed, the demo preset (the shipped base) and its from-scratch twin, both with the settings `extra` (by
    FinetuneConfig field): {"pretrained": {"test_acc", "seconds"}, "scratch": {...}}."""
    common = ["--preset", "demo", "--device", device, *(a for k, v in extra.items() for a in (flag_name(k), str(v)))]
    runs = seeded_runs(common, {"pretrained": [], "scratch": FROM_SCRATCH}, range(seed, seed + 1), folder)
    return {side: {"test_acc": run["test_acc"], "seconds": run["seconds"]} for side, (run,) in runs.items()}


def bench_transfer(settings: Settings, variants: dict | None = None) -> dict:
    """Does the shipped fractal-pretrained base pay? For each variant (settings of both sides, default VARIANTS) and
    seed (42, 43, ..., one a repeat): the demo preset against the same model from scratch, the same epochs."""
    variants, seeds = variants or VARIANTS, range(42, 42 + settings.reps(1, 3))
    with tempfile.TemporaryDirectory(prefix="vitlab-bench-transfer-") as folder:
        table = {name: {seed: transfer_runs(seed, settings.device.type, extra, Path(folder) / str(index))
                        for seed in seeds} for index, (name, extra) in enumerate(variants.items())}
    wins = {name: sum(r[s]["pretrained"]["test_acc"] > r[s]["scratch"]["test_acc"] for s in seeds)
            for name, r in table.items()}
    first = table[next(iter(table))]
    return row_result(
        "transfer", settings, statistics.mean(first[s]["scratch"]["test_acc"] for s in seeds),
        statistics.mean(first[s]["pretrained"]["test_acc"] for s in seeds), "test acc",
        target="the pretrained base beats from-scratch on every seed", met=all(n == len(seeds) for n in wins.values()),
        table={name: {str(s): r[s] for s in seeds} for name, r in table.items()}, wins=wins,
        notes=f"demo preset (shipped base, last 2 blocks fine-tuned) vs {' '.join(FROM_SCRATCH)}; " + "; ".join(
            f"{name}, seed {s}: {r[s]['pretrained']['test_acc']:.1%} vs {r[s]['scratch']['test_acc']:.1%}"
            for name, r in table.items() for s in seeds),
    )
