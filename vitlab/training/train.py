"""Training and evaluation: recipes, one epoch of training, one pass of evaluation.

Metrics are accumulated on the device and read once per progress-bar refresh, so a training step never waits for
the host (no `.item()` per step): on a GPU the Python loop can run ahead of the kernels it queues.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitlab.data import BatchTransform
from vitlab.errors import TrainingFailed
from vitlab.model import train_mode


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How the trainable parameters are optimised (built by keyword: ten numbers in a row cannot be read)."""

    name: str
    optimizer: str  # "adamw" or "adam"
    lr: float  # learning rate of the new head (and of everything, when nothing is pretrained)
    pretrained_lr_scale: float  # pretrained blocks learn at lr * this: they start good, so move them gently
    weight_decay: float  # AdamW's decoupled decay, on weight matrices only (not biases, norms, embeddings, tokens)
    warmup_fraction: float  # share of all steps spent ramping the learning rate up from 0
    cosine: bool  # decay the learning rate to 0 along a half cosine after warmup; False keeps it constant
    label_smoothing: float  # soften the one-hot targets: the head stops chasing over-confident logits
    grad_clip: float | None  # clip the global gradient norm to this (None: no clipping)
    bf16_on_cuda: bool  # bf16 autocast on CUDA: tensor cores, half the activation memory


RECIPES = {
    # The fine-tuning literature's defaults (e.g. DeiT / timm fine-tuning): AdamW, warmup + cosine, label smoothing.
    "default": Recipe(name="default", optimizer="adamw", lr=1e-3, pretrained_lr_scale=0.1, weight_decay=0.05,
                      warmup_fraction=0.05, cosine=True, label_smoothing=0.1, grad_clip=1.0, bf16_on_cuda=True),
    # The notebook exactly: Adam, lr 1e-3 for every trainable parameter, constant, plain cross-entropy, fp32.
    "notebook": Recipe(name="notebook", optimizer="adam", lr=1e-3, pretrained_lr_scale=1.0, weight_decay=0.0,
                       warmup_fraction=0.0, cosine=False, label_smoothing=0.0, grad_clip=None, bf16_on_cuda=False),
}

# Words in a parameter's name that keep it out of weight decay although it has 2 or more dimensions: the position
# embedding and the class (or mask) token are learned inputs, not weight matrices, and decay would pull them to 0.
NO_DECAY_WORDS = ("embedding", "token")


def decays(name: str, param: Tensor) -> bool:
    """Whether AdamW's weight decay applies to `param`: weight matrices and convolution kernels only."""
    return param.ndim >= 2 and not any(word in name for word in NO_DECAY_WORDS)


def make_optimizer(
    model: nn.Module, recipe: Recipe, lr: float, pretrained: bool, fused: bool = False,
    lr_scales: Mapping[str, float] | None = None,
) -> torch.optim.Optimizer:
    """Build the recipe's optimiser over the trainable parameters, the head in its own group.

    Parameter groups: the classification head at `lr`; the other trainable parameters at
    `lr * recipe.pretrained_lr_scale` when they hold pretrained weights (else at `lr`); a parameter named in
    `lr_scales` (its name in `model.named_parameters()`) learns that many times faster than its group would. With
    AdamW, weight decay applies to weight matrices only (`decays`).
    """
    body_lr = lr * recipe.pretrained_lr_scale if pretrained else lr
    scales = dict(lr_scales or {})
    unknown = set(scales) - {name for name, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"lr_scales names parameters the model does not have: {sorted(unknown)}")
    groups: dict[tuple[float, float], list[Tensor]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group_lr = (lr if name.startswith("heads.") else body_lr) * scales.get(name, 1.0)
        decay = recipe.weight_decay if recipe.optimizer == "adamw" and decays(name, param) else 0.0
        groups.setdefault((group_lr, decay), []).append(param)
    param_groups = [{"params": params, "lr": glr, "weight_decay": wd} for (glr, wd), params in groups.items()]
    extra = {"fused": True} if fused else {}
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, **extra)
    return torch.optim.Adam(param_groups, **extra)


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step learning-rate multiplier: linear warmup over round(warmup_fraction * total_steps) steps (none when
    that rounds to 0), then half-cosine to 0 at `total_steps` (or constant for the notebook recipe)."""
    warmup_steps = round(recipe.warmup_fraction * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _LearningRateShape(warmup_steps, total_steps, recipe.cosine))


@dataclass
class _LearningRateShape:
    """The schedule as a small object of plain fields, so the scheduler's state_dict holds only plain values."""

    warmup_steps: int
    total_steps: int
    cosine: bool

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.cosine:
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_criterion(recipe: Recipe) -> Callable[[Tensor, Tensor], Tensor]:
    """Cross-entropy with the recipe's label smoothing: (logits (B, C), labels (B,)) -> scalar loss."""
    return nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)


# The device types on which a recipe's `bf16_on_cuda` turns bf16 autocast on. CUDA only: CPU bf16 measured slower
# (see BENCHMARKS.md). A parameter, not a constant inside the functions, so that tests run this very code path
# on the CPU with bf16_devices=("cpu",) (tests/test_gpu_paths.py): no GPU has run it.
BF16_DEVICES = ("cuda",)


def uses_bf16(device: torch.device, recipe: Recipe, bf16_devices: tuple[str, ...] = BF16_DEVICES) -> bool:
    """Whether `recipe` computes in bf16 on `device` (by default on CUDA only)."""
    return device.type in bf16_devices and recipe.bf16_on_cuda


def autocast_for(device: torch.device, recipe: Recipe, bf16_devices: tuple[str, ...] = BF16_DEVICES):
    """bf16 autocast on `device` when the recipe asks for it there (CUDA by default), else a no-op context."""
    if uses_bf16(device, recipe, bf16_devices):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


class RunningMetrics:
    """Loss and accuracy sums kept on the device; `read()` is the only place that syncs with the host."""

    def __init__(self, device: torch.device) -> None:
        self.totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct predictions
        self.count = 0  # images seen: a host-side int, known without asking the device

    def update(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        correct = (logits.argmax(dim=-1) == labels).sum()
        self.totals += torch.stack([loss.detach().double() * labels.shape[0], correct.double()])
        self.count += labels.shape[0]

    def all_reduce(self) -> None:
        """Sum the totals over every process of a distributed run (no-op when not distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.totals.device)
            both = torch.cat([self.totals, count])
            torch.distributed.all_reduce(both)
            self.totals, self.count = both[:2], int(both[2].item())

    def read(self) -> dict[str, float]:
        loss_sum, correct = self.totals.tolist()
        return {"loss": loss_sum / max(self.count, 1), "acc": correct / max(self.count, 1), "count": self.count}


def train_step(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    transform: BatchTransform | None,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[[Tensor, Tensor], Tensor],
    *,
    autocast=None,
    grad_clip: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One optimisation step on a uint8 batch (B, 3, H, W). Returns (loss, logits (B, C)), never synced to host.

    With `transform=None` the batch is already the model's input (cached trunk tokens, see
    `vitlab.training.trunk_cache`).
    """
    # (B, 3, H, W) uint8 -> (B, 3, S, S) normalised float
    inputs = images if transform is None else transform(images, generator=generator)
    with autocast if autocast is not None else nullcontext():
        logits = model(inputs)
        loss = criterion(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        trainable = [p for p in model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
    optimizer.step()
    return loss, logits


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_images: int,
    transform: BatchTransform | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: Callable[[Tensor, Tensor], Tensor],
    device: torch.device,
    recipe: Recipe,
    *,
    generator: torch.Generator | None = None,
    description: str = "train",
    show_progress: bool = True,
    refresh_every: int = 25,
    bf16_devices: tuple[str, ...] = BF16_DEVICES,
) -> dict[str, float]:
    """Train over `batches` once. Returns {"loss", "acc", "count", "seconds", "images_per_second"} (all ranks).

    `bf16_devices`: the device types where the recipe's bf16 autocast applies (`BF16_DEVICES`, CUDA, by default).
    """
    train_mode(model)  # frozen leading blocks stay in eval mode: the same function, PyTorch's faster kernel
    metrics = RunningMetrics(device)
    autocast = autocast_for(device, recipe, bf16_devices)
    start = time.perf_counter()
    with tqdm(total=num_images, desc=description, unit="img", disable=not show_progress, leave=False) as bar:
        for step, (images, labels) in enumerate(batches):
            loss, logits = train_step(
                model, images, labels, transform, optimizer, criterion,
                autocast=autocast, grad_clip=recipe.grad_clip, generator=generator,
            )
            scheduler.step()
            metrics.update(loss, logits, labels)
            bar.update(labels.shape[0])
            if (step + 1) % refresh_every == 0:  # the only host sync in the loop, once every few steps
                running = metrics.read()
                check_finite(running["loss"], description)
                bar.set_postfix(loss=f"{running['loss']:.3f}", acc=f"{running['acc']:.1%}")
    metrics.all_reduce()
    result = metrics.read()
    check_finite(result["loss"], description)
    result["seconds"] = time.perf_counter() - start
    result["images_per_second"] = result["count"] / result["seconds"]
    return result


class NonFiniteLossError(TrainingFailed):
    """The training loss became NaN or infinite: the run stops and keeps the last good checkpoint."""


def check_finite(loss: float, where: str) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"The loss became {loss} during {where}. The weights are no longer usable, so training stopped. "
            f"Try a lower --lr, or --recipe default (it clips gradients)."
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_images: int,
    transform: BatchTransform | None,
    criterion: Callable[[Tensor, Tensor], Tensor],
    device: torch.device,
    recipe: Recipe,
    *,
    description: str = "eval",
    show_progress: bool = True,
) -> dict[str, float]:
    """Loss and accuracy over `batches` (summed over all processes of a distributed run).

    `transform=None`: the batches are already model inputs (cached trunk tokens).
    """
    model.eval()
    metrics = RunningMetrics(device)
    start = time.perf_counter()
    with tqdm(total=num_images, desc=description, unit="img", disable=not show_progress, leave=False) as bar:
        for images, labels in batches:
            with autocast_for(device, recipe):
                logits = model(images if transform is None else transform(images))
            metrics.update(criterion(logits.float(), labels), logits, labels)
            bar.update(labels.shape[0])
    metrics.all_reduce()
    result = metrics.read()
    result["seconds"] = time.perf_counter() - start
    return result


def predict(model: nn.Module, images: Tensor, transform: BatchTransform, batch_size: int = 256) -> Tensor:
    """Predicted class per image: uint8 (N, 3, H, W) -> (N,) int64, in eval mode, batch by batch."""
    model.eval()
    with torch.no_grad():
        logits = [model(transform(images[i : i + batch_size])) for i in range(0, images.shape[0], batch_size)]
    return torch.cat(logits).argmax(dim=-1)


