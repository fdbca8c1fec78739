"""The architectures vitlab builds, known without building them: shapes, pretrained weights, input sizes, files.

Every torchvision Vision Transformer (ViT-B/16, B/32, L/16, L/32, H/14) and vitlab's own `vit_tiny`. Each torchvision
arch has one or more weights (`torchvision.models.ViT_*_Weights` members, named as there: `IMAGENET1K_V1`,
`IMAGENET1K_SWAG_E2E_V1`, `IMAGENET1K_SWAG_LINEAR_V1`); each weights file has its own native input size
(`meta["min_size"]`: 224 for IMAGENET1K_V1 and the SWAG linear-probe weights, 384 / 512 / 518 for the SWAG
end-to-end weights of B/16, L/16, H/14) and its own file name in torchvision's cache under `TORCH_HOME`.

Why a table here rather than building a model to ask it: a ViT-H/14 takes 2.5 GB and seconds to build, and the
command line must check `--trainable-blocks`, `--image-size` and `--weights` before any work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.models import WeightsEnum, get_model_weights

from vitlab.cli import refuse
from vitlab.errors import VitlabError


@dataclass(frozen=True)
class ArchSpec:
    """The shape of one ViT: torchvision's builder arguments (vit_tiny: vitlab's own, see VIT_TINY_CONFIG)."""

    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    image_size: int  # torchvision's builder default (224), or vit_tiny's 32: the size without pretrained weights


# The values of torchvision.models.vision_transformer's vit_* builders (tests/test_archs.py checks them).
SPECS: dict[str, ArchSpec] = {
    "vit_b_16": ArchSpec(16, 12, 12, 768, 3072, 224),
    "vit_b_32": ArchSpec(32, 12, 12, 768, 3072, 224),
    "vit_l_16": ArchSpec(16, 24, 16, 1024, 4096, 224),
    "vit_l_32": ArchSpec(32, 24, 16, 1024, 4096, 224),
    "vit_h_14": ArchSpec(14, 32, 16, 1280, 5120, 224),
    # The small model for laptops and CI: 32x32 inputs cut into 4x4 patches (an 8x8 grid), 4 narrow blocks of 4 heads.
    "vit_tiny": ArchSpec(4, 4, 4, 64, 128, 32),
}
ARCHS = tuple(SPECS)
TORCHVISION_ARCHS = tuple(arch for arch in ARCHS if arch != "vit_tiny")
# The weights `pretrained=True` loads for each arch: torchvision's ImageNet-trained ones, vit_tiny's shipped base.
PRETRAINED = {**{arch: "imagenet" for arch in TORCHVISION_ARCHS}, "vit_tiny": "fractal"}
# Every named base `--pretrained` takes for each arch: vit_tiny has two shipped ones (vitlab.shipped), the fractal
# base and the fashion base made from it, which the demo fine-tunes.
BASES = {**{arch: ("imagenet",) for arch in TORCHVISION_ARCHS}, "vit_tiny": ("fractal", "fashion")}
BASE_NAMES = ("imagenet", "fractal", "fashion")

LARGEST_IMAGE = 1024  # pixels per side; ViT-H/14's SWAG weights, the largest torchvision has, take 518


def spec(arch: str) -> ArchSpec:
    """The shape of `arch`, or a VitlabError naming the archs there are."""
    if arch not in SPECS:
        raise VitlabError(f"Unknown arch {arch!r}. Choose one of: {', '.join(ARCHS)}.")
    return SPECS[arch]


def num_blocks(arch: str) -> int:
    """How many encoder blocks `arch` has, known without building it (12 for vit_b_16, 4 for vit_tiny)."""
    return spec(arch).num_layers


def weights_names(arch: str) -> tuple[str, ...]:
    """The torchvision weights `arch` has, by member name (vit_tiny has none: its base ships with vitlab)."""
    spec(arch)
    if arch == "vit_tiny":
        return ()
    return tuple(member.name for member in get_model_weights(arch))


def default_weights(arch: str) -> str | None:
    """torchvision's default weights for `arch`: IMAGENET1K_V1, except ViT-H/14 (IMAGENET1K_SWAG_E2E_V1)."""
    return get_model_weights(arch).DEFAULT.name if arch != "vit_tiny" else None


def weights_enum(arch: str, weights: str | None = None) -> WeightsEnum:
    """The torchvision weights member `weights` of `arch` (None: the default), or a VitlabError listing them."""
    names = weights_names(arch)
    if not names:
        raise VitlabError(f"{arch} has no torchvision weights (its pretrained base ships with vitlab): drop --weights.")
    name = default_weights(arch) if weights is None else weights
    if name not in names:
        raise VitlabError(f"--weights {name} is not allowed for {arch}: it must be one of {', '.join(names)} "
                          f"(for example --weights {default_weights(arch)}).")
    return get_model_weights(arch)[name]


def native_image_size(arch: str, weights: str | None = None) -> int:
    """The input side the weights were trained at (`meta["min_size"]`): 224 for vit_b_16, 384 with SWAG_E2E; 32 for
    vit_tiny. `--image-size` left out means this size, where the model is exactly torchvision's."""
    if arch == "vit_tiny":
        return spec(arch).image_size
    return weights_enum(arch, weights).meta["min_size"][0]


def image_size_range(arch: str) -> tuple[int, int]:
    """The `--image-size` values allowed for `arch`: multiples of its patch size from a 2x2 grid to LARGEST_IMAGE."""
    return side_range(spec(arch).patch_size)


def side_range(patch_size: int) -> tuple[int, int]:
    """The image sides a ViT of `patch_size`-px patches takes: multiples of it from a 2x2 grid to LARGEST_IMAGE."""
    return 2 * patch_size, LARGEST_IMAGE // patch_size * patch_size


def weights_cache_file(arch: str = "vit_b_16", weights: str | None = None) -> Path:
    """Where torchvision looks for `arch`'s `weights` file before downloading (honours `TORCH_HOME`).

    Each weights file has its own name: vit_b_16-c867db91.pth (IMAGENET1K_V1), vit_b_16_swag-9ac1b537.pth, ...
    """
    file_name = os.path.basename(weights_enum(arch, weights).url)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def check_weights(arch: str, weights: str | None) -> None:
    """`--weights` names one of `arch`'s torchvision weights (vit_tiny has none: its base ships with vitlab)."""
    if weights is None and arch == "vit_tiny":
        return
    weights_enum(arch, weights)  # the VitlabError lists the arch's weights and gives an example


def check_image_size(arch: str, image_size: Any) -> None:
    """`--image-size` is a multiple of the arch's patch size, from a 2x2 grid of patches to 1024 px (None: native).

    The one place the rule lives: the command line and `build_model` both call it (`check_side` for a model
    vitlab knows by its patch size alone, an imported one).
    """
    check_side(spec(arch).patch_size, image_size, arch)


def check_side(patch_size: int, image_size: Any, whose: str) -> None:
    """`--image-size` fits patches of `patch_size` px (the model `whose`): see `check_image_size`."""
    if image_size is None:
        return
    low, high = side_range(patch_size)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size % patch_size \
            or not low <= image_size <= high:
        example = patch_size * max(2, 112 // patch_size)  # 112 px for 16-px patches: a 7x7 grid, 4x fewer tokens
        raise refuse("image_size", image_size, f"a multiple of {patch_size} ({whose}'s patch size) from {low} to "
                     f"{high}", f"--image-size {example}")
