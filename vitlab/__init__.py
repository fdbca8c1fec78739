"""vitlab: learn how Vision Transformers see.

    from vitlab import build_model, capture, rollout
    model = build_model("vit_tiny", num_classes=4, pretrained=False)
    with capture(model) as cap:
        logits = model(images)              # (B, 4)
    cap.attentions[0].shape                 # (B, heads, tokens, tokens)
    rollout(cap.attentions)                 # (B, patches)

The layers, each importing only from those below it (tests/test_structure.py checks this):

    vitlab/bench/        speed, measured against the notebook's way
    vitlab/teaching/     what the lessons share;  vitlab/explorer/  the attention explorer's work
    vitlab/training/     the fine-tuning and pretraining jobs, checkpoints, the demo model
    vitlab/analysis/     one analysis per paper: attention, localization, structure, lens, probes, ablation, ...,
                         and explain (every relevance map) with the tests of a map (faithfulness, randomization),
                         all of them at once in report (explain_report)
    core (this folder)   model, archs, capture, data/, plotting, the command-line kit, errors, safe files

"The notebook", wherever vitlab's code says it, is the public notebook vitlab wraps: github.com/mbastola/
neural-nets-in-python, folder advanced-concepts/vision-transformers (README.md and vit.py), which fine-tunes
torchvision's ImageNet ViT-B/16 on CIFAR-100 with the last 3 blocks and a new head trained.

This file re-exports what a user calls; `python -m vitlab.finetune` and `python -m vitlab.pretrain` are the commands.
"""

from typing import Any

from vitlab.analysis.ablation import ablate_heads, ablation_table
from vitlab.analysis.attention import (
    cls_attention,
    fuse_heads,
    gradient_weighted_attention,
    mean_attention_distance,
    query_attention,
    rollout,
)
from vitlab.analysis.explain import METHODS as EXPLAIN_METHODS
from vitlab.analysis.explain import explain
from vitlab.analysis.faithfulness import CurveResult, deletion_curve, insertion_curve, road_curve
from vitlab.analysis.lens import logit_lens, logit_lens_forward
from vitlab.analysis.localization import attention_mass_ratio, object_patches, pointing_game, random_maps
from vitlab.analysis.norms import high_norm_tokens, token_norms
from vitlab.analysis.probes import features_by_depth, fit_probe, probes_by_depth
from vitlab.analysis.projections import patch_pca_rgb, pca
from vitlab.analysis.randomization import RandomizationResult, randomization_check
from vitlab.analysis.report import ExplainReport, explain_report
from vitlab.analysis.structure import (
    distance_ratios,
    patch_filter_components,
    position_embedding_similarity,
    position_embedding_spearman,
)
from vitlab.capture import Captured, Geometry, capture, capture_forward, geometry
from vitlab.data import BatchTransform, load_dataset
from vitlab.errors import VitlabError
from vitlab.external import ImportedViT, import_vit
from vitlab.model import ARCHS, build_model, count_parameters

__all__ = [
    "ARCHS",
    "BatchTransform",
    "Captured",
    "CurveResult",
    "EXPLAIN_METHODS",
    "ExplainReport",
    "Geometry",
    "ImportedViT",
    "RandomizationResult",
    "VitlabError",
    "ablate_heads",
    "ablation_table",
    "attention_mass_ratio",
    "build_model",
    "capture",
    "capture_forward",
    "cls_attention",
    "count_parameters",
    "deletion_curve",
    "distance_ratios",
    "explain",
    "explain_report",
    "features_by_depth",
    "fit_probe",
    "fuse_heads",
    "geometry",
    "gradient_weighted_attention",
    "high_norm_tokens",
    "import_vit",
    "insertion_curve",
    "load_dataset",
    "load_demo_model",
    "load_trained_model",
    "logit_lens",
    "logit_lens_forward",
    "mean_attention_distance",
    "object_patches",
    "patch_filter_components",
    "patch_pca_rgb",
    "pca",
    "pointing_game",
    "position_embedding_similarity",
    "position_embedding_spearman",
    "probes_by_depth",
    "query_attention",
    "random_maps",
    "randomization_check",
    "road_curve",
    "rollout",
    "token_norms",
]

# The training layer imports matplotlib (its run folders hold figures): about a second that `import vitlab` need not
# pay, so these names load on first use (PEP 562).
_TRAINING_NAMES = {"load_demo_model": "vitlab.training.demo", "load_trained_model": "vitlab.training.checkpoint"}


def __getattr__(name: str) -> Any:
    if name not in _TRAINING_NAMES:
        raise AttributeError(f"module 'vitlab' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_TRAINING_NAMES[name]), name)
