"""The offline demo model: vit_tiny fine-tuned on the shipped Fashion-MNIST photos, shared by the lessons, the explorer
and tests.

Lessons and the explorer share one trained demo model through a cache file, so nothing retrains what another
already trained: `load_demo_model()` trains it once (under 30 s on a laptop CPU: the shipped pretrained base,
fine-tuned) and loads it afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchvision.models import VisionTransformer

from vitlab.data import DataSplits, load_dataset
from vitlab.training import finetune
from vitlab.training.checkpoint import LAST, load_trained_model
from vitlab.training.config import make_config
from vitlab.training.resume import resume_config


def default_cache_dir() -> Path:
    """Where the demo run is kept: $VITLAB_CACHE, else ~/.cache/vitlab."""
    return Path(os.environ.get("VITLAB_CACHE", Path.home() / ".cache" / "vitlab"))


def load_demo_model(
    cache_dir: str | os.PathLike | None = None, quiet: bool = True
) -> tuple[VisionTransformer, DataSplits]:
    """The trained demo model (eval mode) and the splits it was trained on (the run's own dataset: the shipped
    Fashion-MNIST photos for `--preset demo`); trains it on first use.

    The run lives in `<cache_dir>/demo` (default `~/.cache/vitlab/demo`, or `$VITLAB_CACHE/demo`); delete that
    folder to retrain. A run that was interrupted is continued from its last completed epoch.

    Raises:
        VitlabError: training the demo failed (the message says why).
    """
    run_dir = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "demo"
    if not (run_dir / "summary.json").is_file():
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
