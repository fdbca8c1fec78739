"""The lessons' flags checked as they are parsed: a bad value is one line and exit 2 before any model loads.

    parser.add_argument("--threads", type=THREADS)                 # a whole number from 1 to 1,024
    parser.add_argument("--block", type=number_flag("block", Rule(1, 12, "--block 4")))   # a lesson's own flag

The rule format is vitlab.config_rules' (one place for every command line). A lesson whose range depends on the
model (block 1 to 4 on vit_tiny, 1 to 12 on ViT-B/16) checks its widest range here and the model's own once loaded.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from vitlab.checkpoint import checkpoint_file
from vitlab.config_rules import Rule, folder_to_write, number_flag
from vitlab.errors import CheckpointError, VitlabError

THREADS = number_flag("threads", Rule(1, 1024, "--threads 2"))  # more than 1,024 is a typo, not a machine
LARGEST_BLOCKS = 12  # ViT-B/16's encoder blocks: the most any lesson's model has
LARGEST_GRID = 14  # ViT-B/16's 14x14 patch grid


def checkpoint_flag(text: str) -> str:
    """--checkpoint: a run folder (its best.pt) or a .pt file that exists and is a torch.save archive.

    The full check (a vitlab checkpoint: tensors and plain values, a known arch) is vitlab.checkpoint's, when the
    lesson loads it, before anything is written; this one answers a typo before anything loads.
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
