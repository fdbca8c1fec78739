"""Bring your own ViT: a timm or Hugging Face checkpoint as the torchvision VisionTransformer vitlab studies.

    imported = import_vit("vit-base-patch16-224")             # a Hugging Face save_pretrained folder
    imported = import_vit("dino.safetensors", model_name="vit_small_patch16_224.dino")   # a timm state dict
    imported.model                                            # torchvision VisionTransformer, eval mode, float32
    inputs = imported.batch_transform()(images)               # uint8 (B, 3, H, W) -> (B, 3, S, S), its normalisation
    with capture(imported.model) as cap:                      # every vitlab analysis works on it
        logits = imported.model(inputs)                       # (B, num_classes): the source library's, within 1e-5

What it reads:
- timm: a state dict (.safetensors, .pth, .bin) of the vit_{tiny,small,base,large}_patch{16,32}_{224,384} family
  (AugReg, original, DINO, MAE, SAM weights alike) with `model_name`, or timm's hub folder (`save_for_hf` /
  `push_to_hub`: config.json with architecture, model_args and pretrained_cfg, beside model.safetensors or
  pytorch_model.bin). Mapping: `vitlab.external.timm_vit`.
- Hugging Face: a `save_pretrained` folder of ViTForImageClassification or ViTModel (config.json, model.safetensors
  or pytorch_model.bin, optionally sharded; preprocessor_config.json for the normalisation). Mapping:
  `vitlab.external.huggingface`.

Safetensors files are read with the safetensors library, .pth/.bin with `torch.load(weights_only=True)`: opening
someone's checkpoint never runs their code. A model whose function torchvision's ViT cannot compute (distillation
or register tokens, average pooling, layer scale, qk-norm, a pre-norm, attention pooling, relative positions, an
activation other than exact GELU, ...) is refused with a VitlabError that names what does not fit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.data.transforms import BatchTransform
from vitlab.errors import VitlabError
from vitlab.external.build import Triple, build_vit, read_tensors
from vitlab.external.huggingface import translate as from_huggingface
from vitlab.external.timm_vit import translate as from_timm

Source = Literal["timm", "huggingface"]
SUFFIXES = (".safetensors", ".pth", ".bin", ".pt")  # state-dict files import_vit reads
# A folder's weights, by preference: safetensors (no pickle at all) first; sharded checkpoints through their index.
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")
WHAT_IT_READS = ("Give a timm ViT (a .safetensors/.pth/.bin state dict with model_name, or timm's hub folder: "
                 "config.json + model.safetensors) or a Hugging Face ViT (a save_pretrained folder).")


@dataclass(frozen=True)
class ImportedViT:
    """An imported model and what studying it needs: its input size, normalisation and class names."""

    model: VisionTransformer  # eval mode, float32; heads.head is nn.Identity() for a headless model
    source: Source  # the library the checkpoint came from
    name: str  # "vit_small_patch16_224.dino" (timm's name and tag), or the Hugging Face folder's name
    path: Path  # what was imported: the file or folder given
    image_size: int  # pixels per side the position embeddings were made for
    mean: Triple  # per-channel normalisation of pixels in [0, 1], as the model was trained
    std: Triple
    classes: list[str] | None  # one name per output unit; None for a headless model (it returns features)
    notes: tuple[str, ...] = ()  # each value vitlab chose because the files did not say it, and why

    @property
    def num_classes(self) -> int:
        """Output units of the head; 0 for a headless model, whose forward returns (B, hidden) features."""
        return len(self.classes) if self.classes is not None else 0

    def batch_transform(self, train: bool = False) -> BatchTransform:
        """vitlab's batch transform at this model's image size, with its mean and std."""
        return BatchTransform(self.image_size, train=train, mean=self.mean, std=self.std)


def import_vit(path: str | os.PathLike, model_name: str | None = None) -> ImportedViT:
    """Import a timm or Hugging Face ViT checkpoint as a torchvision VisionTransformer with the same function.

    Args:
        path: a timm state-dict file, timm's hub folder, or a Hugging Face save_pretrained folder (or its weights
            file, with config.json beside it).
        model_name: timm only: the name the weights were made with ("vit_base_patch16_224", with or without a
            pretrained tag like ".dino"); needed when no timm config.json lies beside the file.

    Returns:
        An ImportedViT whose model's logits (or features, headless) equal the source library's forward within 1e-5.

    Raises:
        VitlabError: a missing path, files in neither format, an unknown timm name, or a model that does not map.
    """
    path = Path(path).expanduser()
    source, folder, config, tensors = _open(path)
    if source == "timm":
        translation = from_timm(tensors, config, model_name)
    elif model_name is not None:
        raise VitlabError(f"model_name={model_name!r} names a timm model, but {path} is a Hugging Face ViT, which its "
                          f"config.json describes. Drop model_name.")
    else:
        preprocessor = _read_json(folder / "preprocessor_config.json")
        translation = from_huggingface(tensors, config, preprocessor, name=folder.resolve().name)
    stored = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()}
                    - {"float32"})
    dtype_notes = (f"Weights stored as {', '.join(stored)}: converted to float32.",) if stored else ()
    return ImportedViT(
        model=build_vit(translation), source=source, name=translation.name, path=path,
        image_size=translation.image_size, mean=translation.mean, std=translation.std, classes=translation.classes,
        notes=translation.notes + dtype_notes,
    )


def import_classifier(path: str | os.PathLike, reader: str, next_step: str) -> ImportedViT:
    """`import_vit(path)` for a reader of predictions (the explorer, a lesson): a headless model is refused too.

    Args:
        reader: who reads the predictions, as the message names it ("the explorer", "a lesson").
        next_step: what follows `python -m vitlab.finetune --pretrained PATH` in the message's remedy.
    Raises:
        VitlabError: the importer's refusal, prefixed with `path`; or a model without a classification head.
    """
    try:
        imported = import_vit(path)
    except VitlabError as error:
        raise VitlabError(f"{path}: {error}") from None
    if imported.classes is None:
        raise VitlabError(f"{path}: {imported.name} has no classification head (it returns features), so {reader} "
                          f"has no predictions to show. Give it a head first: python -m vitlab.finetune "
                          f"--pretrained {path} {next_step}.")
    return imported


def detect_format(path: str | os.PathLike) -> Source | None:
    """"timm", "huggingface", or None (a torchvision or vitlab file, a vitlab run folder, anything else or nothing).

    Cheap, for routing a path before loading it: a folder by its config.json alone, a file by its tensor names
    alone (a safetensors header, or torch.load's memory map: no tensor is read). Never raises.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        try:
            return _config_format(_read_json(path / "config.json"))
        except VitlabError:
            return None
    if not path.is_file() or path.suffix not in SUFFIXES:
        return None
    return _keys_format(_tensor_names(path))


def _open(path: Path) -> tuple[Source, Path, dict[str, Any] | None, dict[str, Tensor]]:
    """(source, folder of the config files, config.json or None, the tensors) for a folder or a weights file."""
    if path.is_dir():
        config = _read_json(path / "config.json")
        source = _config_format(config)
        if source is None:
            raise VitlabError(f"{path} is a folder without a timm or Hugging Face config.json (a vitlab run folder "
                              f"loads with --checkpoint / load_trained_model). {WHAT_IT_READS}")
        return source, path, config, read_folder_weights(path)
    if not path.is_file():
        raise VitlabError(f"No file or folder at {path}. Check the path. {WHAT_IT_READS}")
    if path.suffix not in SUFFIXES:
        raise VitlabError(f"{path} is not a weights file vitlab reads ({', '.join(SUFFIXES)}). {WHAT_IT_READS}")
    tensors = read_tensors(path)
    source = _keys_format(set(tensors))
    if source is None:
        raise VitlabError(f"{path} holds neither timm's nor Hugging Face's ViT names (its first: "
                          f"{', '.join(list(tensors)[:3])}). A torchvision or vitlab state dict loads with "
                          f"build_model(pretrained=PATH) (--pretrained PATH). {WHAT_IT_READS}")
    config = _read_json(path.parent / "config.json")
    config = config if _config_format(config) == source else None
    if source == "huggingface" and config is None:
        raise VitlabError(f"{path} holds a Hugging Face ViT's weights without their config.json beside them: the head "
                          f"count, LayerNorm eps and activation are only there. Import the save_pretrained folder.")
    return source, path.parent, config, tensors


def read_folder_weights(folder: Path) -> dict[str, Tensor]:
    """The tensors of a hub folder: its first WEIGHTS_FILES entry, every shard an index lists merged."""
    files = weights_files(folder)
    return {name: value for file in files if not file.name.endswith(".index.json")
            for name, value in read_tensors(file).items()}


def weights_files(folder: Path) -> list[Path]:
    """The weights files an import of `folder` reads: its first WEIGHTS_FILES entry, or an index and its shards.

    Raises:
        VitlabError: no weights file, or an index that lists no shards, shards elsewhere, or missing shards.
    """
    for file_name in WEIGHTS_FILES:
        if not (folder / file_name).is_file():
            continue
        if not file_name.endswith(".index.json"):
            return [folder / file_name]
        weight_map = (_read_json(folder / file_name) or {}).get("weight_map") or {}
        shards = sorted(set(weight_map.values()))
        if not shards or any(Path(shard).name != shard or not (folder / shard).is_file() for shard in shards):
            raise VitlabError(f"{folder / file_name} lists no shards, shards outside its folder, or shards that are "
                              f"missing. Use the index save_pretrained wrote, with every shard beside it.")
        return [folder / file_name, *(folder / shard for shard in shards)]
    raise VitlabError(f"{folder} has a config.json but no weights: none of {', '.join(WEIGHTS_FILES)}. Copy the "
                      f"weights file into the folder.")


def import_files(path: str | os.PathLike) -> list[Path]:
    """Every file `import_vit(path)` reads (weights, config.json, preprocessor_config.json where they are), for
    keys that must change when one of them does. Raises a VitlabError where `weights_files` does."""
    path = Path(path).expanduser()
    folder = path if path.is_dir() else path.parent
    weights = weights_files(path) if path.is_dir() else [path]
    return [*weights, *(folder / name for name in ("config.json", "preprocessor_config.json")
                        if (folder / name).is_file())]


def needs_model_name(path: str | os.PathLike) -> bool:
    """Whether `path` is a timm state-dict file without timm's config.json beside it: then only a `model_name`
    says which ViT it is (the head count is in no tensor). Cheap, as `detect_format`; never raises."""
    path = Path(path).expanduser()
    if path.is_dir() or detect_format(path) != "timm":
        return False
    try:
        return _config_format(_read_json(path.parent / "config.json")) != "timm"
    except VitlabError:
        return True


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`; None when there is no such file."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise VitlabError(f"{path} is unreadable as JSON ({error}). Use the file the library wrote.") from None
    if not isinstance(value, dict):
        raise VitlabError(f"{path} holds a {type(value).__name__}, not a JSON object. Use the file the library wrote.")
    return value


def _config_format(config: dict[str, Any] | None) -> Source | None:
    """Hugging Face's config.json has model_type; timm's has architecture; a vitlab run's config.json neither."""
    if config is None:
        return None
    if isinstance(config.get("model_type"), str):
        return "huggingface"
    return "timm" if isinstance(config.get("architecture"), str) else None


def _keys_format(names: set[str]) -> Source | None:
    if "patch_embed.proj.weight" in names:
        return "timm"
    hf = "embeddings.patch_embeddings.projection.weight"
    return "huggingface" if hf in names or f"vit.{hf}" in names else None


def _tensor_names(path: Path) -> set[str]:
    """The names in a state-dict file, without reading its tensors; empty if it cannot be read that way."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as file:
                return set(file.keys())
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a damaged, foreign or legacy-format file: not routed here; its own loader says why
        return set()
    for wrapper in ("model", "state_dict"):  # a vitlab checkpoint keeps its weights under "model"
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    return {name for name in loaded if isinstance(name, str)} if isinstance(loaded, dict) else set()
