"""Fine-tuning a timm or Hugging Face ViT: `--pretrained PATH` to a checkpoint `vitlab.external` imports.

    python -m vitlab.finetune --pretrained ~/models/vit-base-patch16-224 --dataset cifar10 --data-dir ./data
    python -m vitlab.finetune --pretrained dino.safetensors --timm-name vit_small_patch16_224.dino --dataset shapes

No table of vitlab's knows such a model's shape, so its run names the arch "imported" and writes down what
rebuilding it needs, the spec (`describe`), in its settings' `imported` field: config.json, every checkpoint and
model.safetensors carry it, so `load_trained_model`, `--resume`, the lessons and the explorer rebuild the model
(`build_from_spec`) without the files it started from:

    {"source": "huggingface", "name": "vit-base-patch16-224", "native_image_size": 224,
     "vit": {"image_size": 224, "patch_size": 16, "num_layers": 12, "num_heads": 12, "hidden_dim": 768,
             "mlp_dim": 3072, "layer_norm_eps": 1e-12, "representation_size": null},
     "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

"vit" holds torchvision's VisionTransformer arguments at the run's image size; mean and std are the model's own
normalisation, which the run uses wherever it normalises (`statistics`). A model that does not map onto
torchvision's ViT is refused by make_config, with the importer's message, before any work (`import_start`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchvision.models import VisionTransformer

from vitlab.data import IMAGENET_MEAN, IMAGENET_STD
from vitlab.errors import VitlabError
from vitlab.external import ImportedViT, detect_format, import_vit, needs_model_name
from vitlab.external.build import Triple, build_from_arguments, vit_arguments
from vitlab.model import fit_grid, freeze_all_but_last

IMPORTED = "imported"  # the arch of a run that starts from a timm or Hugging Face checkpoint
NAMED_STARTS = ("imagenet", "fractal", "fashion", "none")  # --pretrained values that name a start rather than a path
TIMM_EXAMPLE = "vit_base_patch16_224.augreg2_in21k_ft_in1k"


def is_external(pretrained: str | None) -> bool:
    """Whether `--pretrained` names a timm or Hugging Face checkpoint (`vitlab.external.detect_format`): cheap."""
    return pretrained is not None and pretrained not in NAMED_STARTS and detect_format(pretrained) is not None


def check_timm_name(pretrained: str | None, timm_name: str | None) -> None:
    """`--timm-name` is given exactly when `--pretrained` is a timm state-dict file without timm's config.json."""
    needed = pretrained is not None and pretrained not in NAMED_STARTS and needs_model_name(pretrained)
    if needed and timm_name is None:
        raise VitlabError(f"--pretrained {pretrained} is a timm state dict without timm's config.json beside it, so "
                          f"vitlab cannot tell which ViT it is (the head count is in no tensor). Add --timm-name "
                          f"NAME, the name it was made with (for example --timm-name {TIMM_EXAMPLE}), or keep "
                          f"timm's config.json beside the file.")
    if timm_name is not None and not needed:
        raise VitlabError(f"--timm-name applies only to a timm state-dict file given to --pretrained without timm's "
                          f"config.json beside it (folders and config.json name their own model), and this run "
                          f"starts from {pretrained or 'the arch base'}: drop --timm-name.")


def import_start(pretrained: str, timm_name: str | None) -> ImportedViT:
    """`import_vit(pretrained, timm_name)`, its refusal (a model that does not map, a damaged file) named as
    --pretrained's: a VitlabError, exit 2."""
    try:
        return import_vit(pretrained, model_name=timm_name)
    except VitlabError as error:
        raise VitlabError(f"--pretrained {pretrained}: {error}") from None


def describe(imported: ImportedViT, image_size: int | None) -> dict[str, Any]:
    """The spec of a run from `imported` at `image_size` px (None: the model's own): plain values, for JSON."""
    arguments = {**vit_arguments(imported.model), "image_size": image_size or imported.image_size}
    return {"source": imported.source, "name": imported.name, "native_image_size": imported.image_size,
            "vit": arguments, "mean": list(imported.mean), "std": list(imported.std)}


def statistics(spec: Mapping[str, Any] | None) -> tuple[Triple, Triple]:
    """(mean, std) a run normalises with: an imported model's own, else ImageNet's (every model vitlab builds)."""
    if spec is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in spec["mean"]), tuple(float(v) for v in spec["std"])


def model_name(settings: Mapping[str, Any]) -> str:
    """What to call a run's model in prose: its arch ("vit_tiny"), or an imported model's own name."""
    spec = settings.get("imported")
    return f"{spec['name']} ({spec['source']})" if spec else str(settings["arch"])


def build_from_spec(spec: Mapping[str, Any], num_classes: int) -> VisionTransformer:
    """The spec's VisionTransformer with a `num_classes` head, randomly initialised: load its weights next."""
    return build_from_arguments(spec["vit"], num_classes)


def start_model(imported: ImportedViT, spec: Mapping[str, Any], num_classes: int,
                trainable_blocks: int) -> VisionTransformer:
    """A run's model before its first epoch: the import's weights at the spec's image size (position embeddings
    (1, 1 + g*g, D) interpolated to the run's grid (1, 1 + G*G, D) when it differs), a fresh `num_classes` head,
    all but the last `trainable_blocks` blocks frozen.

    Raises:
        VitlabError: the files changed since the spec was read (another shape).
    """
    found = {**vit_arguments(imported.model), "image_size": spec["vit"]["image_size"]}
    if found != dict(spec["vit"]):
        raise VitlabError(f"{imported.path} now holds another model than when this run began ({found} instead of "
                          f"{dict(spec['vit'])}). Start a new run with --out, or put the original files back.")
    model = build_from_spec(spec, num_classes)
    state = {name: value for name, value in imported.model.state_dict().items() if not name.startswith("heads.head.")}
    state.update({f"heads.head.{name}": value for name, value in model.heads.head.state_dict().items()})
    model.load_state_dict(fit_grid(state, model))
    freeze_all_but_last(model, trainable_blocks)
    return model
