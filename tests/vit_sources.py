"""Random-weight timm and Hugging Face ViTs saved in their libraries' own formats, for the tests that import them.

Built by timm and transformers themselves (nothing is downloaded) and small: 2 blocks on 32-px images, so that a
run, a lesson or the explorer takes seconds. The normalisation differs from ImageNet's and from timm's 0.5, so a
test sees whether the model's own statistics reached the transforms.
"""

from __future__ import annotations

from pathlib import Path

import torch

MEAN, STD = (0.2, 0.3, 0.4), (0.6, 0.7, 0.8)  # the Hugging Face model's preprocessor_config statistics
LABELS = {0: "cat", 1: "dog", 2: "eel"}  # its id2label


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter redrawn (norm weights around 1): libraries initialise biases to 0 and norms to 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * (0.1 if param.ndim == 1 else 0.05)
            param.copy_(noise + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model.eval()


def save_hf_classifier(folder: Path, seed: int = 0) -> torch.nn.Module:
    """A ViTForImageClassification (2 blocks of width 64, 4 heads, 8-px patches, 32 px, LABELS) saved with
    save_pretrained into `folder`, with a preprocessor_config.json of MEAN and STD. Returns the model."""
    import transformers

    config = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                    image_size=32, patch_size=8, id2label=LABELS,
                                    label2id={name: index for index, name in LABELS.items()})
    model = randomise(transformers.ViTForImageClassification(config), seed)
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=list(MEAN),
                                   image_std=list(STD)).save_pretrained(folder)
    return model


def save_hf_features(folder: Path) -> None:
    """A headless Hugging Face ViTModel (1 block of width 32, 8-px patches, 32 px: features only, no class names),
    saved with save_pretrained into `folder`."""
    import transformers

    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=32, patch_size=8)
    transformers.ViTModel(config).save_pretrained(folder)


def save_timm_hub(folder: Path, seed: int = 0) -> torch.nn.Module:
    """timm's vit_tiny_patch16_224 cut to 2 blocks at 32 px, 5 classes, saved by timm's save_for_hf (config.json
    with model_args and pretrained_cfg, whose mean and std are 0.5). Returns the model."""
    import timm
    from timm.models._hub import save_for_hf

    model = randomise(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2,
                                        num_classes=5), seed)
    save_for_hf(model, folder, safe_serialization=True)
    return model
