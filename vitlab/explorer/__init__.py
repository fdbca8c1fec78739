"""The attention explorer's non-UI work (split into modules in the next commit)."""

from vitlab.explorer.views import *  # noqa: F403
from vitlab.explorer.views import _MODEL_LOCK, _draw_views  # noqa: F401
