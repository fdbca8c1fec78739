"""Linear probes by depth: how much of the label can a straight line read off each block's tokens?

    features = features_by_depth(model, images)             # .cls, .mean_patch: (blocks, N, hidden)
    probe = fit_probe(features.cls[2], labels, num_classes)  # multinomial logistic regression on block 3's class token
    probe_accuracy(probe, test_features.cls[2], test_labels) # share of held-out images it gets right
    results = probes_by_depth(model, train_images, train_labels, test_images, test_labels)
    results.cls, results.mean_patch                          # (blocks,) held-out accuracy, one per block

A probe (Alain & Bengio 2016) is a small classifier trained on frozen features; the model is not changed. A linear
one asks whether the information is there in a form a single linear layer (like the model's own head) can use.
Features are standardised with the TRAINING images' mean and standard deviation only, so nothing about the test
images leaks into the probe. The loss, cross-entropy plus a small L2 penalty on the weights, is strictly convex,
so full-batch L-BFGS from zero weights finds the same optimum every time: the probe is deterministic, no seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.capture import capture_forward
from vitlab.capture_grad import autograd_on, grad_ready
from vitlab.errors import VitlabError


@dataclass(frozen=True)
class ProbeConfig:
    """How a probe is fitted."""

    weight_decay: float = 1e-3  # L2 penalty on the weights (not the bias): keeps separable data from diverging
    max_iterations: int = 200  # L-BFGS iterations on the full batch (each uses a few function evaluations)
    tolerance: float = 1e-7  # stop when the gradient's largest entry falls below this


@dataclass(frozen=True)
class DepthFeatures:
    """Per-block token summaries of N images."""

    cls: Tensor  # (blocks, N, hidden): the class token's state after each block
    mean_patch: Tensor  # (blocks, N, hidden): the mean over patch tokens after each block

    @property
    def num_blocks(self) -> int:
        return self.cls.shape[0]

    def block(self, index: int) -> tuple[Tensor, Tensor]:
        """(cls (N, hidden), mean_patch (N, hidden)) after block `index` (0-based), checked against the range."""
        if not 0 <= index < self.num_blocks:
            raise VitlabError(f"block index {index} is out of range: this model has {self.num_blocks} blocks, "
                              f"so choose 0 to {self.num_blocks - 1} (0-based).")
        return self.cls[index], self.mean_patch[index]


@dataclass(frozen=True)
class Probe:
    """A fitted linear classifier on standardised features: logits = ((x - mean) / std) @ weight.T + bias."""

    weight: Tensor  # (classes, D)
    bias: Tensor  # (classes,)
    mean: Tensor  # (D,) of the training features
    std: Tensor  # (D,) of the training features, constant dimensions set to 1

    def logits(self, features: Tensor) -> Tensor:
        """(N, D) -> (N, classes)."""
        return ((features - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, features: Tensor) -> Tensor:
        """(N, D) -> (N,) predicted class."""
        return self.logits(features).argmax(dim=-1)


@dataclass(frozen=True)
class ProbeResults:
    """Held-out accuracy of one probe per block, on the class token and on the mean patch token."""

    cls: Tensor  # (blocks,) accuracy in [0, 1]
    mean_patch: Tensor  # (blocks,)
    chance: float  # accuracy of always guessing the most common test class
    num_train: int
    num_test: int


def _require_vit(model: object) -> None:
    if not isinstance(model, VisionTransformer):
        raise VitlabError(f"probes read torchvision VisionTransformer models, got {type(model).__name__}. Build one "
                          f"with vitlab.build_model(...) or load a vitlab checkpoint.")


def features_by_depth(model: VisionTransformer, images: Tensor, batch_size: int = 64) -> DepthFeatures:
    """Each block's class-token state and mean patch token for model-ready images (N, 3, S, S), in batches.

    The model runs in eval mode under no_grad (its mode is restored). States are block outputs, before the
    final LayerNorm that the head applies.
    """
    _require_vit(model)
    if images.ndim != 4 or len(images) == 0:
        raise VitlabError(f"features_by_depth needs a batch of images (N, 3, H, W) with N >= 1, got shape "
                          f"{tuple(images.shape)}.")
    if batch_size < 1:
        raise VitlabError(f"batch_size must be at least 1, got {batch_size}.")
    was_training = model.training
    model.eval()
    cls_parts, patch_parts = [], []
    try:
        with torch.no_grad():
            for first in range(0, len(images), batch_size):
                _, captured = capture_forward(model, images[first : first + batch_size])
                states = torch.stack(captured.hidden_states)  # (blocks, B, tokens, hidden)
                cls_parts.append(states[:, :, 0])  # (blocks, B, hidden)
                patch_parts.append(states[:, :, 1:].mean(dim=2))  # (blocks, B, hidden)
    finally:
        model.train(was_training)
    return DepthFeatures(cls=torch.cat(cls_parts, dim=1), mean_patch=torch.cat(patch_parts, dim=1))


def _check_labelled(features: Tensor, labels: Tensor, what: str) -> None:
    if features.ndim != 2 or len(features) == 0:
        raise VitlabError(f"{what}: features must be (N, D) with N >= 1, got shape {tuple(features.shape)}.")
    if labels.shape != (len(features),):
        raise VitlabError(f"{what}: labels must be (N,) = ({len(features)},), one per feature row, got shape "
                          f"{tuple(labels.shape)}.")


def fit_probe(features: Tensor, labels: Tensor, num_classes: int, config: ProbeConfig | None = None) -> Probe:
    """Fit multinomial logistic regression on features (N, D) with labels (N,) in [0, num_classes).

    Minimises mean cross-entropy + weight_decay / 2 * |W|^2 by full-batch L-BFGS (strong Wolfe line search) from
    zero weights, on features standardised with their own (training) mean and standard deviation.
    """
    config = config or ProbeConfig()
    _check_labelled(features, labels, "fit_probe")
    if num_classes < 2 or labels.min() < 0 or labels.max() >= num_classes:
        raise VitlabError(f"fit_probe: labels must lie in 0 to num_classes - 1 with num_classes >= 2; got labels "
                          f"{int(labels.min())} to {int(labels.max())} and num_classes {num_classes}.")
    with autograd_on():  # callers may sit in torch.no_grad() (lessons do) or torch.inference_mode()
        x = grad_ready(features.detach()).double()  # float64: the optimum is then the same on every machine
        mean = x.mean(dim=0)  # (D,)
        std = x.std(dim=0, correction=0)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))  # a constant dimension stays 0 after centring
        x = (x - mean) / std  # (N, D)
        weight = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=config.max_iterations,
                                      tolerance_grad=config.tolerance, line_search_fn="strong_wolfe")
        targets = grad_ready(labels)

        def loss_and_gradient() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight.T + bias, targets) + 0.5 * config.weight_decay * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(loss_and_gradient)
    dtype = features.dtype
    return Probe(weight.detach().to(dtype), bias.detach().to(dtype), mean.to(dtype), std.to(dtype))


def probe_accuracy(probe: Probe, features: Tensor, labels: Tensor) -> float:
    """Share of rows of features (N, D) whose predicted class equals labels (N,)."""
    _check_labelled(features, labels, "probe_accuracy")
    return (probe.predict(features) == labels).double().mean().item()


def probes_by_depth(
    model: VisionTransformer,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    num_classes: int | None = None,
    config: ProbeConfig | None = None,
    batch_size: int = 64,
) -> ProbeResults:
    """Fit one probe per block on the training images' class tokens and mean patch tokens; score on the test images.

    Images are model-ready (N, 3, S, S); labels (N,). `num_classes` defaults to the largest label + 1.
    """
    _require_vit(model)
    for images, labels, what in ((train_images, train_labels, "training"), (test_images, test_labels, "test")):
        if len(images) == 0 or labels.shape != (len(images),):
            raise VitlabError(f"probes_by_depth: the {what} set needs N >= 1 images and N labels, got "
                              f"{len(images)} images and labels of shape {tuple(labels.shape)}.")
    if num_classes is None:
        num_classes = max(int(train_labels.max()), int(test_labels.max())) + 1
    train = features_by_depth(model, train_images, batch_size)
    test = features_by_depth(model, test_images, batch_size)
    scores = {"cls": [], "mean_patch": []}
    for name, scored in scores.items():
        for block in range(train.num_blocks):
            probe = fit_probe(getattr(train, name)[block], train_labels, num_classes, config)
            scored.append(probe_accuracy(probe, getattr(test, name)[block], test_labels))
    chance = torch.bincount(test_labels, minlength=num_classes).max().item() / len(test_labels)
    return ProbeResults(cls=torch.tensor(scores["cls"]), mean_patch=torch.tensor(scores["mean_patch"]),
                        chance=chance, num_train=len(train_images), num_test=len(test_images))
