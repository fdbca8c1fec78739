"""Does attention find the object? Object masks turned into patches, a random-map baseline, and the demo's scores.

The synthetic shapes come with exact object masks and the Fashion-MNIST photos with their garments' silhouettes
(the clothes lie on black), so "does this map point at the object?" can be answered:

    objects = object_patches(masks, geometry(model))      # (B, H, W) bool -> (B, patches) bool
    pointing_game(maps, objects)                          # share of maps whose maximum is on the object
    pointing_game(random_maps(maps.shape), objects)       # what a map that knows nothing scores

The scores (`pointing_game`, `attention_mass_ratio`) take any (B, patches) map: a class-token row, rollout, a
class-specific map or a random one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.attention import rollout
from vitlab.capture import Geometry, capture, geometry
from vitlab.data import BatchTransform, ImageDataset

# Rollout as the demo scores it: mean over heads, and the weakest half of each row's links discarded, which keeps
# the residual stream's uniform mixing from washing the map out (plain rollout is reported beside it).
DEMO_ROLLOUT = {"head_fusion": "mean", "discard_ratio": 0.5}


def masks_at(masks: Tensor, geo: Geometry) -> Tensor:
    """Object masks (B, H, W) bool at the model's input size (B, S, S).

    The shapes are stored at 32x32, but ViT-B/16 sees them resized to 224x224, so its 16-px patches must be
    compared with masks resized the same way (nearest, so a mask stays a mask).
    """
    return F.interpolate(masks[:, None].float(), size=geo.image_size, mode="nearest")[:, 0] > 0.5


def object_patches(masks: Tensor, geo: Geometry) -> Tensor:
    """(B, H, W) bool masks -> (B, patches) bool: True where a patch of the model's input holds object pixels."""
    return patch_coverage(masks_at(masks, geo), geo.patch_size) > 0


def random_maps(shape: torch.Size | tuple[int, ...], seed: int = 0) -> Tensor:
    """Uniformly random maps of `shape`, e.g. (B, patches): the baseline every localisation score is read against.

    Seeded with a private generator, so the baseline is the same on every run and torch's global state is untouched.
    """
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def localization_scores(
    model: VisionTransformer, dataset: ImageDataset, batch_size: int = 250, device: torch.device | str = "cpu",
    transform: BatchTransform | None = None,
) -> dict[str, float | dict]:
    """How well attention rollout finds the object, on a dataset with object masks (shapes, fashion).

    `transform` turns the images into the model's input (None: at its size, with ImageNet's normalisation; a model
    with statistics of its own, an imported one, passes its evaluation transform).

    An object patch is a patch holding at least one object pixel.

    Returns:
        pointing_game: share of images whose rollout maximum falls on an object patch.
        attention_mass_ratio: rollout mass on object patches / the object's share of patches, averaged
            (1.0 is chance).
        random_pointing_game: the pointing game of uniformly random maps, the baseline to beat.
        pointing_game_no_discard, attention_mass_ratio_no_discard: the same for plain rollout (discard_ratio 0).
        rollout: the rollout settings of the headline figures.
    """
    if dataset.masks is None:
        raise ValueError("localization_scores needs a dataset with object masks (shapes, fashion, fashion_mnist)")
    model.eval()
    geo = geometry(model)
    transform = (BatchTransform(model.image_size, train=False) if transform is None else transform).to(device)
    maps, plain_maps, objects = [], [], []
    for start in range(0, len(dataset), batch_size):
        images = dataset.images[start : start + batch_size].to(device)
        with capture(model) as captured:
            model(transform(images))
        maps.append(rollout(captured.attentions, **DEMO_ROLLOUT).cpu())  # (b, patches)
        plain_maps.append(rollout(captured.attentions).cpu())  # (b, patches)
        objects.append(object_patches(dataset.masks[start : start + batch_size], geo).cpu())  # (b, patches)
    all_maps, all_plain, all_objects = torch.cat(maps), torch.cat(plain_maps), torch.cat(objects)
    return {
        "pointing_game": pointing_game(all_maps, all_objects),
        "attention_mass_ratio": attention_mass_ratio(all_maps, all_objects),
        "random_pointing_game": pointing_game(random_maps(all_maps.shape), all_objects),
        "pointing_game_no_discard": pointing_game(all_plain, all_objects),
        "attention_mass_ratio_no_discard": attention_mass_ratio(all_plain, all_objects),
        "rollout": dict(DEMO_ROLLOUT),
    }


def patch_coverage(masks: Tensor, patch_size: int) -> Tensor:
    """Share of each patch's pixels that belong to the object: (B, H, W) bool -> (B, patches) in [0, 1]."""
    coverage = F.avg_pool2d(masks[:, None].float(), patch_size)  # (B, 1, grid, grid)
    return coverage.flatten(1)  # (B, patches)


def pointing_game(maps: Tensor, object_patches: Tensor) -> float:
    """Share of images whose map maximum falls on an object patch.

    Args:
        maps: (B, patches) relevance or rollout maps.
        object_patches: (B, patches) bool, True where the patch holds object pixels.
    """
    hits = object_patches.gather(1, maps.argmax(dim=1, keepdim=True))  # (B, 1)
    return hits.float().mean().item()


def attention_mass_ratio(maps: Tensor, object_patches: Tensor) -> float:
    """Map mass on object patches divided by the object's share of patches, averaged over images.

    1.0 is what a map that ignores the object scores on average; higher means attention concentrates on it.
    """
    maps = maps.clamp(min=0)
    total = maps.sum(dim=1).clamp(min=torch.finfo(maps.dtype).tiny)  # an all-zero map has no mass anywhere
    mass_on_object = (maps * object_patches).sum(dim=1) / total  # (B,)
    object_share = object_patches.float().mean(dim=1)  # (B,)
    return (mass_on_object / object_share).mean().item()
