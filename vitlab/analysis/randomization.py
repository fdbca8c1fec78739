"""Model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

A map that explains the model must change when the weights it explains are replaced by random ones. The check
re-initialises a copy of the model cascading from the top, each level keeping the ones before it random:

    head        the classification head and the final LayerNorm
    block L     ... and the last encoder block
    ...         ... block by block down to block 1
    embeddings  ... and the patch projection, class token and position embedding: nothing trained is left

and compares each image's map on the copy with its map on the trained model by Spearman rank correlation. A map
whose correlation stays near 1 shows the image, not the model: an edge detector stays at exactly 1. Class-agnostic
attention maps do not move when only the head is random, since attention does not depend on it.

The baseline beside it: the correlation of the trained maps with seeded random maps (about 0).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.explain import MapFunction, Target, borrowed, check_images, explain, resolve_target
from vitlab.analysis.localization import random_maps
from vitlab.capture_grad import autograd_on, grad_ready


@dataclass(frozen=True)
class RandomizationResult:
    """Spearman correlation of each image's map before and after each level of re-initialisation."""

    levels: tuple[str, ...]  # what is random at each level, cumulative: "head", "block L", ..., "embeddings"
    correlations: Tensor  # (levels, B) Spearman correlation of each image's trained and randomised maps
    random_baseline: float  # mean Spearman correlation of the trained maps with seeded random maps (about 0)

    @property
    def mean(self) -> Tensor:
        """(levels,): the correlation at each level, averaged over images."""
        return self.correlations.mean(dim=1)


def randomization_check(model: VisionTransformer, images: Tensor, method: str | MapFunction, target: Target = None,
                        seed: int = 0) -> RandomizationResult:
    """Adebayo et al.'s cascading randomisation of `model` for one method's maps.

    Args:
        images: (B, 3, S, S) normalised inputs.
        method: a name in `vitlab.analysis.explain.METHODS`, or a function (model, images, targets) -> (B, patches).
        target: None for each image's prediction by the trained model, one class, or one per image (B,). The same
            classes are explained on every randomised copy.
        seed: seeds the random weights (torch's global generator is untouched) and the random-map baseline.
    Returns:
        A `RandomizationResult` with len(model.encoder.layers) + 2 levels. `model` itself is not changed.
    """
    check_images(model, images)
    with autograd_on():  # copies made under inference mode could not be explained with gradients
        images = grad_ready(images)  # (B, 3, S, S)
        with borrowed(model):
            targets = resolve_target(model, images, target)  # (B,)
        trained = explain(model, images, method, targets)  # (B, patches)
        fresh = random_initialisation(model, seed)
        randomised = copy.deepcopy(model)
        levels, correlations = [], []
        for level, prefixes in cascade(len(model.encoder.layers)):
            _copy_weights(fresh, randomised, prefixes)
            levels.append(level)
            correlations.append(spearman(trained, explain(randomised, images, method, targets)))  # (B,)
    baseline = spearman(trained.cpu(), random_maps(trained.shape, seed=seed)).mean().item()
    return RandomizationResult(levels=tuple(levels), correlations=torch.stack(correlations).cpu(),
                               random_baseline=baseline)


def cascade(num_blocks: int) -> list[tuple[str, tuple[str, ...]]]:
    """The levels, top first, each with the state-dict prefixes it re-initialises (on top of the levels before)."""
    levels = [("head", ("heads.", "encoder.ln."))]
    for index in reversed(range(num_blocks)):
        levels.append((f"block {index + 1}", (f"encoder.layers.encoder_layer_{index}.",)))
    levels.append(("embeddings", ("conv_proj.", "class_token", "encoder.pos_embedding")))
    return levels


def random_initialisation(model: VisionTransformer, seed: int) -> VisionTransformer:
    """A `VisionTransformer` of `model`'s shape, initialised as torchvision initialises one, from `seed`.

    The head is torchvision's zeros there, which would make every logit 0: it gets `nn.Linear`'s own
    initialisation instead, as `vitlab.build_model` gives a new head.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = VisionTransformer(
            image_size=model.image_size, patch_size=model.patch_size, num_layers=len(model.encoder.layers),
            num_heads=model.encoder.layers[0].num_heads, hidden_dim=model.hidden_dim, mlp_dim=model.mlp_dim,
            num_classes=model.num_classes, representation_size=model.representation_size,
        )
        fresh.heads.head.reset_parameters()
    parameter = next(model.parameters())
    return fresh.to(parameter.device, parameter.dtype)


def _copy_weights(source: VisionTransformer, target: VisionTransformer, prefixes: tuple[str, ...]) -> None:
    """Copy the tensors whose state-dict names start with one of `prefixes` from `source` into `target`."""
    state = {name: value for name, value in source.state_dict().items() if name.startswith(prefixes)}
    with torch.no_grad():
        target.load_state_dict(state, strict=False)


def spearman(first: Tensor, second: Tensor) -> Tensor:
    """Spearman rank correlation of each row: (B, P), (B, P) -> (B,).

    Tied values share their average rank. A constant row ranks nothing, so its correlation is defined as 0.
    """
    first_ranks, second_ranks = _ranks(first.double()), _ranks(second.double().to(first.device))  # (B, P) each
    first_ranks = first_ranks - first_ranks.mean(dim=1, keepdim=True)
    second_ranks = second_ranks - second_ranks.mean(dim=1, keepdim=True)
    norms = first_ranks.norm(dim=1) * second_ranks.norm(dim=1)  # (B,)
    covariance = (first_ranks * second_ranks).sum(dim=1)  # (B,)
    return torch.where(norms > 0, covariance / norms.clamp(min=torch.finfo(norms.dtype).tiny), 0.0).float()


def _ranks(values: Tensor) -> Tensor:
    """(B, P) -> (B, P): 1-based ranks within each row, ties at their average rank."""
    smaller = (values[:, None, :] < values[:, :, None]).sum(dim=-1)  # (B, P): entries below each value
    equal = (values[:, None, :] == values[:, :, None]).sum(dim=-1)  # (B, P): ties, itself included
    return smaller + (equal + 1) / 2
