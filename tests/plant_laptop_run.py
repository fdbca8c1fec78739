"""Run `python -m vitlab.finetune --preset laptop` end to end on planted files, and print its wall time.

    python tests/plant_laptop_run.py /tmp/laptop-run      # plants once, then runs the preset (about 24 minutes)
    python tests/plant_laptop_run.py /tmp/laptop-run --plant-only

The preset's time does not depend on the pixels or the weights (the same shapes pass through the same kernels), so
planted files time the real run without a download: CIFAR-100 in its real pickle layout (50,000 train and 10,000
test images, random pixels and labels) under FOLDER/data, and random ViT-B/16 weights saved as torchvision's cache
file under FOLDER/torch, the TORCH_HOME of the run. Planted files cannot match CIFAR-100's MD5 sums, so torchvision's
integrity check is bypassed, in this process only. The accuracy of such a run means nothing; its minutes do.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.models import VisionTransformer

from vitlab.archs import SPECS, weights_cache_file
from vitlab.cli import Parser, command
from vitlab.training import finetune

CIFAR_IMAGES = {"train": 50_000, "test": 10_000}


def plant_cifar100(root: Path, images: dict[str, int] = CIFAR_IMAGES, seed: int = 0) -> Path:
    """root/cifar-100-python/{train,test,meta} as the real files lay them out: uint8 rows of 3072 bytes (1024 red,
    1024 green, 1024 blue, each 32x32 row-major), fine and coarse labels, the 100 + 20 names. Returns the folder."""
    rng, folder = np.random.default_rng(seed), root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in images.items():
        fine = rng.integers(0, 100, size=count).tolist()
        entry = {"filenames": [f"{index}.png" for index in range(count)], "batch_label": split, "fine_labels": fine,
                 "coarse_labels": [label // 5 for label in fine],
                 "data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)}  # (N, 3 * 32 * 32)
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"fine_label_names": [f"class_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"super_{i:02d}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def plant_vit_weights(torch_home: Path, arch: str = "vit_b_16", shape: dict | None = None, seed: int = 0) -> Path:
    """Random weights of `arch` (or of another `shape`: VisionTransformer arguments, for a small stand-in) with a
    1000-class head, saved where torchvision's cache under `torch_home` holds `arch`'s default weights."""
    file = torch_home / "hub" / "checkpoints" / weights_cache_file(arch).name  # as torch.hub.get_dir() lays it out
    spec = SPECS[arch]
    arguments = shape or {"image_size": 224, "patch_size": spec.patch_size, "num_layers": spec.num_layers,
                          "num_heads": spec.num_heads, "hidden_dim": spec.hidden_dim, "mlp_dim": spec.mlp_dim}
    torch.manual_seed(seed)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(VisionTransformer(**arguments, num_classes=1000).state_dict(), file)
    return file


@contextlib.contextmanager
def trusting_planted_cifar() -> Iterator[None]:
    """torchvision's CIFAR integrity checks pass while inside: planted files cannot match the real MD5 sums."""
    import torchvision

    saved = torchvision.datasets.CIFAR100._check_integrity, torchvision.datasets.cifar.check_integrity
    torchvision.datasets.CIFAR100._check_integrity = lambda self: True
    torchvision.datasets.cifar.check_integrity = lambda path, md5=None: True
    try:
        yield
    finally:
        torchvision.datasets.CIFAR100._check_integrity, torchvision.datasets.cifar.check_integrity = saved


@command("plant_laptop_run")
def main(argv: Sequence[str] | None = None) -> int:
    """Plant what is missing under FOLDER, then run the laptop preset there and print its minutes (0, or the job's
    exit code)."""
    parser = Parser(prog="python tests/plant_laptop_run.py", description=__doc__.splitlines()[0])
    parser.add_argument("folder", metavar="FOLDER", help="where the data, the weights and the run go")
    parser.add_argument("--plant-only", action="store_true", help="plant the files, do not run the preset")
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    folder = Path(args.folder).expanduser().absolute()
    if not (folder / "data" / "cifar-100-python" / "meta").is_file():
        plant_cifar100(folder / "data")
    if not (folder / "torch" / "hub" / "checkpoints").is_dir():
        plant_vit_weights(folder / "torch")
    if args.plant_only:
        return 0
    os.environ["TORCH_HOME"] = str(folder / "torch")
    started = time.perf_counter()
    with trusting_planted_cifar():
        code = finetune.main(["--preset", "laptop", "--data-dir", str(folder / "data"), "--out", str(folder / "run")])
    minutes = (time.perf_counter() - started) / 60
    if code == 0:
        summary = json.loads((folder / "run" / "summary.json").read_text())
        print(f"laptop preset: {minutes:.1f} min wall ({summary['wall_seconds'] / 60:.1f} min inside the run) on "
              f"{torch.get_num_threads()} torch threads; load average {os.getloadavg()[0]:.1f}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
