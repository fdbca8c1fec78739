"""One training run while it goes (`Run`) and what it writes to its run folder after every epoch.

`vitlab.training.finetune` builds a `Run` in `setup`, advances it in `fit` and closes it in `finish`; this module
holds the object and the bookkeeping around the loop: where the run folder is (`run_folder_path`), that it is never
overwritten (`prepare_out`), a checkpoint's training state put back on resume (`restore`), and each epoch as one
history record, a checkpoint.pt (every epoch) and a best.pt (when validation accuracy improved) (`record_epoch`).
Only rank 0 writes files.

Besides RUN_FILES, a folder holds `.vitlab-lock` while a run uses it (`vitlab.training.folder_lock`): hidden, removed
when the run ends, never taken for a run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import VisionTransformer

from vitlab.atomic import remove_stale_temporaries
from vitlab.data import BatchTransform, DataSplits
from vitlab.errors import VitlabError
from vitlab.training import distributed
from vitlab.training.checkpoint import (
    BEST,
    CONFIG,
    LAST,
    WEIGHTS_FILE,
    load_optimizer_state,
    save_checkpoint,
    save_json,
)
from vitlab.training.config import FinetuneConfig
from vitlab.training.model_card import CARD_FILE, GALLERY_FILE
from vitlab.training.run_log import METRICS_CSV, RunLog
from vitlab.training.train import Recipe
from vitlab.training.trunk_cache import CachedTrunk

# Every file a run folder holds (vitlab.training.finetune writes them all through vitlab.atomic.atomic_write).
RUN_FILES = (CONFIG, "history.json", "summary.json", LAST, BEST, "curves.png", "predictions.png", METRICS_CSV,
             WEIGHTS_FILE, CARD_FILE, GALLERY_FILE)


@dataclass
class Run:
    """Everything one training run holds while it goes (variables holding one are called `run`)."""

    config: FinetuneConfig  # complete (see vitlab.training.config.make_config), never changed during the run
    out: Path  # the run folder
    process: distributed.Process
    device: torch.device
    splits: DataSplits  # uint8 images, already on `device`
    model: VisionTransformer  # checkpoints save it; validation without a cache and the test pass call it
    recipe: Recipe
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: Callable[[Tensor, Tensor], Tensor]
    train_transform: BatchTransform  # uint8 (B, 3, H, W) -> augmented, normalised float at the model's size
    eval_transform: BatchTransform  # the same without augmentation
    local_batch: int  # this process's share of the global batch
    trainer: nn.Module | None = None  # what training steps call: the model, or DDP, the cached top, torch.compile
    cached: CachedTrunk | None = None  # --cache-trunk: the frozen trunk's output for train and val
    trunk_cache_seconds: float | None = None  # time spent building that cache
    log: RunLog | None = None  # metrics.csv and TensorBoard events (rank 0 only)
    history: list[dict] = field(default_factory=list)  # one record per completed epoch
    best_val_acc: float = -1.0
    start_epoch: int = 0  # epochs already done (resuming)
    started: float = field(default_factory=time.perf_counter)  # for the summary's wall_seconds

    @property
    def show(self) -> bool:
        """Whether this process draws progress bars and prints: rank 0, unless --quiet."""
        return self.process.is_main and not self.config.quiet

    def say(self, message: str) -> None:
        if self.show:
            print(message, flush=True)


def run_folder_path(config: FinetuneConfig) -> Path:
    """Where the run writes: `config.out`, or runs/<timestamp> for a new run given none."""
    return Path(config.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).expanduser()


def prepare_out(out: Path, resuming: bool, clean: bool = True) -> None:
    """Refuse a folder that already holds a run when starting a new one; with `clean` (rank 0 only, holding the
    folder's lock, before it writes anything) remove the temporary files a killed run left behind."""
    if not resuming and (out / LAST).exists():
        raise VitlabError(
            f"{out} already holds a run ({LAST}). Continue it with --resume {out}, or choose another --out; "
            f"vitlab never overwrites a run."
        )
    if clean and out.is_dir():
        remove_stale_temporaries(out, RUN_FILES)


def restore(run: Run, checkpoint: dict) -> None:
    """Put a checkpoint.pt's training state back: optimizer, schedule, RNG, history and the epoch to start from.

    The model's weights are loaded when it is built (vitlab.training.finetune), before anything wraps or caches it.
    """
    load_optimizer_state(run.optimizer, checkpoint["optimizer"], run.out)
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    run.history = checkpoint["history"]
    run.best_val_acc = checkpoint["best_val_acc"]
    run.start_epoch = checkpoint["epoch"]
    if run.process.is_main:  # a kill between checkpoint.pt and history.json leaves the history one epoch behind
        save_json(run.out / "history.json", run.history)


def record_epoch(run: Run, epoch: int, train: dict, val: dict) -> None:
    """Append epoch `epoch` (1-based) to the history, save checkpoint.pt (and best.pt if better), print its line.

    `train` and `val` are the dicts of vitlab.training.train.train_one_epoch and vitlab.training.train.evaluate.
    """
    record = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
              "val_loss": val["loss"], "val_acc": val["acc"],
              "seconds": train["seconds"] + val["seconds"], "images_per_second": train["images_per_second"],
              "lr": max(group["lr"] for group in run.optimizer.param_groups)}  # the head's rate after the epoch
    run.history.append(record)
    improved = val["acc"] > run.best_val_acc
    run.best_val_acc = max(run.best_val_acc, val["acc"])
    if run.process.is_main:
        _save_epoch(run, epoch, improved)
    run.say(f"epoch {epoch}/{run.config.epochs}: train loss {train['loss']:.3f} acc {train['acc']:.2%} | "
            f"val loss {val['loss']:.3f} acc {val['acc']:.2%} | {record['seconds']:.1f}s, "
            f"{train['images_per_second']:.0f} img/s" + (" | best so far" if improved else ""))


def _save_epoch(run: Run, epoch: int, improved: bool) -> None:
    """checkpoint.pt every epoch (everything needed to resume), best.pt when validation accuracy improved."""
    config = run.config
    common = {"model": run.model.state_dict(), "config": asdict(config), "classes": run.splits.classes,
              "epoch": epoch, "arch": config.arch, "num_classes": run.splits.num_classes,
              "trainable_blocks": config.trainable_blocks, "image_size": run.model.image_size}
    if improved:
        save_checkpoint(run.out / BEST, {**common, "val_acc": run.history[-1]["val_acc"]})
    save_checkpoint(run.out / LAST, {
        **common, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state()}, "history": run.history, "best_val_acc": run.best_val_acc,
    })
    save_json(run.out / "history.json", run.history)
    if run.log is not None:
        run.log.epoch(run.history, run.model, run.eval_transform)
