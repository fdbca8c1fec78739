"""Where the explorer's model comes from: the demo model, a vitlab run's checkpoint (or a timm or Hugging Face
checkpoint, `vitlab.explorer.imported`), or the ImageNet ViT-B/16.

    loaded = load_model_source("demo")             # LoadedModel: model (eval), class names, images to browse
    loaded.images.images[0]                        # uint8 (3, 32, 32), from the demo's test photos
    load_model_source("checkpoint", "runs/demo")   # a run folder (its best.pt) or a .pt file
    load_model_source("checkpoint", "runs/vit-hf") # a save_pretrained or timm hub folder: its own class names
    load_model_source("imagenet")                  # only from torchvision's local cache: nothing is downloaded
    load_model_source("base")                      # the pretrained vit_tiny base the demo was fine-tuned from

Each source comes with a key for caches (`source_stamp`: it names the files behind the model, so a changed file
makes a new key), one line describing it, and the test split of its dataset to browse
(never downloaded: when it is missing the page says so and asks for an upload). Every failure is a VitlabError
whose message says what to do next. The per-image work on a loaded model is vitlab.explorer.views's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.models import VisionTransformer, ViT_B_16_Weights

from vitlab.data import ImageDataset, load_dataset
from vitlab.errors import CheckpointError, DataUnavailableError, VitlabError, WeightsUnavailableError
from vitlab.explorer.imported import (
    check_inside,
    expect_imagenet_inputs,
    imported_stamp,
    is_imported_checkpoint,
    list_imported,
    load_imported,
)
from vitlab.explorer.runs_folder import DEFAULT_RUNS, is_inside, within_runs
from vitlab.model import build_model, weights_cache_file
from vitlab.shipped import shipped_base_file
from vitlab.training.checkpoint import checkpoint_file, load_trained_model
from vitlab.training.config import PRESETS, make_config
from vitlab.training.demo import default_cache_dir, load_demo_model
from vitlab.training.imported import model_name, statistics

# Where the explorer's model comes from: the sidebar's choices. "base" is the pretrained base the demo was
# fine-tuned from, for comparing with it (its head is untrained: the page labels it so, see _load_base_source).
SOURCES = ("demo", "base", "checkpoint", "imagenet")
BASE_HEAD_SEED = 0  # the base's head is random (it never saw a label): seeded, so every load gives the same one


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to explore, with what the page needs around it. Shared between reruns: never mutate."""

    model: VisionTransformer  # eval mode
    classes: list[str]  # class names, index = output unit
    key: str  # identifies this model in caches (a model object is not hashed): its source_stamp
    description: str  # one line for the page: what the model is and what it was trained on
    images: ImageDataset | None  # images to browse (a test split), or None: uploads only
    images_note: str  # one line: which images these are, or why there are none
    head_trained: bool = True  # False: the head is random, so its class names and probabilities mean nothing


def imagenet_available() -> bool:
    """Whether torchvision's ImageNet ViT-B/16 weights are in its cache (nothing is ever downloaded here)."""
    return weights_cache_file().is_file()


def imagenet_hint() -> str:
    """One line on how to make the ImageNet ViT-B/16 available offline."""
    cache_file = weights_cache_file()
    return (
        f"Copy {cache_file.name} (from {ViT_B_16_Weights.IMAGENET1K_V1.url}) into {cache_file.parent}, "
        f"or set TORCH_HOME to a folder holding hub/checkpoints/{cache_file.name}."
    )


def list_runs(root: str | Path = DEFAULT_RUNS) -> list[Path]:
    """Run folders under `root` that hold a checkpoint (best.pt or checkpoint.pt), and folders holding a timm or
    Hugging Face checkpoint, newest first.

    A symlinked folder (or checkpoint) that leads out of `root` is left out: the explorer reads only under it.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [d for d in root.iterdir() if d.is_dir() and is_inside(d, root) and any(
        (d / name).is_file() and is_inside(d / name, root) for name in ("best.pt", "checkpoint.pt"))]
    runs += [folder for folder in list_imported(root) if folder not in runs]
    return sorted(runs, key=lambda d: d.stat().st_mtime, reverse=True)


def resolve_checkpoint(path: str | Path, root: str | Path | None = None) -> Path:
    """A run folder means its best.pt (else checkpoint.pt); a file is itself. Raises CheckpointError if missing.

    With `root` (the app's runs folder) the path must lie under it, symlinks followed (vitlab.explorer.runs_folder):
    a path outside is a CheckpointError that says so. Without, any path is read (library use).
    """
    if root is None:
        return Path(path).expanduser() if is_imported_checkpoint(Path(path)) else checkpoint_file(path, "study")
    root = Path(root)
    found = within_runs(path, root)
    if is_imported_checkpoint(found):
        check_inside(found, root)
        return found
    file = checkpoint_file(found, "study")
    return within_runs(file, root)  # best.pt itself may be a link that leads out


def source_stamp(source: str, checkpoint: Path | None = None) -> str:
    """A key naming the files behind a source's model: a cache keyed by it reloads when they change.

    Args:
        source: one of SOURCES.
        checkpoint: for source="checkpoint", the file resolve_checkpoint found.
    Returns:
        "demo:<cache folder>", "checkpoint:<file>:<modification time in ns>", "imagenet:<weights file>" or
        "base:<shipped weights file>" (its name holds its SHA-256's first digits).
    """
    if source == "demo":
        return f"demo:{default_cache_dir()}"
    if source == "checkpoint":
        if checkpoint is None:
            raise CheckpointError(_CHOOSE_A_CHECKPOINT)
        if is_imported_checkpoint(checkpoint):
            return imported_stamp(checkpoint)
        return f"checkpoint:{checkpoint.resolve()}:{checkpoint.stat().st_mtime_ns}"
    if source == "imagenet":
        return f"imagenet:{weights_cache_file()}"
    if source == "base":
        return f"base:{shipped_base_file(name=DEMO_BASE)}"
    raise _unknown_source(source)


def load_model_source(source: str, checkpoint_path: str | Path | None = None) -> LoadedModel:
    """Load the model for one of SOURCES.

    Args:
        source: "demo" (vit_tiny on photos of clothing, trained on first use and cached; see
            vitlab.training.demo), "checkpoint" (a vitlab run, `checkpoint_path`), "imagenet" (torchvision's
            ViT-B/16, only from its local cache), or "base" (the pretrained vit_tiny vitlab ships that the demo
            starts from, with a random head: `head_trained` is False).
        checkpoint_path: a run folder or .pt file, for source="checkpoint".

    Raises:
        CheckpointError: the checkpoint is missing, not a vitlab checkpoint, holds pickled code, or does not fit.
        WeightsUnavailableError: source="imagenet" and the weights are not in torchvision's cache, or
            source="base" and the shipped base is missing or damaged.
    """
    if source == "demo":
        return _load_demo_source()
    if source == "checkpoint":
        if checkpoint_path is None or not str(checkpoint_path).strip():
            raise CheckpointError(_CHOOSE_A_CHECKPOINT)
        return _load_checkpoint_source(resolve_checkpoint(str(checkpoint_path).strip()))
    if source == "imagenet":
        return _load_imagenet_source()
    if source == "base":
        return _load_base_source()
    raise _unknown_source(source)


DEMO_BASE = PRESETS["demo"]["pretrained"]  # the shipped base the demo fine-tunes: "fashion"
_CHOOSE_A_CHECKPOINT = "Choose a run under runs/ or type the path of a checkpoint."


def _unknown_source(source: str) -> VitlabError:
    return VitlabError(f"Unknown model source {source!r}. Choose one of: {', '.join(SOURCES)}.")


def _load_demo_source() -> LoadedModel:
    model, splits = load_demo_model()  # trained on first use, then read from the cache
    blocks, heads = len(model.encoder.layers), model.encoder.layers[0].self_attention.num_heads
    return LoadedModel(
        model=model.eval(), classes=list(splits.classes), key=source_stamp("demo"),
        description=f"Demo: a tiny ViT ({blocks} blocks, {heads} heads, {model.patch_size}-px patches), vitlab's "
        f"pretrained base with its last blocks fine-tuned on photos of clothing (Fashion-MNIST), offline.",
        images=splits.test, images_note=f"Fashion-MNIST test photos, {len(splits.test)} images",
    )


def _load_imagenet_source() -> LoadedModel:
    if not imagenet_available():
        raise WeightsUnavailableError(f"The ImageNet ViT-B/16 weights are not on this machine. {imagenet_hint()}")
    # A state-dict path whose head already has 1000 outputs keeps that head (build_model keeps ImageNet's).
    model = build_model("vit_b_16", num_classes=1000, pretrained=weights_cache_file(), progress=False)
    images, note = _cifar_or_photos()
    return LoadedModel(
        model=model.eval(), classes=list(ViT_B_16_Weights.IMAGENET1K_V1.meta["categories"]),
        key=source_stamp("imagenet"),
        description="torchvision's ViT-B/16 trained on ImageNet (1000 classes), from the local weights cache.",
        images=images, images_note=note,
    )


def _load_base_source() -> LoadedModel:
    # The demo's own settings pick the same test photos the demo model is browsed on.
    demo = make_config({"preset": "demo"})
    splits = load_dataset(demo.dataset, seed=demo.seed, subset=demo.subset, progress=False)
    with torch.random.fork_rng(devices=[]):  # a seeded head without touching anyone's random state
        torch.manual_seed(BASE_HEAD_SEED)
        model = build_model("vit_tiny", num_classes=len(splits.classes), progress=False,
                            pretrained=shipped_base_file(name=DEMO_BASE))
    blocks, heads = len(model.encoder.layers), model.encoder.layers[0].self_attention.num_heads
    return LoadedModel(
        model=model.eval(), classes=list(splits.classes), key=source_stamp("base"),
        description=f"Base: vitlab's tiny ViT ({blocks} blocks, {heads} heads) pretrained without labels (on "
        f"generated fractals, then on the photos), before the demo fine-tuned it. It never saw a label: its head is "
        f"random, so the class names and "
        f"probabilities mean nothing; its attention shows what pretraining alone learned.",
        images=splits.test, images_note=f"Fashion-MNIST test photos (the demo's), {len(splits.test)} images",
        head_trained=False,
    )


def _load_checkpoint_source(path: Path) -> LoadedModel:
    if is_imported_checkpoint(path):
        return _load_imported_source(path)
    # load_trained_model raises CheckpointError for missing, foreign, unsafe (pickled code) and incomplete files.
    model, checkpoint = load_trained_model(path)
    config, classes = checkpoint["config"], list(checkpoint["classes"])
    if config.get("imported") is not None:  # a run of an imported model: its own statistics, folded in
        model = expect_imagenet_inputs(model, *statistics(config["imported"]))
    dataset = config["dataset"]
    images, note = _browse_images(
        dataset, config.get("data_dir", "./data"), seed=config.get("seed", 42), subset=config.get("subset"),
        val_size=config.get("val_size", 5000),
    )
    accuracy = checkpoint.get("val_acc")
    return LoadedModel(
        model=model, classes=classes, key=source_stamp("checkpoint", path),
        description=f"Checkpoint {path}: {model_name(config)} trained on {dataset}, epoch {checkpoint.get('epoch')}"
        + (f", validation accuracy {accuracy:.1%}." if isinstance(accuracy, float) else "."),
        images=images, images_note=note,
    )


def _load_imported_source(path: Path) -> LoadedModel:
    """A timm or Hugging Face checkpoint as saved: its head and class names, on CIFAR-100 or else the shapes."""
    model, classes, description = load_imported(path)
    images, note = _cifar_or_photos()
    return LoadedModel(model=model, classes=classes, key=source_stamp("checkpoint", path),
                       description=f"Checkpoint {path}: {description}", images=images, images_note=note)


def _cifar_or_photos() -> tuple[ImageDataset, str]:
    """CIFAR-100's test split under ./data, for a model whose own data is unknown; else the Fashion-MNIST photos that
    ship with vitlab, which still give something to look at offline."""
    images, note = _browse_images("cifar100", "./data")
    if images is None:
        images, _ = _browse_images("fashion")
        note = "no CIFAR-100 under ./data, so the Fashion-MNIST photos that ship with vitlab: or upload a photo"
    return images, note


def _browse_images(dataset: str, data_dir: str = "./data", **options: Any) -> tuple[ImageDataset | None, str]:
    """The test split of `dataset` (never downloaded), or None and one line saying why not."""
    names = {"cifar100": "CIFAR-100", "cifar10": "CIFAR-10", "shapes": "shapes", "folder": "image folder",
             "fashion": "Fashion-MNIST (shipped)", "fashion_mnist": "Fashion-MNIST"}
    try:
        splits = load_dataset(dataset, data_dir, download=False, progress=False, **options)
    except DataUnavailableError:
        return None, f"no {names.get(dataset, dataset)} images under {data_dir}: upload an image"
    return splits.test, f"{names.get(dataset, dataset)} test set, {len(splits.test)} images"
