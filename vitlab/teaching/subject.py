"""The model a lesson studies and the images it shows it: `study(settings)` picks them from the flags.

- default: vitlab's demo model, the shipped vit_tiny fashion base with its last 2 blocks and a new head fine-tuned
  on the Fashion-MNIST photos that ship with vitlab (10 classes of clothing, 28x28 gray photos on black, padded to
  32x32: 4x4 patches, an 8x8 grid). It is fine-tuned once (under a minute) and cached by
  `vitlab.training.demo.load_demo_model`, so no lesson retrains what another already trained. Its examples are the
  test photos of the dataset it learned, each with its garment's silhouette as the object mask.
- `--checkpoint PATH`: the model a vitlab run saved (`best.pt`), on its own dataset's test images; or a timm or
  Hugging Face ViT (`vitlab.import_vit`: timm's hub folder or a state dict with timm's config.json beside it, a
  save_pretrained folder), with its own class names and normalisation, on CIFAR-100 test images when they are under
  `--data-dir`, else on the shipped Fashion-MNIST photos resized to its input size.
- `--arch vit_b_16` (or vit_b_32, vit_l_16, vit_l_32, vit_h_14): torchvision's ViT with its default ImageNet
  weights and ImageNet head (so its predictions are ImageNet classes), on CIFAR-100 test images when they are under
  `--data-dir`, else on the shipped Fashion-MNIST test photos resized to the model's input size (224x224;
  ViT-H/14's SWAG weights: 518).
  Nothing is downloaded without a network; a missing file gives vitlab's message and exit code 2.

Lessons never name a dataset or a model themselves: what they study is this module's choice, so pointing the course
at another dataset or demo model is a change here, not in sixteen lessons.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.archs import weights_enum
from vitlab.data import IMAGENET_MEAN, IMAGENET_STD, BatchTransform, DataSplits, ImageDataset, load_dataset
from vitlab.errors import DataUnavailableError, VitlabError
from vitlab.external import import_classifier
from vitlab.external.build import Triple
from vitlab.model import build_model, weights_cache_file
from vitlab.teaching.flags import GENERATED_DATASETS, refuse_data_dir_for, studies_small_model, use_threads
from vitlab.training.checkpoint import load_checkpoint, load_trained_model
from vitlab.training.demo import demo_run_dir, load_demo_model
from vitlab.training.imported import is_external, model_name, statistics

SMALL_IMPORT_SIDE = 64  # an imported model at most this many pixels a side is sized for like the demo model


@dataclass
class Subject:
    """What a lesson studies: one model in eval mode and images to show it."""

    model: VisionTransformer
    arch: str  # vitlab's name for the architecture: "vit_tiny", "vit_b_16", ...
    name: str  # for titles and prose: "demo vit_tiny (shapes)", "ViT-B/16 (ImageNet)"
    classes: list[str]  # the model's output classes, index = logit
    splits: DataSplits  # where example (and, for lesson 9, training) images come from
    labels_match: bool  # True when splits' labels index `classes` (False: ImageNet model on CIFAR or shapes)
    small: bool  # the default laptop model: lessons size their work by it
    source: str  # "demo", "checkpoint", "imagenet" or "imported" (a timm or Hugging Face checkpoint)
    weights_path: Path | None = None  # the file the weights came from (demo's best.pt, --checkpoint)
    run_config: dict | None = None  # the vitlab run's settings (seed, arch, ...), None for the ImageNet model
    mean: Triple = IMAGENET_MEAN  # the model's input normalisation: ImageNet's, or an imported model's own
    std: Triple = IMAGENET_STD

    @property
    def examples(self) -> ImageDataset:
        """Test images: uint8 (N, 3, H, W), labels (N,), masks (N, H, W) where the dataset has them."""
        return self.splits.test

    @property
    def transform(self) -> BatchTransform:
        """uint8 images -> the model's normalised input at its own size (32 for vit_tiny, 224 for ViT-B/16), with
        its own mean and std."""
        return BatchTransform(self.model.image_size, train=False, mean=self.mean, std=self.std)

    def inputs(self, images: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) -> model input (B, 3, S, S)."""
        return self.transform(images)

    def pick(self, count: int) -> ImageDataset:
        """`count` test images for figures: on a labelled set, one of each class first, then the next ones."""
        labels = self.examples.labels
        firsts = [int((labels == c).nonzero()[0]) for c in labels.unique(sorted=True).tolist()]
        order = firsts[:count] + [i for i in range(len(labels)) if i not in firsts]
        return self.examples.subset(torch.tensor(order[:count]))

    def label_name(self, label: int) -> str:
        return self.splits.classes[label]

    def predicted_names(self, logits: Tensor) -> list[str]:
        """The predicted class name for each row of logits (B, classes)."""
        return [self.classes[i] for i in logits.argmax(dim=-1).tolist()]


def study(settings: argparse.Namespace) -> Subject:
    """The model and images the flags ask for (see the module docstring); trains the demo model on first use."""
    if settings.checkpoint is not None:
        subject = _from_checkpoint(Path(settings.checkpoint), settings)
        use_threads(settings, subject.small)  # known once the checkpoint is read
        return subject
    if studies_small_model(settings):
        return _demo()
    return _imagenet_model(settings.arch, settings)


def demo_run() -> tuple[VisionTransformer, DataSplits, Path]:
    """The shared demo model (eval mode; trained on first use), the splits it learned, and its best.pt."""
    model, splits = load_demo_model()  # says so when it trains
    return model.eval(), splits, demo_run_dir() / "best.pt"


def _demo() -> Subject:
    model, splits, best = demo_run()
    config = load_checkpoint(best)["config"]
    return Subject(model, config["arch"], f"demo {config['arch']} ({config['dataset']})", list(splits.classes), splits,
                   labels_match=True, small=True, source="demo", weights_path=best, run_config=config)


def _from_checkpoint(path: Path, args: argparse.Namespace) -> Subject:
    if is_external(str(path)):
        return _imported(path, args)
    model, checkpoint = load_trained_model(path)  # CheckpointError (a VitlabError) for a missing or bad file
    config = checkpoint["config"]
    name = f"{model_name(config)} from {path}"
    mean, std = statistics(config.get("imported"))
    refuse_data_dir_for(args, config["dataset"], name)
    if config["dataset"] in GENERATED_DATASETS:
        splits, matched = load_dataset(config["dataset"], seed=config["seed"]), True
    else:
        splits, matched = _files_or_photos(args.data_dir or config["data_dir"], config["dataset"])
    small = config["arch"] == "vit_tiny" or (config.get("imported") is not None
                                             and model.image_size <= SMALL_IMPORT_SIDE)
    return Subject(model, config["arch"], name, list(checkpoint["classes"]), splits, labels_match=matched,
                   small=small, source="checkpoint", weights_path=path, run_config=config, mean=mean, std=std)


def _imported(path: Path, args: argparse.Namespace) -> Subject:
    """A timm or Hugging Face ViT as it was saved: its head, class names and normalisation (`vitlab.import_vit`)."""
    try:
        imported = import_classifier(path, "a lesson", "--dataset fashion, then --checkpoint the run folder")
    except VitlabError as error:
        raise VitlabError(f"--checkpoint {error}") from None
    splits, _ = _files_or_photos(args.data_dir or "./data", "cifar100")
    return Subject(imported.model, "imported", f"{imported.name} ({imported.source})", imported.classes, splits,
                   labels_match=False, small=imported.image_size <= SMALL_IMPORT_SIDE, source="imported",
                   weights_path=path, mean=imported.mean, std=imported.std)


def _imagenet_model(arch: str, args: argparse.Namespace) -> Subject:
    """torchvision's ImageNet `arch` (default weights) with its 1000-class head, loaded through vitlab (clear errors,
    no pickles), at its weights' native input size."""
    cache_file = weights_cache_file(arch)
    if not cache_file.is_file():
        # Downloads when there is a network; offline it raises WeightsUnavailableError saying where the file goes.
        build_model(arch, num_classes=1000, pretrained=True, trainable_blocks=0)
    # The file's head has 1000 rows = num_classes, so build_model keeps it: predictions are ImageNet classes.
    model = build_model(arch, num_classes=1000, pretrained=cache_file, trainable_blocks=0)
    splits, _ = _files_or_photos(args.data_dir or "./data", "cifar100")
    classes = list(weights_enum(arch).meta["categories"])
    _, letter, patch = arch.split("_")  # "vit_b_16" -> "ViT-B/16"
    return Subject(model.eval(), arch, f"ViT-{letter.upper()}/{patch} (ImageNet)", classes, splits, labels_match=False,
                   small=False, source="imagenet", weights_path=cache_file)


def _files_or_photos(data_dir: str, name: str) -> tuple[DataSplits, bool]:
    """The dataset's images when they are on disk (never downloaded); else the Fashion-MNIST photos that ship with
    vitlab, with a note. -> (splits, found)"""
    try:
        return load_dataset(name, data_dir, download=False), True
    except DataUnavailableError:
        print(f"Note: no {name} under {data_dir} (pass --data-dir DIR); showing the Fashion-MNIST photos that ship "
              f"with vitlab instead, resized to the model's input size.")
        return load_dataset("fashion"), False
