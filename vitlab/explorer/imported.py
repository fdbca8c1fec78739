"""timm and Hugging Face checkpoints in the explorer's runs folder: listed, fenced, loaded with their class names.

    runs/vit-base-patch16-224/      # a save_pretrained folder (config.json, model.safetensors, preprocessor_config)
    runs/vit_small_dino/            # timm's hub folder (save_for_hf: config.json and the weights)

Every view of the explorer feeds a model ImageNet-normalised inputs (`BatchTransform`'s default), and an imported
model was trained on its own statistics (Hugging Face's 0.5, a timm pretrained_cfg's). Normalisation is a
per-channel affine map and the patch embedding a convolution whose patches never overlap nor pad, so the model is
re-expressed to take ImageNet's inputs instead (`expect_imagenet_inputs`): the same function, within float
rounding, without threading statistics through every view.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torchvision.models import VisionTransformer

from vitlab.data import IMAGENET_MEAN, IMAGENET_STD
from vitlab.errors import CheckpointError, VitlabError
from vitlab.explorer.runs_folder import is_inside
from vitlab.external import detect_format, import_classifier, import_files
from vitlab.external.build import Triple


def is_imported_checkpoint(path: Path) -> bool:
    """Whether `path` is a timm or Hugging Face checkpoint the explorer imports (a folder with its config.json, or a
    file `vitlab.external.detect_format` recognises): cheap, never raises."""
    return detect_format(path) is not None


def list_imported(root: Path) -> list[Path]:
    """Folders directly under `root` holding a timm or Hugging Face checkpoint, every file it reads inside `root`."""
    return [folder for folder in root.iterdir() if folder.is_dir() and is_inside(folder, root)
            and is_imported_checkpoint(folder) and _files_inside(folder, root)]


def _files_inside(path: Path, root: Path) -> bool:
    try:
        return all(is_inside(file, root) for file in import_files(path))
    except VitlabError:
        return False


def imported_stamp(path: Path) -> str:
    """A cache key naming the files an import of `path` reads and their modification times (ns)."""
    try:
        files = import_files(path)
    except VitlabError as error:
        raise CheckpointError(str(error)) from None
    return "imported:" + ";".join(f"{file.resolve()}:{file.stat().st_mtime_ns}" for file in files)


def check_inside(path: Path, root: Path) -> None:
    """Refuse an import whose files (a link to a weights blob, say) lie outside the runs folder."""
    if not _files_inside(path, root):
        raise CheckpointError(f"{path} reads files outside the runs folder {root} (links, or a shard elsewhere): "
                              f"copy the checkpoint's files themselves into {root}/.")


@torch.no_grad()
def expect_imagenet_inputs(model: VisionTransformer, mean: Triple, std: Triple) -> VisionTransformer:
    """A copy of `model` (which takes pixels normalised with `mean` and `std`) that takes ImageNet-normalised pixels.

    With x = (p - M) / S ImageNet's input and y = (p - m) / s the model's, y = x * S / s + (M - m) / s per channel,
    and conv_proj(y) = conv_proj'(x) with weights W * S / s (per input channel) and bias b + sum of W * (M - m) / s.
    """
    folded = copy.deepcopy(model)
    conv = folded.conv_proj  # weight (D, 3, P, P), bias (D,)
    scale = torch.tensor(IMAGENET_STD) / torch.tensor(std)  # (3,)
    shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)  # (3,)
    conv.bias += (conv.weight * shift[None, :, None, None]).sum(dim=(1, 2, 3))  # (D,)
    conv.weight *= scale[None, :, None, None]
    return folded.eval()


def load_imported(path: Path) -> tuple[VisionTransformer, list[str], str]:
    """(model taking ImageNet-normalised inputs, class names, one line describing it) for the checkpoint at `path`.

    Raises:
        CheckpointError: the files do not import (the importer's message), or the model has no head.
    """
    try:
        imported = import_classifier(path, "the explorer", "--out runs/NAME, then choose that run")
    except VitlabError as error:
        raise CheckpointError(str(error)) from None
    model = imported.model
    description = (f"{imported.name} imported from {imported.source} ({len(model.encoder.layers)} blocks, "
                   f"{model.encoder.layers[0].self_attention.num_heads} heads, {model.patch_size}-px patches, "
                   f"{imported.image_size} px, {len(imported.classes)} classes), as saved.")
    return expect_imagenet_inputs(model, imported.mean, imported.std), imported.classes, description
