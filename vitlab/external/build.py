"""The torchvision ViT that a timm or Hugging Face checkpoint becomes: the hand-over and the build.

A translation (`vitlab.external.timm_vit`, `vitlab.external.huggingface`) renames the source's tensors to
torchvision's names and adds what no tensor says: the head count, the image size, the LayerNorm eps, the
normalisation and the class names.
`build_vit` reads every other shape from the tensors themselves (patch size, width, depth, MLP width, head), so the
model cannot disagree with its weights, and builds a `torchvision.models.VisionTransformer` around them:

    tensors = read_tensors(Path("model.safetensors"))          # the source's names, any float dtype
    model = build_vit(Translation(state_dict=..., ...))        # eval mode, float32, the source's function

Why torchvision's class: every analysis in vitlab hooks its module names (`vitlab.capture`), so an imported model is
studied exactly like the models vitlab trains.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn
from torchvision.models import VisionTransformer

from vitlab.errors import VitlabError
from vitlab.model import load_state_dict_file

Triple = tuple[float, float, float]
BLOCK = "encoder.layers.encoder_layer_{}."  # torchvision's name of encoder block i
PLAIN_VIT = ("Import a plain ViT instead (class token, learned absolute position embeddings, pre-norm blocks of "
             "exact-GELU MLPs, the class token read for the prediction: timm's vit_{tiny,small,base,large}_patch{16,32}"
             "_{224,384} family, or Hugging Face's ViTModel / ViTForImageClassification), or study this model in its "
             "own library.")


@dataclass(frozen=True)
class Translation:
    """A checkpoint in torchvision's names and what its tensors do not say: a translation's, for build_vit."""

    state_dict: dict[str, Tensor]  # torchvision's names: class_token, conv_proj.*, encoder.*, heads.*
    name: str  # the model's name in its source: "vit_small_patch16_224.dino", a Hugging Face folder's name
    num_heads: int  # no tensor holds it: timm's name table or model_args, Hugging Face's config
    image_size: int  # pixels per side
    image_size_from: str  # where image_size was read, for the message when the position embeddings disagree
    layer_norm_eps: float  # timm's 1e-6 (torchvision's too), or Hugging Face's config (its default is 1e-12)
    mean: Triple  # per-channel normalisation of pixels in [0, 1], as the source trained with
    std: Triple
    classes: list[str] | None  # one name per output unit; None: headless (the model returns features)
    notes: tuple[str, ...] = ()  # every value chosen because the files did not say, and why


def read_tensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a state-dict file: `.safetensors` through the safetensors library, anything else through
    `torch.load(weights_only=True)` (`vitlab.model.load_state_dict_file`: CRC-32s checked, never pickled code)."""
    if path.suffix != ".safetensors":
        tensors = load_state_dict_file(path)
        if isinstance(tensors.get("state_dict"), dict):
            tensors = tensors["state_dict"]  # a checkpoint that wraps its weights, as some timm scripts save them
    else:
        try:
            tensors = safetensors.torch.load_file(path, device="cpu")
        except Exception as error:  # SafetensorError for a damaged header, OSError for an unreadable file
            raise VitlabError(f"{path} is not a readable safetensors file ({type(error).__name__}: "
                              f"{str(error)[:160]}). It is damaged or truncated: use an intact copy.") from None
    foreign = [name for name, value in tensors.items() if not isinstance(value, Tensor)]
    if foreign:
        raise VitlabError(f"{path} holds {foreign[0]!r}, a {type(tensors[foreign[0]]).__name__}, beside its tensors: "
                          f"it is not a state dict. Save the weights alone: torch.save(model.state_dict(), path).")
    return tensors


def refuse_misfit(name: str, what: str) -> VitlabError:
    """The error for a model that has something torchvision's VisionTransformer cannot compute."""
    return VitlabError(f"{name} does not map onto torchvision's VisionTransformer: it has {what}. torchvision's "
                       f"ViT does not compute that, and vitlab imports a model only when it keeps its function "
                       f"exactly. {PLAIN_VIT}")


def statistics(mean: Any, std: Any, where: str) -> tuple[Triple, Triple]:
    """(mean, std) as 3 floats each, from a number or 3 numbers per field; a VitlabError naming `where` otherwise."""
    triples = [[value] * 3 if isinstance(value, (int, float)) else value for value in (mean, std)]
    try:
        mean, std = (tuple(float(v) for v in triple) for triple in triples)
    except (TypeError, ValueError):
        mean = std = ()
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise VitlabError(f"{where} gives mean {triples[0]!r} and std {triples[1]!r}: not 3 finite numbers each "
                          f"with std positive. Fix them in that file, or delete them to get the default.")
    return mean, std


def block_count(tensors: dict[str, Tensor], pattern: str) -> int:
    """How many blocks `tensors` holds: the indices `pattern` (a regex with one group for the index) matches."""
    indices = {int(match.group(1)) for key in tensors if (match := re.match(pattern, key))}
    if indices != set(range(len(indices))):
        raise VitlabError(f"The file's blocks are numbered {sorted(indices)}: some are missing, so it is not a whole "
                          f"model. Use the complete state dict.")
    return len(indices)


def build_vit(translation: Translation) -> VisionTransformer:
    """A torchvision VisionTransformer holding `translation.state_dict`, float32, in eval mode.

    The head follows the tensors: `heads.head` a Linear when the state dict has one, else `nn.Identity()` (a
    headless model returns the class token's final features, (B, hidden), and `num_classes` is 0); with
    `heads.pre_logits` (Hugging Face's pooler) the heads are torchvision's own representation layer, Linear + Tanh.
    """
    state = {name: value.float() if value.is_floating_point() else value
             for name, value in translation.state_dict.items()}
    hidden, channels, patch, patch_w = state["conv_proj.weight"].shape  # (D, 3, p, p)
    _check_geometry(translation, state, patch, (channels, patch_w))
    num_classes = state["heads.head.weight"].shape[0] if "heads.head.weight" in state else 0
    pre_logits = state.get("heads.pre_logits.weight")  # (R, D): Hugging Face's pooler
    with torch.device("meta"):  # no memory, no random init: every parameter comes from `state` (assign=True)
        model = VisionTransformer(
            image_size=translation.image_size, patch_size=patch, hidden_dim=hidden, num_heads=translation.num_heads,
            num_layers=block_count(state, r"encoder\.layers\.encoder_layer_(\d+)\.ln_1\.weight"),
            mlp_dim=state[BLOCK.format(0) + "mlp.0.weight"].shape[0], num_classes=max(num_classes, 1),
            representation_size=None if pre_logits is None else pre_logits.shape[0],
            norm_layer=partial(nn.LayerNorm, eps=translation.layer_norm_eps),
        )
    if num_classes == 0:
        model.heads.head = nn.Identity()
        model.num_classes = 0
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        detail = str(error).splitlines()[-1].strip()
        raise VitlabError(f"The tensors of {translation.name} do not fit one ViT shape ({detail[:200]}): blocks of "
                          f"different widths, or a damaged file. Use the model's own, complete weights.") from None
    return model.eval()


def vit_arguments(model: VisionTransformer) -> dict[str, Any]:
    """torchvision's VisionTransformer arguments that rebuild `model`'s shape, head aside (plain values, for JSON).

    image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, layer_norm_eps (its LayerNorms' eps: 1e-6
    for torchvision and timm, a Hugging Face config's own) and representation_size (None, or the width of
    `heads.pre_logits`, Hugging Face's pooler). `build_from_arguments` builds the model back.
    """
    return {"image_size": model.image_size, "patch_size": model.patch_size, "num_layers": len(model.encoder.layers),
            "num_heads": model.encoder.layers[0].self_attention.num_heads, "hidden_dim": model.hidden_dim,
            "mlp_dim": model.mlp_dim, "layer_norm_eps": model.encoder.ln.eps,
            "representation_size": model.representation_size}


def build_from_arguments(arguments: Mapping[str, Any], num_classes: int) -> VisionTransformer:
    """A VisionTransformer of `vit_arguments`' shape with a `num_classes` head, randomly initialised (torch's
    global generator), in training mode: load its weights next."""
    settings = dict(arguments)
    eps = float(settings.pop("layer_norm_eps"))
    return VisionTransformer(**settings, num_classes=num_classes, norm_layer=partial(nn.LayerNorm, eps=eps))


def _check_geometry(translation: Translation, state: dict[str, Tensor], patch: int, shape: tuple[int, int]) -> None:
    """Refuse what torchvision's ViT cannot hold: not RGB, non-square patches, a grid the image size contradicts."""
    channels, patch_w = shape
    if channels != 3 or patch_w != patch:
        raise VitlabError(f"{translation.name}'s patch embedding takes {channels}-channel {patch}x{patch_w} patches; "
                          f"vitlab studies RGB images cut into square patches. {PLAIN_VIT}")
    hidden = state["conv_proj.weight"].shape[0]
    if hidden % translation.num_heads:
        raise VitlabError(f"{translation.name}: {translation.num_heads} heads do not divide its width {hidden}. "
                          f"Give the model's real name (or its config.json) so that the head count is right.")
    tokens = state["encoder.pos_embedding"].shape[1] - 1  # (1, 1 + g*g, D) -> g*g patch positions
    grid = round(tokens**0.5)
    size = translation.image_size
    if grid * grid != tokens or size != grid * patch:
        found = f"a {grid}x{grid} grid, so {grid * patch}-px images" if grid * grid == tokens else "no square grid"
        raise VitlabError(
            f"{translation.name}'s position embeddings hold {tokens} patch positions ({found} at {patch}-px patches), "
            f"but {translation.image_size_from} says {size} px. The weights and what describes them disagree: give "
            f"the model's own name or config.json (timm's save_for_hf writes its img_size into model_args)."
        )
