"""The offline demo model: vit_tiny trained on synthetic shapes, and how well its attention finds the object.

Lessons and the explorer share one trained demo model through a cache file, so nothing retrains what another
already trained: `load_demo_model()` trains it once (about a minute on a laptop CPU) and loads it afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.models import VisionTransformer

from vitlab.attention import attention_mass_ratio, patch_coverage, pointing_game, rollout
from vitlab.capture import capture
from vitlab.data import BatchTransform, DataSplits, ImageDataset, load_dataset


def default_cache_dir() -> Path:
    """Where the demo run is kept: $VITLAB_CACHE, else ~/.cache/vitlab."""
    return Path(os.environ.get("VITLAB_CACHE", Path.home() / ".cache" / "vitlab"))


def load_demo_model(
    cache_dir: str | os.PathLike | None = None, quiet: bool = True
) -> tuple[VisionTransformer, DataSplits]:
    """The trained demo model (eval mode) and the shapes splits it was trained on; trains it on first use.

    The run lives in `<cache_dir>/demo` (default `~/.cache/vitlab/demo`, or `$VITLAB_CACHE/demo`); delete that
    folder to retrain.
    """
    from vitlab.checkpoint import load_trained_model
    from vitlab.finetune import main

    run_dir = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "demo"
    best = run_dir / "best.pt"
    if not (run_dir / "summary.json").is_file():
        argv = ["--preset", "demo", "--out", str(run_dir)] + (["--quiet"] if quiet else [])
        if (run_dir / "checkpoint.pt").is_file():
            argv = ["--resume", str(run_dir)] + (["--quiet"] if quiet else [])  # finish an interrupted run
        if main(argv) != 0:
            raise RuntimeError(f"Training the demo model into {run_dir} failed; see the message above.")
    model, checkpoint = load_trained_model(best)
    config = checkpoint["config"]
    splits = load_dataset("shapes", seed=config["seed"], subset=config["subset"])
    return model, splits


# Rollout as the demo scores it: mean over heads, and the weakest half of each row's links discarded, which keeps
# the residual stream's uniform mixing from washing the map out (plain rollout is reported beside it).
DEMO_ROLLOUT = {"head_fusion": "mean", "discard_ratio": 0.5}


@torch.no_grad()
def localization_scores(
    model: VisionTransformer, dataset: ImageDataset, batch_size: int = 250, device: torch.device | str = "cpu"
) -> dict[str, float | dict]:
    """How well attention rollout finds the object, on a dataset with object masks (shapes).

    An object patch is a patch holding at least one object pixel.

    Returns:
        pointing_game: share of images whose rollout maximum falls on an object patch.
        attention_mass_ratio: rollout mass on object patches / the object's share of patches, averaged
            (1.0 is chance).
        random_pointing_game: the pointing game of uniformly random maps, the baseline to beat.
        pointing_game_no_discard, attention_mass_ratio_no_discard: the same for plain rollout (discard_ratio 0).
        rollout: the rollout settings of the headline figures.
    """
    if dataset.masks is None:
        raise ValueError("localization_scores needs a dataset with object masks (the shapes dataset)")
    model.eval()
    transform = BatchTransform(model.image_size, train=False).to(device)
    maps, plain_maps, object_patches = [], [], []
    for start in range(0, len(dataset), batch_size):
        images = dataset.images[start : start + batch_size].to(device)
        with capture(model) as captured:
            model(transform(images))
        maps.append(rollout(captured.attentions, **DEMO_ROLLOUT).cpu())  # (b, patches)
        plain_maps.append(rollout(captured.attentions).cpu())  # (b, patches)
        masks = dataset.masks[start : start + batch_size]  # (b, H, W) at the stored size, e.g. 32x32
        # The model sees images resized to its input size (224 for ViT-B/16): resize the masks the same way.
        masks = F.interpolate(masks[:, None].float(), size=model.image_size, mode="nearest")[:, 0] > 0.5
        coverage = patch_coverage(masks, model.patch_size)  # (b, patches)
        object_patches.append((coverage > 0).cpu())
    all_maps, all_plain, all_objects = torch.cat(maps), torch.cat(plain_maps), torch.cat(object_patches)
    random_maps = torch.rand(all_maps.shape, generator=torch.Generator().manual_seed(0))
    return {
        "pointing_game": pointing_game(all_maps, all_objects),
        "attention_mass_ratio": attention_mass_ratio(all_maps, all_objects),
        "random_pointing_game": pointing_game(random_maps, all_objects),
        "pointing_game_no_discard": pointing_game(all_plain, all_objects),
        "attention_mass_ratio_no_discard": attention_mass_ratio(all_plain, all_objects),
        "rollout": dict(DEMO_ROLLOUT),
    }
