"""What the lessons in lessons/ share: the command line, the model a lesson studies, and how it prints and saves.

A lesson's `main` uses four names from here, inside a fifth that wraps it:

    @run_lesson                                           # a VitlabError becomes one line on stderr and exit code 2
    def main(argv: Sequence[str] | None = None) -> int:
        args, subject = start(__file__, __doc__, argv)    # the flags, and the model to study with its test images
        explain(f"Model: {subject.name} ...")             # prose, wrapped to 100 columns
        save(figure, args.out, "figure.png")              # a PNG under --out, and a line saying where
        print_questions(__doc__)                          # the 'Questions' section of the lesson's docstring
        return 0

Which model `start` loads:
- default: vitlab's demo model, the shipped fractal-pretrained vit_tiny with its last 2 blocks and a new head
  fine-tuned on the synthetic `shapes` (4 classes, 32x32 images, 4x4 patches, an 8x8 grid). It is fine-tuned once
  (under 30 s) and cached by `vitlab.training.demo.load_demo_model`, so no lesson retrains what another already trained.
  Its examples are shapes test images, which come with object masks.
- `--checkpoint PATH`: the model a vitlab run saved (`best.pt`), on its own dataset's test images.
- `--arch vit_b_16` (or vit_b_32, vit_l_16, vit_l_32, vit_h_14): torchvision's ViT with its default ImageNet
  weights and ImageNet head (so its predictions are ImageNet classes), on CIFAR-100 test images when they are under
  `--data-dir`, else on shapes images resized to the model's input size (224x224; ViT-H/14's SWAG weights: 518).
  Nothing is downloaded without a network; a missing file gives vitlab's message and exit code 2.

Importing a lesson runs nothing: no model is loaded, nothing is computed or written until `main()` runs.
"""

from __future__ import annotations

import argparse
import functools
import textwrap
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.archs import ARCHS, weights_enum
from vitlab.cli import Parser, Rule, command, folder_to_write, number_flag
from vitlab.data import BatchTransform, DataSplits, ImageDataset, load_dataset
from vitlab.errors import CheckpointError, DataUnavailableError, VitlabError
from vitlab.model import build_model, weights_cache_file
from vitlab.plotting import save_figure
from vitlab.training.checkpoint import checkpoint_file, load_checkpoint, load_trained_model
from vitlab.training.demo import default_cache_dir, load_demo_model


@dataclass
class Subject:
    """What a lesson studies: one model in eval mode and images to show it."""

    model: VisionTransformer
    name: str  # for titles and prose: "demo vit_tiny (shapes)", "ViT-B/16 (ImageNet)"
    classes: list[str]  # the model's output classes, index = logit
    splits: DataSplits  # where example (and, for lesson 9, training) images come from
    labels_match: bool  # True when splits' labels index `classes` (False: ImageNet model on CIFAR or shapes)
    small: bool  # the default laptop model: lessons size their work by it
    source: str  # "demo", "checkpoint" or "imagenet"
    weights_path: Path | None = None  # the file the weights came from (demo's best.pt, --checkpoint)
    run_config: dict | None = None  # the vitlab run's settings (seed, arch, ...), None for the ImageNet model

    @property
    def examples(self) -> ImageDataset:
        """Test images: uint8 (N, 3, H, W), labels (N,), masks (N, H, W) on shapes."""
        return self.splits.test

    @property
    def transform(self) -> BatchTransform:
        """uint8 images -> the model's normalised input at its own size (32 for vit_tiny, 224 for ViT-B/16)."""
        return BatchTransform(self.model.image_size, train=False)

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


# ---------------------------------------------------------------------------------------------------------------
# The four names a lesson uses, and the decorator around its main
# ---------------------------------------------------------------------------------------------------------------


def start(
    lesson_file: str,
    doc: str | None,
    argv: Sequence[str] | None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[argparse.Namespace, Subject]:
    """Parse the flags every lesson takes (plus the lesson's own, `add_arguments`) and load the model they ask for.

    Also sets PyTorch's thread count (`--threads`): for the small model one thread is the fast choice.
    """
    args = parse_args(lesson_file, doc, argv, add_arguments)
    if args.checkpoint is not None:
        subject = _from_checkpoint(Path(args.checkpoint), args)
        use_threads(args, subject.small)
        return args, subject
    small = args.arch in (None, "vit_tiny")
    use_threads(args, small=small)  # before loading: the first load trains the demo model
    return args, (_demo() if small else _imagenet_model(args.arch, args))


def explain(text: str) -> None:
    """Print prose, dedented; paragraphs are wrapped to 100 columns, except indented ones (tables), kept as typed."""
    paragraphs = textwrap.dedent(text).strip("\n").split("\n\n")
    print("\n\n".join(p.rstrip() if p.startswith(" ") else textwrap.fill(" ".join(p.split()), width=100)
                      for p in paragraphs) + "\n")


def save(fig: Figure, out: str | Path, file_name: str) -> Path:
    """Save a figure as PNG under `out` and say where."""
    path = save_figure(fig, Path(out) / file_name)
    print(f"  wrote {path}")
    return path


def print_questions(doc: str | None) -> None:
    """Print the 'Questions' section of a lesson's docstring: one source for the file and the terminal."""
    text = doc or ""
    begin = text.find("Questions")
    if begin < 0:
        raise ValueError("a lesson's docstring must end with a 'Questions' section")
    print("\n" + textwrap.dedent(text[begin:]).strip() + "\n")


def run_lesson(body: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Decorator for a lesson's `main`: a `VitlabError` (missing weights, data, bad path) becomes a message, exit 2.

    Anything else, and in particular a failed `assert` of an equality the lesson demonstrates, raises with its
    traceback: that is a bug, and it must be loud. PyTorch's thread count is restored for the caller (a test).
    """
    checked = command("vitlab")(body)  # the exit-code table every vitlab command uses

    @functools.wraps(body)
    def main(argv: Sequence[str] | None = None) -> int:
        threads = torch.get_num_threads()
        try:
            return checked(argv)
        finally:
            torch.set_num_threads(threads)

    return main


# ---------------------------------------------------------------------------------------------------------------
# The flags, and the lessons that need more than `start` (lesson 8 fine-tunes rather than studies)
# ---------------------------------------------------------------------------------------------------------------

THREADS = number_flag("threads", Rule(1, 1024, "--threads 2"))  # more than 1,024 is a typo, not a machine
LARGEST_BLOCKS = 12  # ViT-B/16's encoder blocks: the most any lesson's model has
LARGEST_GRID = 14  # ViT-B/16's 14x14 patch grid


def checkpoint_flag(text: str) -> str:
    """--checkpoint: a run folder (its best.pt) or a .pt file that exists and is a torch.save archive.

    The full check (a vitlab checkpoint: tensors and plain values, a known arch) is vitlab.training.checkpoint's, when
    the lesson loads it, before anything is written; this one answers a typo before anything loads.
    """
    try:
        path = checkpoint_file(text, "study")
    except CheckpointError as error:
        raise CheckpointError(f"--checkpoint {text}: {error}") from None
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise CheckpointError(f"--checkpoint {text}: {path} is not a vitlab checkpoint (not a file torch.save "
                              f"wrote). Give a run folder of python -m vitlab.finetune (for example --checkpoint "
                              f"runs/demo) or its best.pt.")
    return text


def data_dir_flag(text: str) -> str:
    """--data-dir: an existing folder (a lesson never downloads, so a missing folder is a typo)."""
    if not Path(text).expanduser().is_dir():
        raise VitlabError(f"--data-dir {text} is not a folder. Give the folder that holds CIFAR (for example "
                          f"--data-dir ./data), or leave the flag out to use the synthetic shapes.")
    return text


def out_flag(text: str) -> str:
    """--out: a folder that can be written (not empty, not a file, not under a file)."""
    folder_to_write("out", text)
    return text


def parse_args(
    lesson_file: str,
    doc: str | None,
    argv: Sequence[str] | None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The flags every lesson takes, plus the lesson's own (`add_arguments`); each is checked as it is parsed."""
    name = Path(lesson_file).stem  # 'lessons/04_attention_heads.py' -> '04_attention_heads'
    first_line = (doc or name).strip().splitlines()[0]
    parser = Parser(prog=f"python lessons/{name}.py", description=first_line)
    parser.add_argument("--arch", choices=ARCHS, default=None,
                        help="vit_tiny (default): the small demo model trained on shapes; vit_b_16 (or vit_b_32, "
                        "vit_l_16, vit_l_32, vit_h_14): torchvision's ImageNet ViT (needs its cached weights file)")
    parser.add_argument("--checkpoint", metavar="PATH", default=None, type=checkpoint_flag,
                        help="study the model of a vitlab run instead (its best.pt)")
    parser.add_argument("--data-dir", metavar="DIR", default=None, type=data_dir_flag,
                        help="where CIFAR is looked for, for the real model (default: the checkpoint run's data "
                        "folder, else ./data); lessons never download it")
    parser.add_argument("--out", metavar="DIR", default=f"lesson_outputs/{name}", type=out_flag,
                        help=f"folder for the figures (default: lesson_outputs/{name})")
    parser.add_argument("--threads", type=THREADS, metavar="N", default=None,
                        help="CPU threads for PyTorch (default: 1 for the small model, whose matrices are too small "
                        "for threads to pay off and which on a busy CPU they only slow down; PyTorch's default for "
                        "the real model)")
    if add_arguments is not None:
        add_arguments(parser)
    return parser.parse_args(argv)


def use_threads(args: argparse.Namespace, small: bool) -> None:
    """Apply --threads, or the default for this model size (restored when `main` returns, see run_lesson)."""
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    elif small:
        torch.set_num_threads(1)


def demo_run() -> tuple[VisionTransformer, DataSplits, Path]:
    """The shared demo model (eval mode; trained on first use), the shapes splits it learned, and its best.pt."""
    run_dir = default_cache_dir() / "demo"
    if not (run_dir / "summary.json").is_file():
        print(f"Training the shared demo model once (under 30 s on a laptop CPU); it is cached in {run_dir}.")
    model, splits = load_demo_model()
    return model.eval(), splits, run_dir / "best.pt"


# ---------------------------------------------------------------------------------------------------------------
# Where each kind of model comes from
# ---------------------------------------------------------------------------------------------------------------


def _demo() -> Subject:
    model, splits, best = demo_run()
    config = load_checkpoint(best)["config"]
    return Subject(model, "demo vit_tiny (shapes)", list(splits.classes), splits, labels_match=True,
                   small=True, source="demo", weights_path=best, run_config=config)


def _from_checkpoint(path: Path, args: argparse.Namespace) -> Subject:
    model, checkpoint = load_trained_model(path)  # CheckpointError (a VitlabError) for a missing or bad file
    config = checkpoint["config"]
    if args.arch is not None and args.arch != config["arch"]:
        raise VitlabError(f"--arch {args.arch} contradicts {path}, which holds a {config['arch']}. Drop --arch: "
                          f"the checkpoint decides the model.")
    if config["dataset"] == "shapes":
        splits, matched = load_dataset("shapes", seed=config["seed"]), True
    else:
        splits, matched = _cifar_or_shapes(args.data_dir or config["data_dir"], config["dataset"])
    return Subject(model, f"{config['arch']} from {path}", list(checkpoint["classes"]), splits, labels_match=matched,
                   small=config["arch"] == "vit_tiny", source="checkpoint", weights_path=path, run_config=config)


def _imagenet_model(arch: str, args: argparse.Namespace) -> Subject:
    """torchvision's ImageNet `arch` (default weights) with its 1000-class head, loaded through vitlab (clear errors,
    no pickles), at its weights' native input size."""
    cache_file = weights_cache_file(arch)
    if not cache_file.is_file():
        # Downloads when there is a network; offline it raises WeightsUnavailableError saying where the file goes.
        build_model(arch, num_classes=1000, pretrained=True, trainable_blocks=0)
    # The file's head has 1000 rows = num_classes, so build_model keeps it: predictions are ImageNet classes.
    model = build_model(arch, num_classes=1000, pretrained=cache_file, trainable_blocks=0)
    splits, _ = _cifar_or_shapes(args.data_dir or "./data", "cifar100")
    classes = list(weights_enum(arch).meta["categories"])
    _, letter, patch = arch.split("_")  # "vit_b_16" -> "ViT-B/16"
    return Subject(model.eval(), f"ViT-{letter.upper()}/{patch} (ImageNet)", classes, splits, labels_match=False,
                   small=False, source="imagenet", weights_path=cache_file)


def _cifar_or_shapes(data_dir: str, name: str) -> tuple[DataSplits, bool]:
    """CIFAR test images when they are on disk (never downloaded); else the shapes, with a note. -> (splits, found)"""
    try:
        return load_dataset(name, data_dir, download=False), True
    except DataUnavailableError:
        print(f"Note: no {name} under {data_dir} (pass --data-dir DIR); showing the synthetic shapes instead, "
              f"resized to the model's input size.")
        return load_dataset("shapes"), False
