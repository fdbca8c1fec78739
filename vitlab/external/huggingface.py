"""Hugging Face's ViTModel and ViTForImageClassification in torchvision's names.

transformers' `ViTModel` is the original ViT: a class token and learned position embeddings (1, 1 + N, D), pre-norm
layers of separate query, key and value projections and an exact-GELU MLP, a final LayerNorm; the classifier of
`ViTForImageClassification` reads the class token. The mapping is a renaming, with the three projections stacked
into torchvision's fused `in_proj` (q, k, v order, each (D, D) -> (3D, D)):

    embeddings.cls_token, .position_embeddings   -> class_token, encoder.pos_embedding
    embeddings.patch_embeddings.projection       -> conv_proj
    encoder.layer.i.layernorm_before             -> encoder.layers.encoder_layer_i.ln_1
    attention.attention.{query,key,value}        -> self_attention.in_proj_weight, in_proj_bias
    attention.output.dense, layernorm_after      -> self_attention.out_proj, ln_2
    intermediate.dense, output.dense             -> mlp.0, mlp.3
    layernorm, classifier                        -> encoder.ln, heads.head
    pooler.dense (ViTModel; tanh)                -> heads.pre_logits, torchvision's representation layer + Tanh

Files keep these names (`vit.` in front for ViTForImageClassification); transformers 5 names its modules
differently in memory (`layers.i.attention.q_proj`, `mlp.fc1`, ...), and a file saved in those names reads too.
Unlike timm's, Hugging Face's LayerNorms default to eps 1e-12: the torchvision model is built with the config's eps.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from vitlab.errors import VitlabError
from vitlab.external.build import BLOCK, PLAIN_VIT, Translation, Triple, block_count, refuse_misfit, statistics

ARCHITECTURES = ("ViTForImageClassification", "ViTModel")
HALF: Triple = (0.5, 0.5, 0.5)  # ViTImageProcessor's image_mean and image_std when it has no config
LAYER = "encoder.layer.{}."  # a file's name of layer i
# transformers 5's in-memory names inside a layer -> the file names above.
V5_NAMES = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
            "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense",
            "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
PARTS = {"layernorm_before": "ln_1", "attention.output.dense": "self_attention.out_proj", "layernorm_after": "ln_2",
         "intermediate.dense": "mlp.0", "output.dense": "mlp.3"}
TOP = {"embeddings.cls_token": "class_token", "embeddings.position_embeddings": "encoder.pos_embedding",
       "embeddings.patch_embeddings.projection.weight": "conv_proj.weight",
       "embeddings.patch_embeddings.projection.bias": "conv_proj.bias", "layernorm.weight": "encoder.ln.weight",
       "layernorm.bias": "encoder.ln.bias", "classifier.weight": "heads.head.weight",
       "classifier.bias": "heads.head.bias", "pooler.dense.weight": "heads.pre_logits.weight",
       "pooler.dense.bias": "heads.pre_logits.bias"}
OPTIONAL = {"classifier.weight", "classifier.bias", "pooler.dense.weight", "pooler.dense.bias"}
UNUSED = {"embeddings.mask_token"}  # only read for masked image modelling (bool_masked_pos), never in a plain forward


def translate(tensors: dict[str, Tensor], config: dict[str, Any], preprocessor: dict[str, Any] | None,
              name: str) -> Translation:
    """A Hugging Face ViT checkpoint (its config.json and preprocessor_config.json) as a Translation.

    Args:
        tensors: the weights file's state dict, in file names or transformers 5's in-memory names.
        config: config.json (`model_type` "vit", `hidden_act`, `layer_norm_eps`, `image_size`, `id2label`, ...).
        preprocessor: preprocessor_config.json (`image_mean`, `image_std`), or None.
        name: what to call the model in messages and in `ImportedViT.name` (its folder's name).
    """
    _refuse_config(config, name)
    state = _rename(_file_names(tensors), name)
    if "heads.pre_logits.weight" in state and config.get("pooler_act", "tanh") != "tanh":
        raise refuse_misfit(name, f"a pooler with pooler_act={config['pooler_act']!r} (torchvision's is tanh)")
    side, notes = _image_size(config, preprocessor, name)
    mean, std, normalisation_notes = _statistics(preprocessor)
    return Translation(
        state_dict=state, name=name, num_heads=int(config["num_attention_heads"]), image_size=side,
        image_size_from="its config.json's image_size", layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        mean=mean, std=std, classes=_classes(config, state, name), notes=notes + normalisation_notes,
    )


def _refuse_config(config: dict[str, Any], name: str) -> None:
    """Refuse another model type, another class, an activation other than exact GELU, or non-RGB input."""
    if config.get("model_type") != "vit":
        raise VitlabError(f"{name} is a Hugging Face {config.get('model_type')!r} model; vitlab imports model_type "
                          f"'vit' only. {PLAIN_VIT}")
    unknown = [arch for arch in config.get("architectures") or [] if arch not in ARCHITECTURES]
    if unknown:
        raise refuse_misfit(name, f"the class {unknown[0]} (vitlab maps {' and '.join(ARCHITECTURES)})")
    if (act := config.get("hidden_act", "gelu")) != "gelu":
        raise refuse_misfit(name, f"hidden_act={act!r}, not the exact GELU ('gelu') torchvision's MLP computes")
    if config.get("num_channels", 3) != 3:
        raise refuse_misfit(name, f"num_channels={config['num_channels']} (vitlab studies RGB images)")
    if "num_attention_heads" not in config:
        raise VitlabError(f"{name}'s config.json has no num_attention_heads: it is not a ViTConfig. Use the "
                          f"config.json that save_pretrained wrote beside the weights.")


def _file_names(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The names a file holds, without ViTForImageClassification's `vit.` and with transformers 5's renamed back."""
    renamed = {}
    for key, value in tensors.items():
        key = key.removeprefix("vit.")
        if match := re.match(r"layers\.(\d+)\.(.*)$", key):
            part = match.group(2)
            for new, old in V5_NAMES.items():
                part = old + part[len(new):] if part.startswith(new + ".") else part
            key = LAYER.format(match.group(1)) + part
        renamed[key] = value
    return renamed


def _rename(tensors: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    """File names -> torchvision's; q, k, v stacked into in_proj; qkv_bias=False becomes the zeros it computes as."""
    state: dict[str, Tensor] = {}
    table, stacked, missing = dict(TOP), set(), []
    for i in range(block_count(tensors, r"encoder\.layer\.(\d+)\.")):
        table.update({LAYER.format(i) + f"{hf}.{kind}": BLOCK.format(i) + f"{ours}.{kind}"
                      for hf, ours in PARTS.items() for kind in ("weight", "bias")})
        qkv = [LAYER.format(i) + f"attention.attention.{part}" for part in ("query", "key", "value")]
        missing += [f"{key}.weight" for key in qkv if f"{key}.weight" not in tensors]
        if all(f"{key}.weight" in tensors for key in qkv):
            weights = [tensors[f"{key}.weight"] for key in qkv]  # 3 x (D, D)
            zeros = torch.zeros(len(weights[0]), dtype=weights[0].dtype)  # (D,)
            biases = [tensors.get(f"{key}.bias", zeros) for key in qkv]  # 3 x (D,)
            state[BLOCK.format(i) + "self_attention.in_proj_weight"] = torch.cat(weights)  # (3D, D): q, k, v
            state[BLOCK.format(i) + "self_attention.in_proj_bias"] = torch.cat(biases)  # (3D,)
            stacked.update(f"{key}.{kind}" for key in qkv for kind in ("weight", "bias"))
    unknown = sorted(key for key in tensors if key not in table and key not in stacked and key not in UNUSED)
    if unknown:
        raise refuse_misfit(name, f"tensors torchvision's ViT has no place for: {', '.join(unknown[:4])}")
    missing += sorted(key for key in table if key not in tensors and key not in OPTIONAL)
    if missing:
        raise VitlabError(f"The file lacks {', '.join(missing[:4])}: it is not a whole Hugging Face ViT. Use the "
                          f"model's complete weights (the folder save_pretrained wrote).")
    state.update({ours: tensors[key] for key, ours in table.items() if key in tensors})
    return state


def _image_size(config: dict[str, Any], preprocessor: dict[str, Any] | None, name: str) -> tuple[int, tuple[str, ...]]:
    """config.json's image_size (what the position embeddings were made for); a note if the processor resizes
    elsewhere (transformers would then interpolate the position embeddings, which vitlab does not)."""
    sides = config.get("image_size", 224)
    sides = list(sides) if isinstance(sides, (list, tuple)) else [sides, sides]
    if sides[0] != sides[-1]:
        raise VitlabError(f"{name} takes {sides[0]}x{sides[-1]}-px images; vitlab studies square ones.")
    size = (preprocessor or {}).get("size") or {}
    resized = size.get("height") if isinstance(size, dict) else size
    if resized not in (None, sides[0]):
        return int(sides[0]), (f"Image size: {sides[0]} px, the model's; its preprocessor_config.json resizes to "
                               f"{resized} px, which transformers only runs with interpolate_pos_encoding.",)
    return int(sides[0]), ()


def _statistics(preprocessor: dict[str, Any] | None) -> tuple[Triple, Triple, tuple[str, ...]]:
    """(mean, std, notes) from preprocessor_config.json; ViTImageProcessor's defaults (0.5s) when there is none."""
    if preprocessor is None:
        return HALF, HALF, ("Normalisation: no preprocessor_config.json beside the model, so vitlab uses mean and "
                            "std (0.5, 0.5, 0.5), what ViTImageProcessor uses when it has no config.",)
    if preprocessor.get("do_normalize", True) is False:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), ("Normalisation: none (do_normalize is false): pixels in [0, 1].",)
    mean, std = preprocessor.get("image_mean", HALF), preprocessor.get("image_std", HALF)
    return *statistics(mean, std, "preprocessor_config.json"), ()


def _classes(config: dict[str, Any], state: dict[str, Tensor], name: str) -> list[str] | None:
    """id2label in output order (as given, transformers' own LABEL_i included); None for a model without classifier."""
    head = state.get("heads.head.weight")  # (num_labels, D)
    if head is None:
        return None
    labels = {int(index): str(label) for index, label in (config.get("id2label") or {}).items()}
    if not labels:
        return [f"LABEL_{i}" for i in range(head.shape[0])]  # transformers' own names when a config has none
    if sorted(labels) != list(range(head.shape[0])):
        raise VitlabError(f"{name}'s config.json names {len(labels)} labels (id2label) for a classifier of "
                          f"{head.shape[0]} outputs: the config belongs to other weights. Keep each config.json "
                          f"with its weights, or fix id2label.")
    return [labels[i] for i in range(head.shape[0])]
