"""A model with a known shortcut, for testing explanations: its class is set only by a small marker at a known place.

Each image is a shapes image (a distracting shape on noise; its shape has nothing to do with the label) with an
8x8-pixel marker painted on top, covering exactly 4 of vit_tiny's 64 patches of 4x4 pixels (MARKER_PATCHES). The
marker's colour is the label; a fifth class has no marker, so every colour is evidence for its class rather than a
default the model falls back to. Nothing else in an image carries the label, so a trained model can only use the
marker: a faithful map ranks the 4 marker patches first, and removing them sends the prediction away from the label.

`train_shortcut_model()` trains it: 50 AdamW steps of 64 fresh images from the shipped fractal base, every block
training (about 7 s on one thread of a busy 2-core CPU); 100% test accuracy on seeds 0, 1, 2. Lesson 17, the bench's
explain row and the tests (tests/conftest.py's `shortcut` fixture, once per session) use it.

    shortcut = train_shortcut_model()
    marker_hits(explain(shortcut.model, shortcut.test_images, "scorecam"))   # (1.0, 1.0): it finds the marker
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vitlab.analysis.explain import METHODS, explain
from vitlab.data import BatchTransform
from vitlab.data.shapes import make_shapes
from vitlab.model import build_model

MARKER_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))  # class k's marker is colour k
NUM_CLASSES = len(MARKER_COLOURS) + 1  # the last class: no marker
GRID, PATCH = 8, 4  # vit_tiny at 32x32: an 8x8 grid of 4-pixel patches
MARKER_ROWS, MARKER_COLS = (5, 6), (2, 3)  # the marker's patches on the grid
MARKER_PATCHES = tuple(row * GRID + col for row in MARKER_ROWS for col in MARKER_COLS)  # (4,) row-major indices


@dataclass
class Shortcut:
    """The trained model and its test images (every one with a marker)."""

    model: torch.nn.Module  # vit_tiny in eval mode, NUM_CLASSES classes
    test_images: Tensor  # (N, 3, 32, 32) normalised inputs, all with a marker
    test_labels: Tensor  # (N,)
    accuracy: float  # on the test images
    seconds: float  # training time


def marker_images(count: int, seed: int, classes: int = NUM_CLASSES) -> tuple[Tensor, Tensor]:
    """uint8 images (count, 3, 32, 32) and their labels (count,), drawn from the first `classes` classes."""
    labels = torch.randint(classes, (count,), generator=torch.Generator().manual_seed(seed + 1))
    images = make_shapes(count, seed).images.clone()  # (count, 3, 32, 32)
    marked = labels < len(MARKER_COLOURS)  # (count,)
    colours = torch.tensor(MARKER_COLOURS, dtype=torch.uint8)[labels[marked]]  # (marked, 3)
    rows = slice(MARKER_ROWS[0] * PATCH, (MARKER_ROWS[-1] + 1) * PATCH)
    cols = slice(MARKER_COLS[0] * PATCH, (MARKER_COLS[-1] + 1) * PATCH)
    images[marked, :, rows, cols] = colours[:, :, None, None]
    return images, labels


def marker_mask(batch: int) -> Tensor:
    """(batch, 64) bool: True on the marker's patches."""
    mask = torch.zeros(batch, GRID * GRID, dtype=torch.bool)
    mask[:, list(MARKER_PATCHES)] = True
    return mask


def marker_hits(maps: Tensor) -> tuple[float, float]:
    """Share of maps (B, 64) whose top patch is a marker patch, and whose top 4 are exactly the marker's 4 patches."""
    top = maps.topk(len(MARKER_PATCHES), dim=1).indices  # (B, 4), most relevant first
    on_marker = marker_mask(maps.shape[0]).gather(1, top.cpu())  # (B, 4)
    return on_marker[:, 0].float().mean().item(), on_marker.all(dim=1).float().mean().item()


def hits_by_method(shortcut: Shortcut, methods: Sequence[str] = tuple(METHODS), count: int = 100,
                   device: torch.device | str = "cpu") -> dict[str, tuple[float, float]]:
    """Each method's `marker_hits` on the first `count` test images, the model and images moved to `device`."""
    images = shortcut.test_images[:count].to(device)  # (count, 3, 32, 32)
    return {name: marker_hits(explain(shortcut.model.to(device), images, name)) for name in methods}


def train_shortcut_model(seed: int = 0, steps: int = 50, batch: int = 64) -> Shortcut:
    """vit_tiny from the shipped base, every block training, for `steps` AdamW steps on fresh marker images."""
    start = time.perf_counter()
    transform = BatchTransform(32, train=False)
    with torch.random.fork_rng(devices=[]):  # torch's global generator is left as it was
        torch.manual_seed(seed)
        model = build_model("vit_tiny", num_classes=NUM_CLASSES, pretrained=True, trainable_blocks=4)
        images, labels = marker_images(steps * batch, seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        for step in range(steps):
            part = slice(step * batch, (step + 1) * batch)
            loss = torch.nn.functional.cross_entropy(model(transform(images[part])), labels[part])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    test_uint8, test_labels = marker_images(200, seed + 1000, classes=len(MARKER_COLOURS))  # marked images only
    test_images = transform(test_uint8)  # (200, 3, 32, 32)
    with torch.no_grad():
        accuracy = (model(test_images).argmax(-1) == test_labels).float().mean().item()
    return Shortcut(model, test_images, test_labels, accuracy, time.perf_counter() - start)
