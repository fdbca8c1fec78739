"""Shared fixtures. The trained demo model is made once per test session and shared by every test that needs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-screenshots", action="store_true",
                     help="tests/test_browser.py: copy its screenshots into docs/ (the README's); without it the "
                     "suite writes only under temporary folders")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (pyproject's addopts) each worker computes on one thread: the workers already fill the
    cores, and two OpenMP threads per worker on 2 cores wait on each other."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture
def update_screenshots(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-screenshots"))


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VITLAB_CACHE folder holding the trained demo run (`<cache>/demo`), trained on first use.

    Set VITLAB_TEST_CACHE to keep it between local test runs; CI starts clean and trains it once per worker (about a
    minute). Each pytest-xdist worker keeps its own folder under VITLAB_TEST_CACHE: two workers training into one run
    folder at once would have the second refused (the folder is in use). The variable is exported so lessons and the
    app, even in subprocesses, find the same model.
    """
    kept, worker = os.environ.get("VITLAB_TEST_CACHE"), os.environ.get("PYTEST_XDIST_WORKER")
    cache = Path(kept) / (worker or "") if kept else tmp_path_factory.mktemp("vitlab_cache")
    os.environ["VITLAB_CACHE"] = str(cache)
    from vitlab.training.demo import load_demo_model

    load_demo_model(cache)
    return cache


@pytest.fixture(scope="session")
def demo_model(demo_cache: Path):
    """(model, splits): the trained demo vit_tiny in eval mode and the photo splits it learned."""
    from vitlab.training.demo import load_demo_model

    return load_demo_model(demo_cache)


def write_fake_cifar100(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict:
    """Write root/cifar-100-python/{train,test,meta} in the real files' pickle layout; return what was written.

    Each image is a row of 3072 bytes: 1024 red, then 1024 green, then 1024 blue, each 32x32 row-major. The real
    files are Python 2 pickles whose byte-string keys torchvision reads with encoding="latin1", which makes them
    Python 3 str keys ("data", "fine_labels", ...): str keys here give torchvision exactly what it sees there.
    """
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, size=n).tolist()
        entry = {"filenames": [f"{i}.png" for i in range(n)], "batch_label": split, "fine_labels": fine,
                 "coarse_labels": [label // 5 for label in fine], "data": data}
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
        written[f"{split}_data"], written[f"{split}_labels"] = data, np.array(fine)
    meta = {"fine_label_names": [f"class_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"super_{i:02d}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


@pytest.fixture
def trust_fake_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fabricated files cannot match the real MD5 sums: make torchvision's checks pass, in the test only."""
    import torchvision

    monkeypatch.setattr(torchvision.datasets.CIFAR100, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)


@pytest.fixture
def fake_cifar100(tmp_path: Path, trust_fake_files: None) -> Path:
    """A data folder holding a 60-train / 20-test CIFAR-100 in the real layout, trusted by torchvision."""
    root = tmp_path / "cifar_data"
    write_fake_cifar100(root)
    return root


@pytest.fixture
def single_thread():
    """One intra-op thread for a test of small tensors: on a busy 2-core machine two OpenMP threads waiting on each
    other make every small op many times slower. Restored afterwards; results do not depend on it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def shortcut():
    """vitlab.teaching.shortcut's model whose class is set only by a marker at known patches, trained once per session.

    Trained on one thread: on a busy 2-core machine that is several times faster for a model this small."""
    import torch

    from vitlab.teaching.shortcut import train_shortcut_model

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trained = train_shortcut_model()
    finally:
        torch.set_num_threads(previous)
    assert trained.accuracy >= 0.95, f"the shortcut model did not learn its marker ({trained.accuracy:.1%})"
    return trained


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Hugging Face classifier saved by transformers (tests/vit_sources.py): 8-px patches."""
    pytest.importorskip("transformers")
    from vit_sources import save_hf_classifier

    folder = tmp_path_factory.mktemp("imported") / "vit-hf"
    save_hf_classifier(folder)
    return folder
