"""The optional libraries behind some explanation methods, imported only when a method needs them.

pytorch-grad-cam (`pip install grad-cam`, imported as `pytorch_grad_cam`) holds the reference implementations of
Grad-CAM and ScoreCAM; Captum holds integrated gradients; SciPy's sparse solver fills ROAD's removed pixels. None is
needed by the rest of vitlab, so they come with the `explain` extra: `pip install "vitlab[explain]"`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vitlab.errors import VitlabError

# The import name of each optional library -> the name pip installs it under.
EXPLAIN_PACKAGES = {"pytorch_grad_cam": "grad-cam", "captum": "captum", "scipy": "scipy"}


def require_extra(module: str, needed_for: str) -> ModuleType:
    """Import `module` (e.g. "pytorch_grad_cam.utils.model_targets"), or say which extra to install.

    Raises:
        VitlabError: the library is not installed; the message names `pip install "vitlab[explain]"`.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        raise VitlabError(
            f"{needed_for} needs the {EXPLAIN_PACKAGES.get(top, top)} library, which is not installed "
            f"({error}). Install vitlab's explain extra: pip install \"vitlab[explain]\"."
        ) from None


def missing_extra(module: str, needed_for: str) -> str | None:
    """What `require_extra(module, needed_for)` would raise, as text, or None when `module` imports."""
    try:
        require_extra(module, needed_for)
    except VitlabError as error:
        return str(error)
    return None
