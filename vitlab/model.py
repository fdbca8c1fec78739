"""Building the Vision Transformers vitlab studies: torchvision's ViTs (B/16, B/32, L/16, L/32, H/14) and a tiny
sibling of the same class (their shapes and weights: `vitlab.archs`).

Every model vitlab builds is a `torchvision.models.VisionTransformer`, so one capture code path
(`vitlab.capture`) serves them all. The recipe is the notebook's: load pretrained weights (torchvision's ImageNet
ones; for vit_tiny the base vitlab ships, pretrained offline on generated fractals by `vitlab.training.pretrain`), at
another
input size with their position embeddings interpolated to the new grid, swap the head
for a fresh `Linear(hidden, num_classes)`, freeze everything except the last `trainable_blocks` encoder blocks and
that head.
"""

from __future__ import annotations

import os
import urllib.error
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import VisionTransformer
from torchvision.models.vision_transformer import interpolate_embeddings

from vitlab.archs import (
    ARCHS,
    PRETRAINED,
    SPECS,
    check_image_size,
    native_image_size,
    num_blocks,
    spec,
    weights_cache_file,
    weights_enum,
)
from vitlab.errors import VitlabError, WeightsUnavailableError
from vitlab.integrity import check_torch_file
from vitlab.shipped import shipped_base_file

# The small model for laptops and CI (see vitlab.archs). An even head count keeps PyTorch's fused inference kernel in
# play (see vitlab.capture). Small on purpose: its pretraining must fit 30 minutes of a 2-core CPU, and every step it
# saves is a step more of learning there.
VIT_TINY_CONFIG = asdict(SPECS["vit_tiny"])

# What callers import from here: building a model, and the names of vitlab.archs that go with it.
__all__ = ["ARCHS", "PRETRAINED", "VIT_TINY_CONFIG", "build_model", "count_parameters", "fit_grid",
           "freeze_all_but_last", "load_state_dict_file", "num_blocks", "replace_head", "safe_torch_load",
           "stem_parameters", "train_mode", "weights_cache_file"]


def build_model(
    arch: str = "vit_b_16",
    num_classes: int = 100,
    pretrained: bool | str | os.PathLike = True,
    trainable_blocks: int = 3,
    progress: bool = True,
    image_size: int | None = None,
    weights: str | None = None,
) -> VisionTransformer:
    """Build a ViT with a fresh `num_classes` head and all but the last `trainable_blocks` blocks frozen.

    Args:
        arch: one of ARCHS: torchvision's "vit_b_16" (224x224 inputs, 14x14 grid of 16-px patches), "vit_b_32",
            "vit_l_16", "vit_l_32", "vit_h_14", or vitlab's "vit_tiny" (32x32 inputs, 8x8 grid).
        num_classes: size of the new classification head.
        pretrained: True loads the arch's pretrained weights: for torchvision's archs the `weights` file (from its
            cache under `TORCH_HOME`, else downloads), for vit_tiny the fractal-pretrained base shipped in the
            package (its SHA-256 checked, see `vitlab.shipped`). A path loads that state-dict file
            (`weights_only=True`); False keeps the random initialisation.
        trainable_blocks: how many of the last encoder blocks train. 0 trains only the head; the full block count
            trains everything (patch and position embeddings and the final norm too), as training from scratch.
        progress: show torchvision's download bar.
        image_size: input side in pixels, a multiple of the patch size. None: the weights' native size
            (`vitlab.archs.native_image_size`), where the model is exactly torchvision's. At another size the
            loaded position embeddings (1, 1 + g*g, D) are resized to the new grid (1, 1 + G*G, D) by torchvision's
            `interpolate_embeddings` (bicubic; the class token's row is kept as is).
        weights: torchvision's weights member name for `arch` (e.g. "IMAGENET1K_SWAG_E2E_V1"); None: the default.

    Returns:
        A `VisionTransformer` whose `heads.head` is `Linear(hidden_dim, num_classes)`; its `image_size`,
        `seq_length` and `encoder.pos_embedding` follow `image_size`.
    """
    shape = spec(arch)
    native = native_image_size(arch, weights)  # also refuses a weights name the arch does not have
    check_image_size(arch, image_size)
    size = native if image_size is None else image_size
    if arch == "vit_tiny" and pretrained is True:
        pretrained = shipped_base_file()  # raises WeightsUnavailableError, with the rebuild command, if damaged
    model = VisionTransformer(num_classes=1000, **{**asdict(shape), "image_size": size})
    if pretrained is True:
        _load_state_dict(model, fit_grid(_torchvision_state_dict(arch, weights, progress), model),
                         weights_cache_file(arch, weights))

    replace_head(model, num_classes)
    if pretrained not in (True, False):
        state_dict = load_state_dict_file(pretrained)
        if state_dict.get("heads.head.weight", torch.empty(0)).shape[:1] != (num_classes,):
            # A head for other classes (ImageNet's 1000, say): keep the body, start a fresh head.
            state_dict = {name: value for name, value in state_dict.items() if not name.startswith("heads.")}
            state_dict.update({f"heads.{name}": value for name, value in model.heads.state_dict().items()})
        _load_state_dict(model, fit_grid(state_dict, model), pretrained)

    freeze_all_but_last(model, trainable_blocks)
    return model




def fit_grid(state_dict: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """`state_dict` with its position embeddings resized to `model`'s grid when the two grids differ.

    (1, 1 + g*g, D) -> (1, 1 + G*G, D) with torchvision's own `interpolate_embeddings`; an equal grid, or a state
    dict without a square grid of position embeddings, is returned unchanged (a misfit is then reported on load).
    """
    loaded = state_dict.get("encoder.pos_embedding")
    if loaded is None or loaded.ndim != 3 or loaded.shape == model.encoder.pos_embedding.shape:
        return state_dict
    patches = loaded.shape[1] - 1
    if loaded.shape[0] != 1 or round(patches**0.5) ** 2 != patches or loaded.shape[2] != model.hidden_dim:
        return state_dict
    # interpolate_embeddings replaces the entry in the dict it is given: hand it a copy, not the caller's dict.
    return dict(interpolate_embeddings(model.image_size, model.patch_size, dict(state_dict)))


def _torchvision_state_dict(arch: str, weights: str | None, progress: bool) -> dict[str, torch.Tensor]:
    """torchvision's `weights` state dict for `arch`, read from its cache (downloaded into it first if missing)."""
    member = weights_enum(arch, weights)
    cache_file = weights_cache_file(arch, weights)
    if cache_file.exists():
        return load_state_dict_file(cache_file)  # weights_only=True, as every file vitlab reads
    try:
        # torchvision's own download (hash checked), then loaded without pickled code.
        return member.get_state_dict(progress=progress, check_hash=True, weights_only=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
        raise WeightsUnavailableError(
            f"Could not download the {arch} {member.name} weights ({error}).\n"
            f"torchvision looks for the file '{cache_file.name}' in {cache_file.parent} "
            f"(set TORCH_HOME to change where).\n"
            f"Fix: copy {cache_file.name} there from a machine with network ({member.url}), "
            f"or pass pretrained=PATH (--pretrained PATH) to a state-dict file, "
            f"or run offline with the small model: python -m vitlab.finetune --preset demo"
        ) from None


def safe_torch_load(path: Path, refuse: Callable[[Exception], VitlabError]) -> Any:
    """`torch.load` onto the CPU with `weights_only=True`: tensors and plain values, never pickled code.

    The file's CRC-32s are checked first (`vitlab.integrity`). Whatever that or torch raises (DamagedFileError,
    UnpicklingError for pickled code, RuntimeError or EOFError for a damaged or foreign file) becomes
    `refuse(error)`, the caller's VitlabError saying what to do next, raised without torch's traceback.
    Shared by `load_state_dict_file` and `vitlab.training.checkpoint.load_checkpoint`.
    """
    try:
        check_torch_file(path)  # torch.load does not check the CRC-32s: a flipped weight would load silently
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise refuse(error) from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state-dict file safely (`weights_only=True`: tensors and plain values, never pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise VitlabError(f"No weights file at {path}. Check the path, or use pretrained=True / False.")
    state_dict = safe_torch_load(path, lambda error: VitlabError(
        f"{path} is not a loadable state-dict file ({type(error).__name__}: {str(error)[:160]}). It is damaged "
        f"(truncated or changed on disk), not a PyTorch file, or holds pickled code, which vitlab refuses to run. "
        f"Use an intact copy, or re-save it with torch.save(model.state_dict(), path)."
    ))
    if isinstance(state_dict, dict) and isinstance(state_dict.get("model"), dict):
        state_dict = state_dict["model"]  # a vitlab training checkpoint: take its model weights
    if not isinstance(state_dict, dict):
        raise VitlabError(f"{path} holds a {type(state_dict).__name__}, not a state dict of tensors.")
    return state_dict


def _load_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[1] if "\n" in str(error) else str(error)
        raise VitlabError(
            f"The weights in {path} do not fit this architecture: {first_line.strip()}\n"
            f"Check that --arch matches the model the file was saved from."
        ) from None


def replace_head(model: VisionTransformer, num_classes: int) -> None:
    """Swap the classification head for a fresh Linear(width, num_classes), as the notebook does.

    The width is `hidden_dim`, or `representation_size` when the heads hold torchvision's representation layer
    (`heads.pre_logits`, kept: a Hugging Face pooler imported by `vitlab.external`).
    """
    model.heads.head = nn.Linear(model.representation_size or model.hidden_dim, num_classes)
    model.num_classes = num_classes


def freeze_all_but_last(model: VisionTransformer, trainable_blocks: int) -> None:
    """Freeze every parameter except the last `trainable_blocks` encoder blocks and the classification head.

    With `trainable_blocks == len(model.encoder.layers)` nothing is frozen (full training).
    """
    num_blocks = len(model.encoder.layers)
    if not 0 <= trainable_blocks <= num_blocks:
        raise VitlabError(
            f"trainable_blocks={trainable_blocks} is out of range: this model has {num_blocks} encoder blocks, "
            f"so choose 0 (head only) to {num_blocks} (everything)."
        )
    train_everything = trainable_blocks == num_blocks
    for param in model.parameters():
        param.requires_grad = train_everything
    for block in list(model.encoder.layers)[num_blocks - trainable_blocks :]:
        block.requires_grad_(True)
    model.heads.requires_grad_(True)


def stem_parameters(model: VisionTransformer) -> list[nn.Parameter]:
    """The parameters before the first encoder block: patch projection, class token and position embedding."""
    return [*model.conv_proj.parameters(), model.class_token, model.encoder.pos_embedding]


def train_mode(model: nn.Module) -> None:
    """`model.train()`, except that a ViT's frozen leading part (stem and frozen blocks) stays in eval mode.

    Why: with its defaults (no dropout, no batch norm) a torchvision ViT computes the same function in both modes,
    but in eval mode PyTorch runs its fused attention kernel in blocks that need no gradient. Measured on a 2-core
    CPU: a ViT-B/16 training step (last 3 blocks, batch 8) took 1.54 s instead of 1.99 s. Blocks that train keep
    their training mode, dropout included. Wrappers (DistributedDataParallel, torch.compile) are looked through.
    """
    model.train()
    inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper keeps the model here
    inner = getattr(inner, "module", inner)  # and DistributedDataParallel here
    if not isinstance(inner, VisionTransformer):
        return
    if any(p.requires_grad for p in stem_parameters(inner)):
        return  # the embeddings train: gradients flow through every block
    inner.conv_proj.eval()
    inner.encoder.dropout.eval()
    for block in inner.encoder.layers:
        if any(p.requires_grad for p in block.parameters()):
            break  # from the first block that trains onwards, everything stays in training mode
        block.eval()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return (trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
