"""The offline demo model: vit_tiny fine-tuned on the shipped Fashion-MNIST photos, shared by the lessons, the explorer
and tests.

Lessons and the explorer share one trained demo model through a cache file, so nothing retrains what another
already trained: `load_demo_model()` trains it once (under a minute on a laptop CPU: the shipped pretrained base,
fine-tuned) and loads it afterwards. A cached run made with other settings than today's demo preset (an older
vitlab's demo, say, on the synthetic shapes) is not today's demo: it is set aside, kept, and the demo trains again.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torchvision.models import VisionTransformer

from vitlab.data import DataSplits, load_dataset
from vitlab.training import finetune
from vitlab.training.checkpoint import LAST, load_trained_model
from vitlab.training.config import make_config
from vitlab.training.resume import ON_RESUME, resume_config

# The settings that make the demo model what it is, as --resume sees them (its weights fit them, or its numbers depend
# on them): a cached run that differs in one of them is another model.
DEMO_SETTINGS = tuple(name for name, rule in ON_RESUME.items() if rule in ("weights", "plan", "epochs"))


def default_cache_dir() -> Path:
    """Where the demo run is kept: $VITLAB_CACHE, else ~/.cache/vitlab."""
    return Path(os.environ.get("VITLAB_CACHE", Path.home() / ".cache" / "vitlab"))


def load_demo_model(
    cache_dir: str | os.PathLike | None = None, quiet: bool = True
) -> tuple[VisionTransformer, DataSplits]:
    """The trained demo model (eval mode) and the splits it was trained on (the run's own dataset: the shipped
    Fashion-MNIST photos for `--preset demo`); trains it on first use.

    The run lives in `<cache_dir>/demo` (default `~/.cache/vitlab/demo`, or `$VITLAB_CACHE/demo`); delete that
    folder to retrain. A run that was interrupted is continued from its last completed epoch; a run made with
    other settings than today's preset (`stale_settings`) is moved aside, not deleted, and the demo trains anew.

    Raises:
        VitlabError: training the demo failed (the message says why).
    """
    run_dir = demo_run_dir(cache_dir)
    differences = stale_settings(run_dir)
    if differences:
        kept = set_aside(run_dir)
        changed = ", ".join(f"{name} {then!r} (now {now!r})" for name, (then, now) in differences.items())
        print(f"The cached demo run in {run_dir} was made with other settings than today's demo: {changed}. It is "
              f"kept in {kept}; today's demo trains once in its place.", file=sys.stderr)
    if not (run_dir / "summary.json").is_file():
        print(f"Training the demo model once (under a minute on a laptop CPU); it is cached in {run_dir}.",
              file=sys.stderr)
        train_demo(run_dir, quiet)
    model, checkpoint = load_trained_model(run_dir)  # a run folder: its best.pt
    config = checkpoint["config"]
    splits = load_dataset(config["dataset"], seed=config["seed"], subset=config["subset"])
    return model, splits


def train_demo(run_dir: Path, quiet: bool = True) -> dict:
    """Train `--preset demo` into `run_dir`, or finish the run there if one was interrupted; returns its summary."""
    if (run_dir / LAST).is_file():
        config, checkpoint = resume_config({"resume": str(run_dir), "quiet": quiet})
    else:
        config, checkpoint = make_config({"preset": "demo", "out": str(run_dir), "quiet": quiet}), None
    return finetune.train_and_test(config, checkpoint)


def demo_run_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the cached demo run: `<cache_dir>/demo`, by default under `default_cache_dir()`."""
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "demo"


def stale_settings(run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """The DEMO_SETTINGS in which the run in `run_dir` differs from today's demo preset: name -> (the run's, today's).

    Empty when there is no run there yet, or when it is today's demo. An unreadable config.json counts as stale.
    """
    file = run_dir / "config.json"
    if not file.is_file():
        return {}
    try:
        made_with = json.loads(file.read_text())
    except (OSError, ValueError):
        return {"config.json": ("unreadable", "readable")}
    today = asdict(make_config({"preset": "demo", "out": str(run_dir)}))
    return {name: (made_with.get(name), today[name]) for name in DEMO_SETTINGS if made_with.get(name) != today[name]}


def set_aside(run_dir: Path) -> Path:
    """Rename `run_dir` to the first free `<name>-old-<n>` beside it, deleting nothing; returns where it went."""
    number = 1
    while (kept := run_dir.with_name(f"{run_dir.name}-old-{number}")).exists():
        number += 1
    run_dir.rename(kept)
    return kept
