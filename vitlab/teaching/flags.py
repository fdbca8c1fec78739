"""The flags every lesson takes, each checked as it is parsed, and the refusals of flags that would do nothing.

    --arch ARCH        the model to study: vit_tiny (the demo model, default) or an ImageNet ViT (vit_b_16, ...)
    --checkpoint PATH  the model a vitlab run trained, or a timm or Hugging Face ViT, instead (it knows its arch:
                       --arch with it is refused)
    --data-dir DIR     where CIFAR (or a checkpoint's image folder) is: refused where the studied model reads no
                       files (the demo model, or a checkpoint trained on generated images)
    --out DIR          where the figures go;  --threads N  PyTorch's CPU threads

Every flag is used or refused, with one line that names it and what it applies to. Flags are spelt out in full: an
abbreviation (--thread) is refused like any typo, so a misspelt flag can never quietly mean another one.
"""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from vitlab.archs import ARCHS
from vitlab.cli import Parser, Rule, folder_to_write, number_flag
from vitlab.errors import CheckpointError, VitlabError
from vitlab.training.checkpoint import checkpoint_file
from vitlab.training.config import DATASETS_FLAGS
from vitlab.training.imported import is_external, needs_model_name

THREADS = number_flag("threads", Rule(1, 1024, "--threads 2"))  # more than 1,024 is a typo, not a machine
DEMO_ARCH = "vit_tiny"  # --arch vit_tiny (or no --arch) studies the demo model
# Datasets read from no data folder (made in memory, or shipped inside vitlab): a model trained on them takes no
# --data-dir. The fine-tuning job's table decides, so a new dataset is one row there.
GENERATED_DATASETS = tuple(name for name, row in DATASETS_FLAGS.items() if not row.data_dir)

OwnFlags = Callable[[argparse.ArgumentParser], None]  # adds a lesson's own flags to the common ones


def parse_args(name: str, argv: Sequence[str], own_flags: OwnFlags | None = None,
               title: str = "") -> argparse.Namespace:
    """The common flags plus the lesson's own (`own_flags`), parsed from `argv`; combinations checked.

    name: the lesson's file name without .py ('07_rollout'): it names the program and the default --out folder.
    """
    parser = Parser(prog=f"python lessons/{name}.py", description=title or None, allow_abbrev=False)
    parser.add_argument("--arch", choices=ARCHS, default=None,
                        help="vit_tiny (default): the small demo model, trained on photos of clothing; "
                        "vit_b_16 (or vit_b_32, "
                        "vit_l_16, vit_l_32, vit_h_14): torchvision's ImageNet ViT (needs its cached weights file)")
    parser.add_argument("--checkpoint", metavar="PATH", default=None, type=checkpoint_flag,
                        help="study the model of a vitlab run instead (its best.pt), or a timm or Hugging Face ViT "
                        "(a save_pretrained or timm hub folder, or a timm file with timm's config.json beside it); "
                        "not with --arch")
    parser.add_argument("--data-dir", metavar="DIR", default=None, type=data_dir_flag,
                        help="where CIFAR-100 is for an ImageNet --arch, or the data of a --checkpoint trained on "
                        "files (default: the checkpoint run's data folder, else ./data); lessons never download")
    parser.add_argument("--out", metavar="DIR", default=f"lesson_outputs/{name}", type=out_flag,
                        help=f"folder for the figures (default: lesson_outputs/{name})")
    parser.add_argument("--threads", type=THREADS, metavar="N", default=None,
                        help="CPU threads for PyTorch (default: 1 for the small model, whose matrices are too small "
                        "for threads to pay off and which on a busy CPU they only slow down; PyTorch's default for "
                        "the real model)")
    if own_flags is not None:
        own_flags(parser)
    args = parser.parse_args(list(argv))
    refuse_unused_flags(args)
    return args


def refuse_unused_flags(args: argparse.Namespace) -> None:
    """Refuse the flags that the chosen model makes pointless, before anything loads."""
    if args.checkpoint is not None and args.arch is not None:
        raise VitlabError(f"--arch {args.arch} and --checkpoint {args.checkpoint} both choose the model to study: "
                          f"give one. The checkpoint knows its own arch, so drop --arch.")
    if args.data_dir is not None and args.checkpoint is None and args.arch in (None, DEMO_ARCH):
        raise VitlabError(f"--data-dir {args.data_dir} does nothing for the demo model (vit_tiny on the "
                          f"Fashion-MNIST photos that ship with vitlab). It says where CIFAR-100 is for an ImageNet "
                          f"--arch (for example --arch vit_b_16 --data-dir ./data) or a --checkpoint's data: leave it "
                          f"out, or add one.")


def refuse_data_dir_for(args: argparse.Namespace, dataset: str, model: str) -> None:
    """Refuse --data-dir for a model whose dataset is generated in memory (known once its checkpoint is read)."""
    if args.data_dir is not None and dataset in GENERATED_DATASETS:
        raise VitlabError(f"--data-dir {args.data_dir} does nothing for {model}: it was trained on {dataset}, "
                          f"which ships with vitlab or is made in memory. Leave --data-dir out.")


def checkpoint_flag(text: str) -> str:
    """--checkpoint: a run folder (its best.pt) or a .pt file that exists and is a torch.save archive, or a timm or
    Hugging Face checkpoint (`vitlab.external.detect_format`) that names its model.

    The full check (a vitlab checkpoint: tensors and plain values, a known arch; a ViT that maps) is
    vitlab.training.checkpoint's or vitlab.external's, when the lesson loads it, before anything is written; this one
    answers a typo before anything loads.
    """
    if is_external(text):
        if needs_model_name(text):
            raise CheckpointError(f"--checkpoint {text} is a timm state dict without timm's config.json beside it, "
                                  f"so its model is unknown (the head count is in no tensor). Keep the config.json "
                                  f"timm's save_for_hf writes beside it, or pass timm's hub folder.")
        return text
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
                          f"--data-dir ./data), or leave the flag out to use the photos that ship with vitlab.")
    return text


def out_flag(text: str) -> str:
    """--out: a folder that can be written (not empty, not a file, not under a file)."""
    folder_to_write("out", text)
    return text


def studies_small_model(args: argparse.Namespace) -> bool:
    """Whether the flags choose the small demo model (before loading: a checkpoint decides once it is read)."""
    return args.checkpoint is None and args.arch in (None, DEMO_ARCH)


def use_threads(args: argparse.Namespace, small: bool) -> None:
    """Apply --threads, or the default for this model size (a lesson run restores the caller's count)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif small:
        torch.set_num_threads(1)
