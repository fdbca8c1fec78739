"""The pretrained vit_tiny base that ships inside the package, and the check that it is the file we made.

`python -m vitlab.pretrain --ship` trained it on generated fractals (see `vitlab.data.fractals`,
`vitlab.training.pretrain`) and
wrote two files into `vitlab/weights/`: `vit_tiny_fractal-<first 8 hex digits of its SHA-256>.pt` (a state dict of
tensors) and `vit_tiny_fractal.json`, its model card: the exact command, seed, generator settings, epochs, wall time,
device, the measured structure, and the full SHA-256. As torchvision does for its downloads, the hash is checked
before the file is loaded, so a damaged or swapped file is refused with a message instead of giving odd results.

    path = shipped_base_file()        # checked against the card; raises WeightsUnavailableError if not right
    card = shipped_card()             # the dict in vit_tiny_fractal.json
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vitlab.errors import WeightsUnavailableError

CARD_NAME = "vit_tiny_fractal.json"
REBUILD = ("Rebuild it with: python -m vitlab.pretrain --ship (the card's command; about 25 minutes on 2 CPU cores), "
           "or reinstall vitlab. To train without it: --pretrained none --trainable-blocks all.")


def shipped_weights_dir() -> Path:
    """The package's weights folder (vitlab/weights/), where the pretrained base and its card live."""
    return Path(__file__).resolve().parent / "weights"


def shipped_card(folder: Path | None = None) -> dict[str, Any]:
    """The model card of the shipped base (a dict with "command", "config", "metrics", "sha256", ...)."""
    path = (folder or shipped_weights_dir()) / CARD_NAME
    try:
        card = json.loads(path.read_text())
        digest = card["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WeightsUnavailableError(
            f"The model card of vitlab's pretrained vit_tiny base, {path}, is missing or unreadable "
            f"({type(error).__name__}). {REBUILD}"
        ) from None
    if not (isinstance(digest, str) and len(digest) == 64):
        raise WeightsUnavailableError(f"{path} gives no valid SHA-256 for the shipped base. {REBUILD}")
    return card


def shipped_base_file(folder: Path | None = None) -> Path:
    """The shipped base's weights file, after checking its SHA-256 against the card (as torchvision's check_hash).

    Raises:
        WeightsUnavailableError: the file is missing, or its bytes are not the ones the card describes.
    """
    folder = folder or shipped_weights_dir()
    digest = shipped_card(folder)["sha256"]
    path = folder / f"vit_tiny_fractal-{digest[:8]}.pt"
    if not path.is_file():
        raise WeightsUnavailableError(f"vitlab's pretrained vit_tiny base is missing: no {path}. {REBUILD}")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != digest:
        raise WeightsUnavailableError(
            f"{path} is damaged: its SHA-256 is {actual[:16]}..., but the model card {CARD_NAME} expects "
            f"{digest[:16]}.... {REBUILD}"
        )
    return path
