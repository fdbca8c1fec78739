"""The notebook's way (vit-cifar100-notebook.md), kept so that the bench can time vitlab against it: PIL transforms
one image at a time in a `DataLoader` (`num_workers=0`), `vit_b_16` frozen but for the last 3 blocks and a new head,
`Adam(lr=1e-3)`, fp32, `.item()` on every step. Departures: uint8 NHWC images (what torchvision's CIFAR100 holds and
wraps in `Image.fromarray`, as `NotebookDataset` does), random weights, and no per-100-batch print."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms as transforms
from PIL import Image
from torch import Tensor, nn, optim
from torch.utils.data import DataLoader, Dataset
from torchvision.models import VisionTransformer, ViT_B_16_Weights, vit_b_16
from torchvision.transforms._presets import ImageClassification

from vitlab.bench.measure import NUM_CLASSES, Settings, timed
from vitlab.model import VIT_TINY_CONFIG

NOTEBOOK_MEAN, NOTEBOOK_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # its Normalize: ImageNet's statistics


def notebook_train_transform(image_size: int = 224, max_rotation_degrees: float = 10) -> transforms.Compose:
    """The notebook's training transform. `image_size` and the rotation exist only so tests can shrink them."""
    return transforms.Compose([transforms.Resize((image_size, image_size)), transforms.RandomHorizontalFlip(),
                               transforms.RandomRotation(max_rotation_degrees), transforms.ToTensor(),
                               transforms.Normalize(mean=NOTEBOOK_MEAN, std=NOTEBOOK_STD)])


def notebook_test_transform(image_size: int = 224) -> nn.Module:
    """`ViT_B_16_Weights.IMAGENET1K_V1.transforms()` (resize 256, crop 224; scaled alike for another size)."""
    if image_size == 224:
        return ViT_B_16_Weights.IMAGENET1K_V1.transforms()
    return ImageClassification(crop_size=image_size, resize_size=round(image_size * 256 / 224))


class NotebookDataset(Dataset):
    """Images uint8 (N, H, W, 3) and labels, served like torchvision's CIFAR100: PIL image -> transform, int label."""

    def __init__(self, images_uint8_nhwc: np.ndarray, labels: np.ndarray | list[int], transform) -> None:
        if images_uint8_nhwc.dtype != np.uint8 or images_uint8_nhwc.ndim != 4 or images_uint8_nhwc.shape[-1] != 3:
            raise ValueError(f"want uint8 images (N, H, W, 3), got {images_uint8_nhwc.dtype} {images_uint8_nhwc.shape}")
        self.data, self.targets, self.transform = images_uint8_nhwc, [int(label) for label in labels], transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = Image.fromarray(self.data[index])  # (H, W, 3) uint8 -> PIL, as torchvision's CIFAR100 does
        return self.transform(image), self.targets[index]  # (3, S, S) float, int


def notebook_loader(images_uint8_nhwc: np.ndarray, labels: np.ndarray | list[int], batch_size: int = 64, *,
                    train: bool = True, image_size: int = 224) -> DataLoader:
    """The notebook's `DataLoader`: its PIL transform per image, shuffled for training, `num_workers=0`."""
    transform = notebook_train_transform(image_size) if train else notebook_test_transform(image_size)
    return DataLoader(NotebookDataset(images_uint8_nhwc, labels, transform), batch_size=batch_size, shuffle=train)


def notebook_model(arch: str = "vit_b_16", num_classes: int = 100) -> VisionTransformer:
    """The notebook's surgery on random weights: all frozen but the last 3 blocks, a new head ("vit_tiny": tests)."""
    model = vit_b_16(weights=None) if arch == "vit_b_16" else VisionTransformer(num_classes=1000, **VIT_TINY_CONFIG)
    for param in model.parameters():
        param.requires_grad = False
    for i in range(-3, 0):
        for param in model.encoder.layers[i].parameters():
            param.requires_grad = True
    model.heads.head = nn.Linear(model.heads.head.in_features, num_classes)  # new, so trainable
    return model


def notebook_optimizer(model: nn.Module) -> optim.Optimizer:
    """`optim.Adam(model.parameters(), lr=0.001)`, as the notebook."""
    return optim.Adam(model.parameters(), lr=0.001)


def notebook_train_steps(model: nn.Module, loader: DataLoader, steps: int, device: torch.device | str,
                         optimizer: optim.Optimizer | None = None) -> float:
    """`steps` iterations of the notebook's training loop; images/s (one `optimizer` across calls: one long epoch)."""
    device, criterion, optimizer = torch.device(device), nn.CrossEntropyLoss(), optimizer or notebook_optimizer(model)
    model.train()
    running_loss, correct = 0.0, 0

    def step(inputs: Tensor, labels: Tensor) -> None:
        nonlocal running_loss, correct
        inputs, labels = inputs.to(device), labels.to(device)  # (b, 3, S, S), (b,)
        optimizer.zero_grad()
        outputs = model(inputs)  # (b, classes)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()  # a host sync on every step
        _, predicted = torch.max(outputs.data, 1)  # (b,)
        correct += (predicted == labels).sum().item()  # and another

    return images_per_second(loader, steps, device, step)


def notebook_eval_steps(model: nn.Module, loader: DataLoader, steps: int, device: torch.device | str) -> float:
    """`steps` iterations of the notebook's evaluation loop (no_grad, fp32, `.item()` per batch); images/s."""
    device, criterion = torch.device(device), nn.CrossEntropyLoss()
    model.eval()
    running_loss, correct = 0.0, 0

    def step(inputs: Tensor, labels: Tensor) -> None:
        nonlocal running_loss, correct
        inputs, labels = inputs.to(device), labels.to(device)  # (b, 3, S, S), (b,)
        outputs = model(inputs)  # (b, classes)
        running_loss += criterion(outputs, labels).item()
        _, predicted = torch.max(outputs.data, 1)  # (b,)
        correct += (predicted == labels).sum().item()

    with torch.no_grad():
        return images_per_second(loader, steps, device, step)


def notebook_load_batches(loader: DataLoader, steps: int) -> float:
    """Draw `steps` batches from the notebook's loader and nothing else (the data pipeline alone); images/s."""
    return images_per_second(loader, steps, torch.device("cpu"), lambda inputs, labels: None)


def images_per_second(loader: DataLoader, steps: int, device: torch.device,
                      step: Callable[[Tensor, Tensor], None]) -> float:
    """Hand `loader`'s first `steps` batches to `step`; images/s, the PIL work and the device's queued work included."""
    def loop() -> int:
        seen = 0
        for inputs, labels in itertools.islice(loader, steps):
            step(inputs, labels)
            seen += labels.size(0)
        return seen

    seen, seconds = timed(device, loop)
    if seen == 0:
        raise ValueError("the loader yielded no batches: give it at least one batch of images")
    return seen / seconds


def notebook_trainer(settings: Settings, images: np.ndarray, labels: np.ndarray,
                     batch_size: int) -> tuple[Callable[[int], float], nn.Module]:
    """The notebook's training loop and its model; one optimiser across calls, as in one long epoch."""
    torch.manual_seed(settings.seed)
    model = notebook_model(settings.arch, NUM_CLASSES).to(settings.device)
    optimizer, loader = notebook_optimizer(model), notebook_loader(images, labels, batch_size, train=True,
                                                                   image_size=settings.image_size)
    return (lambda steps: notebook_train_steps(model, loader, steps, settings.device, optimizer)), model
