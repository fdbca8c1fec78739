"""The pretrained vit_tiny bases that ship inside the package, and the check that each is the file we made.

Two bases, each made by one `python -m vitlab.pretrain ... --ship` command (`vitlab.training.pretrain`):

- "fractal": SimMIM on generated fractals (`vitlab.data.fractals`), from random weights. No photograph involved:
  it shows that the structure the lessons look for comes from the objective, not from the data.
- "fashion": the fractal base, then SimMIM on the shipped Fashion-MNIST subset's unlabelled training photos
  (`vitlab.data.fashion`): the base the demo fine-tunes.

Each ship writes two files into `vitlab/weights/`: `vit_tiny_<name>-<first 8 hex digits of its SHA-256>.pt` (a state
dict of tensors) and `vit_tiny_<name>.json`, its model card: the exact command, seed, settings, epochs, wall time,
device, the measured structure, and the full SHA-256. As torchvision does for its downloads, the hash is checked
before the file is loaded, so a damaged or swapped file is refused with a message instead of giving odd results.

    path = shipped_base_file()                  # the fractal base, checked against its card
    path = shipped_base_file(name="fashion")    # the demo's base
    card = shipped_card(name="fashion")         # the dict in vit_tiny_fashion.json
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vitlab.errors import WeightsUnavailableError

SHIPPED_BASES = ("fractal", "fashion")  # the names `--pretrained` takes for vit_tiny's shipped bases
CARD_NAME = "vit_tiny_fractal.json"  # the fractal base's card; `card_name(name)` for any base


def card_name(name: str = "fractal") -> str:
    """The file name of a shipped base's model card: vit_tiny_fractal.json, vit_tiny_fashion.json."""
    if name not in SHIPPED_BASES:
        raise ValueError(f"no shipped base {name!r}: vitlab ships {', '.join(SHIPPED_BASES)}")
    return f"vit_tiny_{name}.json"


# The commands that make each base (its card holds the exact command line of the shipped file).
SHIP_COMMANDS = {
    "fractal": "python -m vitlab.pretrain --threads 1 --ship",
    "fashion": "python -m vitlab.pretrain --data fashion --init fractal --epochs 120 --mask-ratio 0.75 "
               "--global-weight 1 --position-lr-scale 1 --threads 1 --ship",
}


def rebuild_hint(name: str = "fractal") -> str:
    """How to make a shipped base again, or train without it."""
    after = "" if name == "fractal" else " (it starts from the shipped fractal base)"
    return (f"Rebuild it with: {SHIP_COMMANDS[name]}{after}, or reinstall vitlab. To train without it: "
            f"--pretrained none --trainable-blocks all.")


def shipped_weights_dir() -> Path:
    """The package's weights folder (vitlab/weights/), where the pretrained base and its card live."""
    return Path(__file__).resolve().parent / "weights"


def shipped_card(folder: Path | None = None, name: str = "fractal") -> dict[str, Any]:
    """The model card of the shipped base `name` (a dict with "command", "config", "metrics", "sha256", ...)."""
    path = (folder or shipped_weights_dir()) / card_name(name)
    try:
        card = json.loads(path.read_text())
        digest = card["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WeightsUnavailableError(
            f"The model card of vitlab's pretrained vit_tiny {name} base, {path}, is missing or unreadable "
            f"({type(error).__name__}). {rebuild_hint(name)}"
        ) from None
    if not (isinstance(digest, str) and len(digest) == 64):
        raise WeightsUnavailableError(f"{path} gives no valid SHA-256 for the shipped base. {rebuild_hint(name)}")
    return card


def shipped_base_file(folder: Path | None = None, name: str = "fractal") -> Path:
    """The shipped base's weights file, after checking its SHA-256 against the card (as torchvision's check_hash).

    Raises:
        WeightsUnavailableError: the file is missing, or its bytes are not the ones the card describes.
    """
    folder = folder or shipped_weights_dir()
    digest = shipped_card(folder, name)["sha256"]
    path = folder / f"vit_tiny_{name}-{digest[:8]}.pt"
    if not path.is_file():
        raise WeightsUnavailableError(
            f"vitlab's pretrained vit_tiny {name} base is missing: no {path}. {rebuild_hint(name)}")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != digest:
        raise WeightsUnavailableError(
            f"{path} is damaged: its SHA-256 is {actual[:16]}..., but the model card {card_name(name)} expects "
            f"{digest[:16]}.... {rebuild_hint(name)}"
        )
    return path
