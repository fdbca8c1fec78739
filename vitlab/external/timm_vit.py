"""timm's ViTs in torchvision's names: the vit_{tiny,small,base,large}_patch{16,32}_{224,384} family.

timm's `VisionTransformer` with its defaults computes what torchvision's does: a class token and learned position
embeddings (1, 1 + N, D) added together, pre-norm blocks (LayerNorm eps 1e-6, fused qkv in q, k, v order, exact
GELU), a final LayerNorm and the class token read for the head. So the mapping is a renaming:

    cls_token, pos_embed, patch_embed.proj   -> class_token, encoder.pos_embedding, conv_proj
    blocks.i.norm1, attn.qkv, attn.proj      -> encoder.layers.encoder_layer_i.ln_1, .self_attention.in_proj_*, out_proj
    blocks.i.norm2, mlp.fc1, mlp.fc2         -> encoder.layers.encoder_layer_i.ln_2, .mlp.0, .mlp.3
    norm, head                               -> encoder.ln, heads.head

The head count is in no tensor: it comes from the name (tiny 3, small 6, base 12, large 16) or timm's model_args.
Whatever timm adds to that design (a distillation or register tokens, average pooling, layer scale, qk-norm, a
pre-norm, attention pooling, relative positions) changes the function, and is refused by name.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor
from torchvision.models import ViT_B_16_Weights

from vitlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vitlab.errors import VitlabError
from vitlab.external.build import BLOCK, PLAIN_VIT, Translation, Triple, block_count, refuse_misfit, statistics

FAMILY = re.compile(r"^(?:timm/)?(vit_(tiny|small|base|large)_patch(16|32)_(224|384))(?:\.(\w+))?$")
# width, blocks, heads of each size (timm's vit_* builders; the head count is in no tensor)
SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
LAYER_NORM_EPS = 1e-6  # timm's ViT default, torchvision's too
# timm's pretrained_cfg for the family's tags (tests/test_external.py checks this against timm's own table): every tag
# but these normalises with (0.5, 0.5, 0.5), as the AugReg weights timm loads by default for each name do.
TAG_STATISTICS: dict[str, tuple[Triple, Triple]] = {
    "dino": (IMAGENET_MEAN, IMAGENET_STD), "mae": (IMAGENET_MEAN, IMAGENET_STD),
    "bamboo": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # CLIP's statistics
}
HALF: Triple = (0.5, 0.5, 0.5)

# Tensors that only exist when the model computes something torchvision's ViT does not.
MISFIT_TENSORS = (
    (r"^dist_token$|^head_dist\.", "a distillation token (DeiT's distilled models predict with two tokens)"),
    (r"^reg_token$", "register tokens (extra learned tokens beside the class token)"),
    (r"^fc_norm\.", "global average pooling with fc_norm (the prediction pools the patch tokens, not the class token)"),
    (r"\.ls[12]\.gamma$|\.gamma_[12]$", "layer scale (init_values: each residual branch scaled per channel)"),
    (r"\.attn\.[qk]_norm\.", "qk-norm (queries and keys normalised before attention)"),
    (r"^norm_pre\.", "a pre-norm (norm_pre: a LayerNorm before the first block)"),
    (r"^attn_pool\.", "attention pooling (global_pool='map')"),
    (r"relative_position", "relative position bias"),
    (r"\.attn\.[qv]_bias$", "separate query and value biases (BEiT-style attention)"),
    (r"\.mlp\.fc1_[gx]\.", "a gated MLP (SwiGLU)"),
    (r"\.(attn|mlp)\.norm\.|^patch_embed\.norm\.", "an extra LayerNorm inside a block or after the patch embedding"),
)
# model_args (timm's config.json) that change the function unless they hold these values.
ARGS_THAT_MAP = {
    "global_pool": ("token",), "class_token": (True,), "no_embed_class": (False,), "pre_norm": (False,),
    "fc_norm": (None, False), "init_values": (None,), "qk_norm": (False,), "reg_tokens": (0,), "in_chans": (3,),
    "act_layer": (None, "gelu"), "final_norm": (True,), "dynamic_img_pad": (False,),
}
ARGS_READ = {"img_size", "patch_size", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias"}
ARGS_EVAL_ONLY = {"drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate",
                  "drop_path_rate", "weight_init", "fix_init", "dynamic_img_size"}  # no effect at eval, native size


def translate(tensors: dict[str, Tensor], config: dict[str, Any] | None, model_name: str | None) -> Translation:
    """A timm ViT state dict (and its config.json, if any) as a Translation into torchvision's names.

    Args:
        tensors: timm's state dict (`cls_token`, `pos_embed`, `blocks.i.*`, ...).
        config: timm's config.json (`architecture`, `num_classes`, `model_args`, `pretrained_cfg`), or None.
        model_name: a timm name such as "vit_base_patch16_224" or "vit_small_patch16_224.dino"; None: the config's.

    Raises:
        VitlabError: an unknown name, a model that does not map (named), or shapes the name contradicts.
    """
    config = config or {}
    _refuse_misfits(tensors, model_name or config.get("architecture") or "This timm model")
    name, tag, expected = _expected_shape(config, model_name)
    state = _rename(tensors, name)
    found = {"embed_dim": state["class_token"].shape[-1], "patch_size": state["conv_proj.weight"].shape[-1],
             "depth": block_count(state, r"encoder\.layers\.encoder_layer_(\d+)\.ln_1\.weight"),
             "mlp_dim": state[BLOCK.format(0) + "mlp.0.weight"].shape[0]}
    if found != {key: expected[key] for key in found}:
        raise VitlabError(
            f"The file holds {_shape_words(found)}, but {name} is {_shape_words(expected)}. Give the name of the "
            f"model it was saved from, or keep timm's config.json beside it (save_for_hf writes model_args)."
        )
    image_size, image_size_from = _image_size(config, name)
    mean, std, notes = _statistics(config, tag)
    classes, class_notes = _classes(config, state, name)
    return Translation(
        state_dict=state, name=f"{name}.{tag}" if tag else name, num_heads=expected["num_heads"],
        image_size=image_size, image_size_from=image_size_from, layer_norm_eps=LAYER_NORM_EPS, mean=mean, std=std,
        classes=classes, notes=notes + class_notes,
    )


def _expected_shape(config: dict[str, Any], model_name: str | None) -> tuple[str, str | None, dict[str, int]]:
    """(architecture, pretrained tag, shape): the name's row of SIZES, with model_args' overrides."""
    given = model_name or config.get("architecture")
    if not given:
        raise VitlabError("This timm state dict comes without a config.json, so vitlab cannot tell which ViT it is "
                          "(the head count is in no tensor). Pass the timm name: import_vit(path, "
                          "model_name='vit_base_patch16_224'), or keep timm's config.json beside the file.")
    match = FAMILY.match(given)
    if match is None:
        raise VitlabError(f"{given!r} is not a timm ViT vitlab imports. {PLAIN_VIT}")
    name, size, patch, _, tag = match.groups()
    if model_name and config.get("architecture") not in (None, name):
        raise VitlabError(f"model_name says {name}, but the config.json beside the weights says "
                          f"{config['architecture']}. Drop model_name to use the config, or fix it.")
    tag = tag or (config.get("pretrained_cfg") or {}).get("tag")
    width, depth, heads = SIZES[size]
    shape = {"embed_dim": width, "depth": depth, "patch_size": int(patch), "num_heads": heads}
    args = config.get("model_args") or {}
    _refuse_args({"global_pool": config.get("global_pool", "token"), **args}, name)
    shape.update({key: _side(args[key], f"config.json's model_args {key}", name) for key in shape if key in args})
    shape["mlp_dim"] = round(shape["embed_dim"] * float(args.get("mlp_ratio", 4.0)))
    return name, tag, shape


def _refuse_args(args: dict[str, Any], name: str) -> None:
    """Refuse config.json options that change the function (global_pool='avg', init_values=1e-5, ...)."""
    for key, value in args.items():
        if key in ARGS_THAT_MAP and value not in ARGS_THAT_MAP[key]:
            raise refuse_misfit(name, f"{key}={value!r} in its config.json")
        if key not in ARGS_THAT_MAP and key not in ARGS_READ and key not in ARGS_EVAL_ONLY:
            raise refuse_misfit(name, f"{key}={value!r} in its config.json, an option vitlab does not "
                                      f"know to be harmless")


def _refuse_misfits(tensors: dict[str, Tensor], name: str) -> None:
    """Refuse, naming each of them, what only a model torchvision's ViT cannot compute has."""
    misfits = [f"{what} ({', '.join(found[:2])})" for pattern, what in MISFIT_TENSORS
               if (found := sorted(key for key in tensors if re.search(pattern, key)))]
    if misfits:
        raise refuse_misfit(name, "; ".join(misfits))
    if "cls_token" not in tensors:
        raise refuse_misfit(name, "no class token (class_token=False: the prediction pools the patch tokens)")
    if "pos_embed" not in tensors:
        raise refuse_misfit(name, "no learned absolute position embedding (pos_embed: rotary or relative positions)")
    tokens = tensors["pos_embed"].shape[1]  # (1, 1 + N, D), or (1, N, D) without the class token's position
    if round(tokens**0.5) ** 2 == tokens:
        raise refuse_misfit(name, f"position embeddings for the {tokens} patches only, none for the class token "
                                  f"(no_embed_class=True: the class token is added after the positions)")


def _rename(tensors: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    """timm's names -> torchvision's; a missing qkv bias (qkv_bias=False) becomes the zeros it computes as."""
    table = {"cls_token": "class_token", "pos_embed": "encoder.pos_embedding", "norm.weight": "encoder.ln.weight",
             "norm.bias": "encoder.ln.bias", "patch_embed.proj.weight": "conv_proj.weight",
             "patch_embed.proj.bias": "conv_proj.bias", "head.weight": "heads.head.weight",
             "head.bias": "heads.head.bias"}
    parts = {"norm1": "ln_1", "attn.proj": "self_attention.out_proj", "norm2": "ln_2", "mlp.fc1": "mlp.0",
             "mlp.fc2": "mlp.3"}
    tensors = dict(tensors)
    for i in range(block_count(tensors, r"blocks\.(\d+)\.")):
        table.update({f"blocks.{i}.{timm}.{kind}": BLOCK.format(i) + f"{ours}.{kind}" for timm, ours in parts.items()
                      for kind in ("weight", "bias")})
        table[f"blocks.{i}.attn.qkv.weight"] = BLOCK.format(i) + "self_attention.in_proj_weight"  # (3D, D): q, k, v
        table[f"blocks.{i}.attn.qkv.bias"] = BLOCK.format(i) + "self_attention.in_proj_bias"  # (3D,)
        qkv = tensors.get(f"blocks.{i}.attn.qkv.weight")
        if qkv is not None:
            tensors.setdefault(f"blocks.{i}.attn.qkv.bias", torch.zeros(qkv.shape[0], dtype=qkv.dtype))
    optional = {"head.weight", "head.bias"}  # a headless model (num_classes=0, DINO) has none
    missing = sorted(key for key in table if key not in tensors and key not in optional)
    unknown = sorted(key for key in tensors if key not in table)
    if unknown:
        raise refuse_misfit(name, f"tensors torchvision's ViT has no place for: {', '.join(unknown[:4])}")
    if missing:
        raise VitlabError(f"The file lacks {', '.join(missing[:4])}: it is not a whole timm ViT state dict. Use the "
                          f"model's complete weights (model.state_dict(), or timm's model.safetensors).")
    return {table[key]: value for key, value in tensors.items()}


def _shape_words(shape: dict[str, int]) -> str:
    return (f"{shape['depth']} blocks of width {shape['embed_dim']} with {shape['patch_size']}-px patches and "
            f"MLPs of width {shape['mlp_dim']}")


def _image_size(config: dict[str, Any], name: str) -> tuple[int, str]:
    """The side in pixels: model_args' img_size, else pretrained_cfg's input_size, else the name's (_224, _384)."""
    size = (config.get("model_args") or {}).get("img_size")
    if size is not None:
        where = "its config.json's model_args img_size"
    elif (input_size := (config.get("pretrained_cfg") or {}).get("input_size")) is not None:
        size = input_size[1:] if isinstance(input_size, (list, tuple)) else input_size  # (3, H, W) -> (H, W)
        where = "its config.json's pretrained_cfg input_size"
    else:
        return int(name.rsplit("_", 1)[1]), f"its name ({name})"
    return _side(size, where, name), where


def _side(value: Any, where: str, name: str) -> int:
    """One whole number from a number or a square pair ([64, 64]: timm's img_size and patch_size take both)."""
    sides = list(value) if isinstance(value, (list, tuple)) else [value]
    if not sides or not all(isinstance(side, int) and side > 0 for side in sides) or len(set(sides)) != 1:
        raise VitlabError(f"{name}: {where} is {value!r}, but vitlab imports square images and patches of whole "
                          f"pixels. Fix the config.json, or use a model of square inputs.")
    return sides[0]


def _statistics(config: dict[str, Any], tag: str | None) -> tuple[Triple, Triple, tuple[str, ...]]:
    """(mean, std, notes): pretrained_cfg's, else timm's for the tag (TAG_STATISTICS), said in a note."""
    cfg = config.get("pretrained_cfg") or {}
    if "mean" in cfg and "std" in cfg:
        return *statistics(cfg["mean"], cfg["std"], "config.json's pretrained_cfg"), ()
    mean, std = TAG_STATISTICS.get(tag or "", (HALF, HALF))
    return mean, std, (f"Normalisation: no pretrained_cfg gives mean/std, so vitlab uses timm's for "
                       f"{'tag ' + repr(tag) if tag else 'the name'}: mean {mean}, std {std} (timm's DINO, MAE and "
                       f"BAMBOO weights have their own; every other tag of the family, (0.5, 0.5, 0.5)).",)


def _classes(config: dict[str, Any], state: dict[str, Tensor], name: str) -> tuple[list[str] | None, tuple[str, ...]]:
    """One name per output unit: config.json's label_names (label_descriptions when it has them); else
    ImageNet-1k's for a 1000-class head, as timm assumes; else generic. None for a headless model."""
    head = state.get("heads.head.weight")  # (num_classes, D)
    count = 0 if head is None else head.shape[0]
    if config.get("num_classes", count) != count:
        raise VitlabError(f"{name}'s config.json says {config['num_classes']} classes but its head has {count} "
                          f"outputs: the config belongs to other weights. Keep each config.json with its weights.")
    if head is None:
        return None, ()
    names = config.get("label_names")
    if isinstance(names, dict):
        names = [names.get(str(i), names.get(i)) for i in range(count)]
    if names:
        if len(names) != count or None in names:
            raise VitlabError(f"{name}'s config.json has {len(names)} label_names for {count} outputs. Fix the "
                              f"config's label_names, or delete them to get generic class names.")
        described = config.get("label_descriptions") or {}
        return [str(described.get(label, label)) for label in names], ()
    if count == 1000:
        return list(ViT_B_16_Weights.IMAGENET1K_V1.meta["categories"]), (
            "Class names: none in the files; a 1000-class head is ImageNet-1k's, as timm assumes, so vitlab uses "
            "ImageNet-1k's names (torchvision's list, in the same order).",)
    return [f"class {i}" for i in range(count)], (f"Class names: none in the files, so generic ones for the "
                                                  f"{count} outputs ('class 0', ...).",)
