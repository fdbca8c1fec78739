"""Checkpoints: plain dicts of tensors and plain values, written atomically, read with `weights_only=True`.

A checkpoint is what nanoGPT saves: `{"model": state_dict, "optimizer": ..., "config": ..., "epoch": ...}`. It is
written to a temporary file in the same folder and moved into place with `os.replace`, so a crash or Ctrl-C
mid-write leaves the previous file intact. It is read with `torch.load(weights_only=True)`, which refuses pickled
code: opening someone else's checkpoint cannot run their code.

A run folder (`python -m vitlab.finetune --out DIR`) holds two checkpoints, and what a command wants decides which
one it reads (`checkpoint_file`): `--resume` reads checkpoint.pt, the last completed epoch with everything needed
to continue; studying the model (the test pass, the lessons' `--checkpoint`, the explorer) reads best.pt, the
weights of the best validation epoch. A finished run also holds `model.safetensors`, best.pt's weights in the format
every library reads (`write_safetensors`); studying reads it too, when a folder has no .pt file left.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import safetensors
import safetensors.torch
import torch
from torchvision.models import VisionTransformer

from vitlab.atomic import atomic_write
from vitlab.errors import CheckpointError
from vitlab.model import build_model, safe_torch_load
from vitlab.training.imported import IMPORTED, build_from_spec

FORMAT = "vitlab-checkpoint-v1"

# The two checkpoints of a run folder.
CONFIG = "config.json"  # the run's settings, written before its first epoch
LAST = "checkpoint.pt"  # the last completed epoch: weights, optimizer, scheduler, RNG and history, to resume
BEST = "best.pt"  # the weights of the best validation epoch: what the test pass measures and what is studied
WEIGHTS_FILE = "model.safetensors"  # best.pt's weights as safetensors, written when the run finishes
SAFETENSORS_FORMAT = "vitlab-finetune"  # the safetensors header's "format": what `read_safetensors` accepts

Purpose = Literal["resume", "study"]
# A run folder's files each purpose reads, by preference.
_READS: dict[str, tuple[str, ...]] = {"resume": (LAST,), "study": (BEST, LAST, WEIGHTS_FILE)}


def checkpoint_file(path: str | os.PathLike, purpose: Purpose) -> Path:
    """The file to read for `purpose` from `path`, a run folder or a .pt file (a file is itself).

    In a run folder, "resume" reads checkpoint.pt; "study" reads best.pt, or checkpoint.pt when there is no best.pt.

    Raises:
        CheckpointError: `path` does not exist, or is a folder without the file(s) `purpose` reads.
    """
    path = Path(path).expanduser()
    names = _READS[purpose]
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(
            f"{path} is a folder without {' or '.join(names)}. Give a run folder written by "
            f"python -m vitlab.finetune, or the path of its .pt file."
        )
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at {path}. Give a run folder (it holds {LAST} and {BEST}) or a .pt file written by "
            f"python -m vitlab.finetune (offline: python -m vitlab.finetune --preset demo --out runs/demo)."
        )
    return path


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> Path:
    """Atomically save a checkpoint dict (tensors and plain Python values only)."""
    return atomic_write(path, lambda file: torch.save({"format": FORMAT, **checkpoint}, file))


def save_json(path: str | os.PathLike, value: Any) -> Path:
    """Atomically write `value` as indented JSON."""
    return atomic_write(path, lambda file: file.write((json.dumps(value, indent=2) + "\n").encode()))


def load_checkpoint(path: str | os.PathLike, purpose: Purpose = "resume") -> dict[str, Any]:
    """Load a vitlab checkpoint safely: a .pt file, or the file of a run folder that `purpose` reads.

    The default reads a run folder's checkpoint.pt, the one that holds everything (see `checkpoint_file`).
    """
    path = checkpoint_file(path, purpose)
    if path.suffix == ".safetensors":
        return _weights_only_checkpoint(path, purpose)
    checkpoint = safe_torch_load(path, lambda error: _unreadable(path, error))
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a vitlab checkpoint (no '{FORMAT}' marker). For a plain "
            f"state dict, use vitlab.build_model(..., pretrained=PATH)."
        )
    return checkpoint


def _weights_only_checkpoint(path: Path, purpose: Purpose) -> dict[str, Any]:
    """A model.safetensors as a checkpoint dict, for studying only: it holds no optimiser state to resume from."""
    if purpose == "resume":
        raise CheckpointError(f"{path} holds weights only (no optimiser, schedule or history): it cannot be resumed. "
                              f"Resume from the run folder's {LAST}, or study the weights with --checkpoint {path}.")
    try:
        return read_safetensors(path)
    except Exception as error:  # a foreign or damaged file: safetensors raises its own types, we raise ours
        raise CheckpointError(f"{path} is not a model.safetensors written by python -m vitlab.finetune "
                              f"({type(error).__name__}: {str(error)[:160]}). For a timm or Hugging Face file use "
                              f"vitlab.import_vit.") from None


def saved_run(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What `--resume folder` continues: (the saved settings, checkpoint.pt), from the last completed epoch.

    A run stopped before its first epoch completed (killed, or out of disk) has a config.json but no checkpoint.pt:
    then this returns (config.json's settings, None) and the run starts again from epoch 1 with those settings.
    """
    path = Path(folder).expanduser()
    if path.is_dir() and not (path / LAST).exists() and (path / CONFIG).is_file():
        try:
            settings = json.loads((path / CONFIG).read_text())
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{path / CONFIG} is unreadable ({error}), and {path} holds no {LAST} yet: no "
                                  f"epoch of that run completed. Start it again with --out.") from None
        if not isinstance(settings, dict):
            raise CheckpointError(f"{path / CONFIG} holds no settings. Start the run again with --out.")
        return settings, None
    if path.is_dir() and not (path / LAST).exists():
        raise CheckpointError(
            f"{path} holds no run to resume: neither {LAST} nor {CONFIG} (a run stopped before it saved its "
            f"settings leaves none). Start it with the original command and --out {path}."
        )
    checkpoint = load_checkpoint(path, purpose="resume")
    return checkpoint["config"], checkpoint


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, folder: Path) -> None:
    """Put a checkpoint's optimizer state back, or say why it does not fit this optimizer (a CheckpointError)."""
    try:
        optimizer.load_state_dict(state)
    except ValueError as error:  # another grouping of the parameters than the one this vitlab builds
        raise CheckpointError(
            f"The optimizer state in {folder} does not fit this run's optimizer ({error}): it was saved by a vitlab "
            f"that grouped the parameters differently. Start a new run with --out; the weights in its best.pt "
            f"can still be studied."
        ) from None


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    """The message for a checkpoint torch cannot read: what failed, the likely causes, and what to do."""
    detail = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
    return CheckpointError(
        f"Could not read {path} as a vitlab checkpoint ({type(error).__name__}{': ' + detail if detail else ''}). "
        f"It is damaged (truncated or changed on disk), not a PyTorch file, or holds pickled code (vitlab loads "
        f"tensors and plain values only, so it cannot run code hidden in a checkpoint). Use an intact copy; in a run "
        f"folder the other checkpoint ({LAST} or {BEST}) may still be readable, or train the run again."
    )


def load_trained_model(path: str | os.PathLike) -> tuple[VisionTransformer, dict[str, Any]]:
    """Rebuild the model a vitlab run trained, in eval mode, from a run folder (its best.pt), a .pt file or the run's
    model.safetensors. A run of an imported timm or Hugging Face model (arch "imported") is rebuilt from the spec
    its config carries (vitlab.training.imported); its inputs take the spec's normalisation (`statistics`).

    Returns:
        (model, checkpoint): the checkpoint dict holds "config", "classes", "epoch" and more.
    """
    checkpoint = load_checkpoint(path, purpose="study")
    try:
        config, classes = checkpoint["config"], len(checkpoint["classes"])
        if config["arch"] == IMPORTED:
            model = build_from_spec(config["imported"], num_classes=classes)
        else:
            model = build_model(config["arch"], num_classes=classes, pretrained=False,
                                trainable_blocks=checkpoint["trainable_blocks"],
                                image_size=_trained_image_size(checkpoint))
        model.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path} carries the vitlab marker but is incomplete or does not fit its own settings ({error!r}). "
            f"Use a best.pt or checkpoint.pt written by python -m vitlab.finetune."
        ) from None
    return model.eval(), checkpoint


def _trained_image_size(checkpoint: dict[str, Any]) -> int | None:
    """The input size the run trained at: its config's, else the checkpoint's own record; None (native) if neither."""
    return checkpoint["config"].get("image_size") or checkpoint.get("image_size")


def write_safetensors(path: Path, checkpoint: dict[str, Any]) -> Path:
    """The model weights of a vitlab checkpoint (best.pt) as safetensors, with what rebuilding needs in its header."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in checkpoint["model"].items()}
    header = {"format": SAFETENSORS_FORMAT, "arch": checkpoint["arch"],
              "classes": json.dumps(list(checkpoint["classes"])), "image_size": str(checkpoint["image_size"]),
              "trainable_blocks": str(checkpoint["trainable_blocks"]), "epoch": str(checkpoint["epoch"]),
              "config": json.dumps(checkpoint["config"])}
    data = safetensors.torch.save(tensors, metadata=header)
    return atomic_write(path, lambda file: file.write(data))


def read_safetensors(path: Path) -> dict[str, Any]:
    """A `model.safetensors` written by `write_safetensors`, as a checkpoint-shaped dict ("model", "config", ...).

    Raises:
        ValueError: the file is not one vitlab wrote (its header lacks vitlab's "format").
    """
    with safetensors.safe_open(str(path), framework="pt") as opened:
        header = opened.metadata() or {}
        if header.get("format") != SAFETENSORS_FORMAT:
            raise ValueError(f"its header has no format {SAFETENSORS_FORMAT!r}")
        state = {name: opened.get_tensor(name) for name in opened.keys()}  # noqa: SIM118 (safe_open is not iterable)
    return {"model": state, "arch": header["arch"], "classes": json.loads(header["classes"]),
            "image_size": int(header["image_size"]), "trainable_blocks": int(header["trainable_blocks"]),
            "epoch": int(header["epoch"]), "config": json.loads(header["config"])}
