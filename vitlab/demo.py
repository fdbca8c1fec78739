"""The offline demo model: vit_tiny trained on synthetic shapes, shared by the lessons, the explorer and the tests.

Lessons and the explorer share one trained demo model through a cache file, so nothing retrains what another
already trained: `load_demo_model()` trains it once (about a minute on a laptop CPU) and loads it afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchvision.models import VisionTransformer

from vitlab.data import DataSplits, load_dataset


def default_cache_dir() -> Path:
    """Where the demo run is kept: $VITLAB_CACHE, else ~/.cache/vitlab."""
    return Path(os.environ.get("VITLAB_CACHE", Path.home() / ".cache" / "vitlab"))


def load_demo_model(
    cache_dir: str | os.PathLike | None = None, quiet: bool = True
) -> tuple[VisionTransformer, DataSplits]:
    """The trained demo model (eval mode) and the shapes splits it was trained on; trains it on first use.

    The run lives in `<cache_dir>/demo` (default `~/.cache/vitlab/demo`, or `$VITLAB_CACHE/demo`); delete that
    folder to retrain.
    """
    from vitlab.checkpoint import load_trained_model
    from vitlab.finetune import main

    run_dir = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "demo"
    best = run_dir / "best.pt"
    if not (run_dir / "summary.json").is_file():
        argv = ["--preset", "demo", "--out", str(run_dir)] + (["--quiet"] if quiet else [])
        if (run_dir / "checkpoint.pt").is_file():
            argv = ["--resume", str(run_dir)] + (["--quiet"] if quiet else [])  # finish an interrupted run
        if main(argv) != 0:
            raise RuntimeError(f"Training the demo model into {run_dir} failed; see the message above.")
    model, checkpoint = load_trained_model(best)
    config = checkpoint["config"]
    splits = load_dataset("shapes", seed=config["seed"], subset=config["subset"])
    return model, splits
