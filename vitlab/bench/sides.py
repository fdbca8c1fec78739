"""The two sides every row measures, built the same way for each row: vitlab's training and the notebook's."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from vitlab.bench.baseline import notebook_loader, notebook_model, notebook_optimizer, notebook_train_steps
from vitlab.bench.measure import NUM_CLASSES, Settings, as_dataset, timed
from vitlab.data import BatchTransform, batches
from vitlab.model import build_model
from vitlab.training.train import (
    RECIPES,
    Recipe,
    evaluate,
    make_criterion,
    make_optimizer,
    make_scheduler,
    train_one_epoch,
)

Batches = Iterable[tuple[Tensor, Tensor]]  # (inputs, labels (b,)) as train_one_epoch and evaluate take them


def vitlab_model(settings: Settings) -> nn.Module:
    """vitlab's model with random weights (nothing to download): the last 3 blocks and the head train."""
    torch.manual_seed(settings.seed)
    return build_model(settings.arch, NUM_CLASSES, pretrained=False, trainable_blocks=3, progress=False)


def input_size(arch: str) -> int:
    """The side length the model takes (224 for ViT-B/16): the notebook's Resize target."""
    return 224 if arch == "vit_b_16" else 32


@dataclass
class VitlabTraining:
    """vitlab's training as `vitlab.training.finetune` sets it up with recipe 'default', on random weights.

    `train` and `evaluate` run vitlab's own loops with these pieces, without progress bars; `module` may be the
    model, its compiled form, or a `TrainableTop` over cached trunk tokens.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: Callable[[Tensor, Tensor], Tensor]
    device: torch.device
    recipe: Recipe = field(default_factory=lambda: RECIPES["default"])

    def train(self, module: nn.Module, source: Batches, count: int, transform: BatchTransform | None) -> dict:
        """One pass of `train_one_epoch` over `source` (`count` images); its metrics dict."""
        return train_one_epoch(module, source, count, transform, self.optimizer, self.scheduler, self.criterion,
                               self.device, self.recipe, show_progress=False)

    def evaluate(self, module: nn.Module, source: Batches, count: int, transform: BatchTransform | None) -> dict:
        """vitlab's `evaluate` over `source` (`count` images); its metrics dict."""
        return evaluate(module, source, count, transform, self.criterion, self.device, self.recipe,
                        show_progress=False)


def vitlab_training(settings: Settings, total_steps: int) -> VitlabTraining:
    """The model on the device, AdamW (fused on CUDA), warm-up + cosine over `total_steps`, the recipe's loss."""
    recipe = RECIPES["default"]
    model = vitlab_model(settings).to(settings.device)
    # pretrained=True: the real job fine-tunes ImageNet weights, so its body learns at a tenth of the head's rate.
    optimizer = make_optimizer(model, recipe, recipe.lr, pretrained=True, fused=settings.cuda)
    scheduler = make_scheduler(optimizer, recipe, total_steps=total_steps)
    return VitlabTraining(model, optimizer, scheduler, make_criterion(recipe), settings.device, recipe)


def vitlab_trainer(
    settings: Settings, images: np.ndarray, labels: np.ndarray, batch_size: int, total_steps: int,
    cpu_bf16: bool = False,
) -> tuple[Callable[[int], float], nn.Module]:
    """vitlab's training as `vitlab.training.finetune` sets it up; returns (run(steps) -> images/s, model).

    `cpu_bf16` wraps the steps in CPU bf16 autocast, which vitlab's recipe does not do (it uses bf16 on CUDA only):
    the optional row `train_step_cpu_bf16` measures what it would give.
    """
    device = settings.device
    training = vitlab_training(settings, total_steps)
    transform = BatchTransform(training.model.image_size, train=True).to(device)
    data = as_dataset(images, labels).to(device)

    def run(steps: int) -> float:
        chunk = data.take(steps * batch_size)

        def train() -> dict:
            with torch.autocast("cpu", dtype=torch.bfloat16) if cpu_bf16 else contextlib.nullcontext():
                source = batches(chunk, batch_size, shuffle=True, device=device)
                return training.train(training.model, source, len(chunk), transform)

        result, seconds = timed(device, train)
        return result["count"] / seconds

    return run, training.model


def notebook_trainer(
    settings: Settings, images: np.ndarray, labels: np.ndarray, batch_size: int
) -> tuple[Callable[[int], float], nn.Module]:
    """The notebook's training loop; returns (run(steps) -> images/s, model)."""
    device = settings.device
    torch.manual_seed(settings.seed)
    model = notebook_model(settings.arch, NUM_CLASSES).to(device)
    optimizer = notebook_optimizer(model)
    loader = notebook_loader(images, labels, batch_size, train=True, image_size=input_size(settings.arch))
    return (lambda steps: notebook_train_steps(model, loader, steps, device, optimizer)), model
