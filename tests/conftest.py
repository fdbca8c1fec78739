"""Shared fixtures. The trained demo model is made once per test session and shared by every test that needs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VITLAB_CACHE folder holding the trained demo run (`<cache>/demo`), trained on first use.

    Set VITLAB_TEST_CACHE to keep it between local test runs; CI starts clean and trains it once (about a minute).
    The variable is exported so lessons and the app, even in subprocesses, find the same model.
    """
    cache = Path(os.environ.get("VITLAB_TEST_CACHE") or tmp_path_factory.mktemp("vitlab_cache"))
    os.environ["VITLAB_CACHE"] = str(cache)
    from vitlab.demo import load_demo_model

    load_demo_model(cache)
    return cache


@pytest.fixture(scope="session")
def demo_model(demo_cache: Path):
    """(model, splits): the trained demo vit_tiny in eval mode and the shapes splits."""
    from vitlab.demo import load_demo_model

    return load_demo_model(demo_cache)
