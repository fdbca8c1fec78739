"""Model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

A map that explains the model must change when the weights it explains are replaced by random ones. The check
re-initialises a copy of the model cascading from the top, each level keeping the ones before it random:

    head        the classification head and the final LayerNorm
    block L     ... and the last encoder block
    ...         ... the blocks below it, in at most 3 groups (`cascade`): block by block for vit_tiny's 4 blocks
                (block 3, block 2, block 1), four at a time for ViT-B/16's 12 (blocks 8-11, 4-7, 1-3)
    embeddings  ... and the patch projection, class token and position embedding: nothing trained is left

and compares each image's map on the copy with its map on the trained model by Spearman rank correlation. A map
whose correlation stays near 1 shows the image, not the model: an edge detector stays at exactly 1. Class-agnostic
attention maps do not move when only the head is random, since attention does not depend on it.

Grouping keeps the cascade top-down and complete (head first, the last block alone, nothing trained at the end)
while its cost stays at six explanations per method whatever the depth: a level per block would cost ViT-B/16
fourteen, and a gradient-free CAM's explanation is hundreds of forward passes.

The baseline beside it: the correlation of the trained maps with seeded random maps (about 0).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.explain import MapFunction, Target, borrowed, check_images, explain, resolve_target
from vitlab.analysis.localization import random_maps
from vitlab.capture_grad import autograd_on, grad_ready

BLOCK_GROUPS = 3  # the blocks below the last are randomised in at most this many groups (see `cascade`)


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
        A `RandomizationResult` with one level per entry of `cascade(len(model.encoder.layers))`. `model` itself is
        not changed.
    """
    return randomization_checks(model, images, {"method": method}, target, seed)["method"]


def randomization_checks(model: VisionTransformer, images: Tensor, methods: Mapping[str, str | MapFunction],
                         target: Target = None, seed: int = 0,
                         trained: Mapping[str, Tensor] | None = None) -> dict[str, RandomizationResult]:
    """`randomization_check` for several methods at once: one randomised copy per level serves every method.

    Args:
        methods: name -> a method, as `randomization_check` takes it.
        trained: name -> the method's maps (B, patches) on the trained model for these targets, when already
            computed (`vitlab.analysis.report` has them); missing ones are computed.
        Others as `randomization_check`.
    Returns:
        name -> its `RandomizationResult`; each equals `randomization_check` for that method alone.
    """
    check_images(model, images)
    with autograd_on():  # copies made under inference mode could not be explained with gradients
        images = grad_ready(images)  # (B, 3, S, S)
        with borrowed(model):
            targets = resolve_target(model, images, target)  # (B,)
        given = dict(trained or {})
        maps = {name: given[name] if name in given else explain(model, images, method, targets)
                for name, method in methods.items()}  # each (B, patches)
        randomised = copy.deepcopy(model)
        fresh = random_initialisation(model, seed)
        levels, correlations = [], {name: [] for name in methods}
        for level, prefixes in cascade(len(model.encoder.layers)):
            _copy_weights(fresh, randomised, prefixes)
            levels.append(level)
            for name, method in methods.items():
                correlations[name].append(spearman(maps[name], explain(randomised, images, method, targets)))  # (B,)
    return {name: RandomizationResult(
        levels=tuple(levels), correlations=torch.stack(correlations[name]).cpu(),
        random_baseline=spearman(maps[name].cpu(), random_maps(maps[name].shape, seed=seed)).mean().item(),
    ) for name in methods}


def cascade(num_blocks: int, groups: int = BLOCK_GROUPS) -> list[tuple[str, tuple[str, ...]]]:
    """The levels, top first, each with the state-dict prefixes it re-initialises (on top of the levels before).

    The head (with the final LayerNorm), the last block alone, the blocks below it in at most `groups` groups of
    equal size (top groups first, one block each when there are few), then the embeddings."""
    block = "encoder.layers.encoder_layer_{}."
    levels = [("head", ("heads.", "encoder.ln.")), (f"block {num_blocks}", (block.format(num_blocks - 1),))]
    below = list(reversed(range(num_blocks - 1)))  # 0-based, top first
    size = max(1, -(-len(below) // groups))  # ceil: 11 blocks below in 3 groups -> 4, 4, 3
    for start in range(0, len(below), size):
        group = below[start:start + size]  # top first, e.g. [10, 9, 8, 7]
        name = f"block {group[0] + 1}" if len(group) == 1 else f"blocks {group[-1] + 1}-{group[0] + 1}"
        levels.append((name, tuple(block.format(index) for index in group)))
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
