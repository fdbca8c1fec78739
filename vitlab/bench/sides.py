"""The two sides the rows measure, built alike: the notebook's training (`vitlab.bench.baseline`) and vitlab's."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torchvision.models import VisionTransformer

from vitlab.bench.baseline import notebook_loader, notebook_model, notebook_optimizer, notebook_train_steps
from vitlab.bench.measure import NUM_CLASSES, Settings, timed
from vitlab.data import BatchTransform, ImageDataset, batches
from vitlab.model import build_model
from vitlab.training import train as vitlab_train

TRAINABLE_BLOCKS = 3  # as the notebook: the last 3 blocks and the head train
Trainer = Callable[[int], float]  # trains that many steps, returns images/s


class VitlabTraining(NamedTuple):
    """vitlab's training as `vitlab.training.finetune` sets it up with recipe 'default', on random weights, its loops
    without progress bars: `train(module, batches, count, transform)` and `evaluate(...)` alike, `module` the model,
    its compiled form or a `TrainableTop` over cached trunk tokens; each returns its metrics."""

    model: VisionTransformer
    train: Callable[..., dict]
    evaluate: Callable[..., dict]
    bf16: bool  # whether the recipe computes in bf16 on this device (CUDA)


def vitlab_training(settings: Settings, total_steps: int, image_size: int | None = None,
                    trainable_blocks: int = TRAINABLE_BLOCKS) -> VitlabTraining:
    """`settings.arch` with random weights on the device, AdamW (fused on CUDA), warm-up + cosine over `total_steps`."""
    recipe, device = vitlab_train.RECIPES["default"], settings.device
    torch.manual_seed(settings.seed)
    model = build_model(settings.arch, NUM_CLASSES, pretrained=False, trainable_blocks=trainable_blocks,
                        progress=False, image_size=image_size).to(device)
    # pretrained=True: the real job fine-tunes pretrained weights, so its body learns at a tenth of the head's rate.
    optimizer = vitlab_train.make_optimizer(model, recipe, recipe.lr, pretrained=True, fused=settings.cuda)
    scheduler = vitlab_train.make_scheduler(optimizer, recipe, total_steps=total_steps)
    common = {"criterion": vitlab_train.make_criterion(recipe), "device": device, "recipe": recipe,
              "show_progress": False}
    return VitlabTraining(model, partial(vitlab_train.train_one_epoch, optimizer=optimizer, scheduler=scheduler,
                                         **common),
                          partial(vitlab_train.evaluate, **common), vitlab_train.uses_bf16(device, recipe))


def images_per_second(device: torch.device, work: Callable[[], dict]) -> float:
    """Images per second of `work` (a `train` or `evaluate` call), the device's queued work included."""
    result, seconds = timed(device, work)
    return result["count"] / seconds


def vitlab_trainer(settings: Settings, data: ImageDataset, batch_size: int, total_steps: int, *,
                   image_size: int | None = None) -> Trainer:
    """vitlab's training loop on `data` (uint8, on the device) at `image_size` px (default: the model's), its data
    transform (flip, rotation 10, resize) on the clock as the notebook's PIL work is on its side."""
    training = vitlab_training(settings, total_steps, image_size)
    transform = BatchTransform(training.model.image_size, train=True).to(settings.device)

    def run(steps: int) -> float:
        chunk = data.take(steps * batch_size)
        source = batches(chunk, batch_size, shuffle=True, device=settings.device)
        return images_per_second(settings.device, lambda: training.train(training.model, source, len(chunk), transform))

    return run


def notebook_trainer(settings: Settings, images: np.ndarray, labels: np.ndarray,
                     batch_size: int) -> tuple[Trainer, nn.Module]:
    """The notebook's training loop and its model; one optimiser across calls, as in one long epoch."""
    torch.manual_seed(settings.seed)
    model = notebook_model(settings.arch, NUM_CLASSES).to(settings.device)
    optimizer, loader = notebook_optimizer(model), notebook_loader(images, labels, batch_size, train=True,
                                                                   image_size=settings.image_size)
    return (lambda steps: notebook_train_steps(model, loader, steps, settings.device, optimizer)), model
