"""vitlab: learn how Vision Transformers see.

    from vitlab import build_model, capture
    model = build_model("vit_tiny", num_classes=4, pretrained=False)
    with capture(model) as cap:
        logits = model(images)              # (B, 4)
    cap.attentions[0].shape                 # (B, heads, tokens, tokens)
"""

from vitlab.attention import (
    attention_mass_ratio,
    cls_attention,
    gradient_weighted_attention,
    mean_attention_distance,
    patch_filter_components,
    pointing_game,
    position_embedding_similarity,
    query_attention,
    rollout,
)
from vitlab.capture import Captured, Geometry, capture, capture_forward, geometry
from vitlab.errors import VitlabError
from vitlab.external import ImportedViT, import_vit
from vitlab.model import ARCHS, build_model, count_parameters

__all__ = [
    "ARCHS",
    "Captured",
    "Geometry",
    "ImportedViT",
    "VitlabError",
    "attention_mass_ratio",
    "build_model",
    "capture",
    "capture_forward",
    "cls_attention",
    "count_parameters",
    "geometry",
    "import_vit",
    "gradient_weighted_attention",
    "mean_attention_distance",
    "patch_filter_components",
    "pointing_game",
    "position_embedding_similarity",
    "query_attention",
    "rollout",
]
