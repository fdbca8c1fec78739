"""The notebook's way, kept faithfully so that `vitlab.bench` can measure vitlab against it in the same process.

This module is a reference, not a recommendation: it reproduces what the seed notebook (vit-cifar100-notebook.md)
does, line for line where it matters for speed, and nothing else:

- every image goes through PIL transforms one at a time, inside a `DataLoader` with `num_workers=0` (the default the
  notebook kept): `Resize((224, 224))`, `RandomHorizontalFlip()`, `RandomRotation(10)`, `ToTensor()`,
  `Normalize(ImageNet mean, std)` for training, and the weights' own `ImageClassification` preset (resize 256,
  centre crop 224) for testing;
- the model is `vit_b_16` with everything frozen except the last 3 encoder blocks and a fresh 100-class head;
- `Adam(model.parameters(), lr=1e-3)` over all parameters (frozen ones never get a gradient, so Adam skips them);
- fp32 everywhere, and `loss.item()` plus `(predicted == labels).sum().item()` on every step, which makes the host
  wait for the device on every step.

The only departures: the images come from a uint8 NHWC numpy array instead of torchvision's CIFAR100 class (which
holds exactly such an array and wraps each image in `Image.fromarray`, as `NotebookDataset` does), the weights are
random (`weights=None`, so nothing is downloaded; speed does not depend on the values), and the per-100-batch print
is left out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms as transforms
from PIL import Image
from torch import Tensor, nn, optim
from torch.utils.data import DataLoader, Dataset
from torchvision.models import VisionTransformer, ViT_B_16_Weights, vit_b_16
from torchvision.transforms._presets import ImageClassification

from vitlab.bench.measure import timed
from vitlab.model import VIT_TINY_CONFIG

# The notebook's Normalize arguments (the ImageNet statistics, as vitlab.data.IMAGENET_MEAN / IMAGENET_STD).
NOTEBOOK_MEAN = [0.485, 0.456, 0.406]
NOTEBOOK_STD = [0.229, 0.224, 0.225]


def notebook_train_transform(image_size: int = 224, max_rotation_degrees: float = 10) -> transforms.Compose:
    """The notebook's training transform. `image_size` and the rotation exist only so tests can shrink them."""
    return transforms.Compose([
        transforms.Resize((image_size, image_size)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomRotation(max_rotation_degrees),
        transforms.ToTensor(),
        transforms.Normalize(mean=NOTEBOOK_MEAN, std=NOTEBOOK_STD),
    ])


def notebook_test_transform(image_size: int = 224) -> nn.Module:
    """The notebook's test transform: `ViT_B_16_Weights.IMAGENET1K_V1.transforms()` (resize 256, centre crop 224).

    For another `image_size` (tests) the same preset is scaled: resize to image_size * 256 / 224, crop image_size.
    Building the preset downloads nothing.
    """
    if image_size == 224:
        return ViT_B_16_Weights.IMAGENET1K_V1.transforms()
    return ImageClassification(crop_size=image_size, resize_size=round(image_size * 256 / 224))


class NotebookDataset(Dataset):
    """Images uint8 (N, H, W, 3) and labels, served like torchvision's CIFAR100: PIL image -> transform, int label."""

    def __init__(self, images_uint8_nhwc: np.ndarray, labels: np.ndarray | list[int], transform) -> None:
        if images_uint8_nhwc.dtype != np.uint8 or images_uint8_nhwc.ndim != 4 or images_uint8_nhwc.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 images of shape (N, H, W, 3), got {images_uint8_nhwc.dtype} "
                f"{images_uint8_nhwc.shape}"
            )
        self.data = images_uint8_nhwc
        self.targets = [int(label) for label in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.data[index])  # (H, W, 3) uint8 -> PIL, as torchvision's CIFAR100 does
        return self.transform(image), self.targets[index]  # (3, S, S) float, int


def notebook_loader(
    images_uint8_nhwc: np.ndarray,
    labels: np.ndarray | list[int],
    batch_size: int = 64,
    *,
    train: bool = True,
    image_size: int = 224,
) -> DataLoader:
    """The notebook's `DataLoader`: its PIL transform per image, shuffled for training, `num_workers=0`."""
    transform = notebook_train_transform(image_size) if train else notebook_test_transform(image_size)
    dataset = NotebookDataset(images_uint8_nhwc, labels, transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train)


def notebook_model(arch: str = "vit_b_16", num_classes: int = 100) -> VisionTransformer:
    """The notebook's model surgery on random weights: freeze all, unfreeze the last 3 blocks, new head.

    `arch="vit_tiny"` builds vitlab's small sibling the same way, for fast tests.
    """
    model = vit_b_16(weights=None) if arch == "vit_b_16" else VisionTransformer(num_classes=1000, **VIT_TINY_CONFIG)
    for param in model.parameters():
        param.requires_grad = False
    for i in range(-3, 0):
        for param in model.encoder.layers[i].parameters():
            param.requires_grad = True
    in_features = model.heads.head.in_features
    model.heads.head = nn.Linear(in_features, num_classes)
    for param in model.heads.parameters():
        param.requires_grad = True
    return model


def notebook_optimizer(model: nn.Module) -> optim.Optimizer:
    """`optim.Adam(model.parameters(), lr=0.001)`, as the notebook."""
    return optim.Adam(model.parameters(), lr=0.001)


class NotebookTally:
    """The notebook's running loss and correct count, read with `.item()` on every step as it does."""

    def __init__(self) -> None:
        self.running_loss, self.correct = 0.0, 0

    def add(self, loss: Tensor, outputs: Tensor, labels: Tensor) -> None:
        """Count one batch: loss scalar, outputs (b, classes), labels (b,). Each `.item()` makes the host wait."""
        self.running_loss += loss.item()  # a host sync on every step
        _, predicted = torch.max(outputs.data, 1)  # (b,)
        self.correct += (predicted == labels).sum().item()  # and another


def notebook_train_steps(
    model: nn.Module,
    loader: DataLoader,
    steps: int,
    device: torch.device | str,
    optimizer: optim.Optimizer | None = None,
) -> float:
    """Run `steps` iterations of the notebook's `train_one_epoch` loop body and return images per second.

    The time includes drawing each batch from `loader` (the PIL work), as in the notebook. Pass the same
    `optimizer` across calls to keep Adam's state, as one long epoch would.
    """
    device = torch.device(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = optimizer if optimizer is not None else notebook_optimizer(model)
    model.train()
    tally = NotebookTally()

    def step(inputs: Tensor, labels: Tensor) -> None:
        inputs, labels = inputs.to(device), labels.to(device)  # (b, 3, S, S), (b,)
        optimizer.zero_grad()
        outputs = model(inputs)  # (b, classes)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        tally.add(loss, outputs, labels)

    return images_per_second(loader, steps, device, step)


def notebook_eval_steps(model: nn.Module, loader: DataLoader, steps: int, device: torch.device | str) -> float:
    """Run `steps` iterations of the notebook's `evaluate` loop (fp32, no_grad, `.item()` per batch); images/s."""
    device = torch.device(device)
    criterion = nn.CrossEntropyLoss()
    model.eval()
    tally = NotebookTally()

    def step(inputs: Tensor, labels: Tensor) -> None:
        inputs, labels = inputs.to(device), labels.to(device)  # (b, 3, S, S), (b,)
        outputs = model(inputs)  # (b, classes)
        tally.add(criterion(outputs, labels), outputs, labels)

    with torch.no_grad():
        return images_per_second(loader, steps, device, step)


def notebook_load_batches(loader: DataLoader, steps: int) -> float:
    """Draw `steps` batches from the notebook's loader and nothing else (the data pipeline alone); images/s."""
    return images_per_second(loader, steps, torch.device("cpu"), lambda inputs, labels: None)


def images_per_second(
    loader: DataLoader, steps: int, device: torch.device, step: Callable[[Tensor, Tensor], None]
) -> float:
    """Hand the first `steps` batches (images (b, 3, S, S), labels (b,)) of `loader` to `step`; images per second.

    The clock covers drawing each batch (the PIL work) and the device's queued work, as the notebook's loops did.
    """

    def loop() -> int:
        total = 0
        for i, (inputs, labels) in enumerate(loader):
            if i == steps:
                break
            step(inputs, labels)
            total += labels.size(0)
        return total

    total, seconds = timed(device, loop)
    if total == 0:
        raise ValueError("the loader yielded no batches: give it at least one batch of images")
    return total / seconds
