"""`--cache-trunk`: the cached trunk computes what the model computes, trains what the model trains, and refuses
the settings where a cache would be wrong (rotation, nothing frozen, torchrun, too little memory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vitlab.data import BatchTransform, ImageDataset
from vitlab.errors import VitlabError
from vitlab.model import build_model, freeze_all_but_last
from vitlab.training import finetune, trunk_cache
from vitlab.training.checkpoint import load_checkpoint
from vitlab.training.train import RECIPES, make_criterion, train_step
from vitlab.training.trunk_cache import TrainableTop, TrunkCache, build_cache, cache_trunk, trunk_forward

# From a random init at lr 1e-3, so the cache is tested without the shipped base (the demo fixture covers base + cache).
CACHED = ["--preset", "demo", "--dataset", "shapes",
          "--pretrained", "none", "--lr", "1e-3", "--trainable-blocks", "2", "--cache-trunk",
          "--subset", "128", "--epochs", "2", "--batch-size", "32", "--quiet"]


def _tiny(trainable_blocks: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("vit_tiny", 5, pretrained=False, trainable_blocks=0, progress=False)
    freeze_all_but_last(model, trainable_blocks)
    return model.eval()


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("trainable_blocks", [0, 1, 3])
def test_top_of_trunk_is_the_model(trainable_blocks: int) -> None:
    model = _tiny(trainable_blocks)
    inputs = BatchTransform(32, train=False)(_images(6))  # (6, 3, 32, 32)
    frozen = trunk_cache.frozen_blocks_for(model, trainable_blocks)
    with torch.no_grad():
        tokens = trunk_forward(model, inputs, frozen)  # (6, 65, 64)
        assert tokens.shape == (6, 65, 64)
        split = TrainableTop(model, trainable_blocks)(tokens)
        whole = model(inputs)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)


def test_the_top_trains_as_the_whole_model_does() -> None:
    # The last block is computed for the class token alone: the gradients of every trainable weight, the last
    # block's patch-token queries and MLP included in the whole model's graph, must be the same.
    model = _tiny(2)
    inputs = BatchTransform(32, train=False)(_images(6))  # (6, 3, 32, 32)
    labels = torch.arange(6) % model.num_classes
    tokens = trunk_forward(model, inputs, 2).detach()  # (6, 65, 64)
    trainable = [p for p in model.parameters() if p.requires_grad]
    split = torch.autograd.grad(F.cross_entropy(TrainableTop(model, 2)(tokens), labels), trainable)
    whole = torch.autograd.grad(F.cross_entropy(model(inputs), labels), trainable)
    for ours, theirs in zip(split, whole, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_the_top_holds_the_models_own_parameters() -> None:
    model = _tiny(2)
    top = TrainableTop(model, 2)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in top.parameters() if p.requires_grad} == trainable  # every trainable one, not copies
    assert {id(p) for p in top.parameters()} <= {id(p) for p in model.parameters()}  # plus the frozen final norm


def test_the_two_views_are_exactly_what_flip_only_training_sees() -> None:
    model = _tiny(1)
    images = _images(16, seed=1)
    eval_transform = BatchTransform(32, train=False)
    cache = build_cache(model, ImageDataset(images, torch.arange(16), ["x"] * 16), eval_transform, 3, views=2,
                        batch_size=5, show_progress=False)
    assert cache.tokens.shape == (16, 2, 65, 64)
    with torch.no_grad():
        plain = trunk_forward(model, eval_transform(images), 3)
        mirrored = trunk_forward(model, eval_transform(images.flip(-1)), 3)
        # The uncached training path (flip only, no rotation) must see one of the two cached inputs per image.
        augmented = trunk_forward(model, BatchTransform(32, train=True, max_rotation_degrees=0)(images), 3)
    torch.testing.assert_close(cache.tokens[:, 0], plain)
    torch.testing.assert_close(cache.tokens[:, 1], mirrored)
    assert not torch.allclose(plain, mirrored)  # random images are not symmetric: the two views differ
    for i in range(16):
        assert torch.allclose(augmented[i], plain[i], atol=1e-4) or torch.allclose(augmented[i], mirrored[i], atol=1e-4)


def test_cached_batches_cover_the_order_once_and_draw_both_views() -> None:
    n = 400
    tokens = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).repeat(1, 2, 1, 1)  # (N, 2, 1, 1)
    tokens[:, 1] *= -1  # view 1 is the negative of view 0, so the drawn view can be read off the value
    cache = TrunkCache(tokens, torch.arange(n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    seen, views = [], []
    for batch_tokens, labels in cache.batches(64, order, generator=torch.Generator().manual_seed(1)):
        seen.append(labels)
        values = batch_tokens.flatten()
        assert torch.equal(values.abs(), labels.float())  # each token row belongs to its label's image
        views.append(values < 0)
    assert torch.equal(torch.cat(seen), order)
    half = TrunkCache(tokens.to(torch.bfloat16), torch.arange(n))  # stored in bf16, handed on in float32
    assert next(half.batches(8))[0].dtype == torch.float32
    mirrored_share = torch.cat(views)[order != 0].float().mean().item()  # image 0 is 0 in both views
    assert 0.4 < mirrored_share < 0.6


def test_a_step_on_the_cache_equals_a_step_on_the_model() -> None:
    images, labels = _images(8, seed=2), torch.arange(8) % 5
    eval_transform = BatchTransform(32, train=False)
    recipe = RECIPES["default"]
    results = []
    for cached in (False, True):
        model = _tiny(2, seed=3).train()
        # Plain SGD: the update is the gradient itself (Adam's first step is lr * sign(grad), which float noise flips).
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        if cached:
            cache = build_cache(model, ImageDataset(images, labels, ["c"] * 5), eval_transform, 2, views=1,
                                batch_size=8, show_progress=False)
            train_step(TrainableTop(model, 2), cache.tokens[:, 0], labels, None, optimizer, make_criterion(recipe))
        else:
            train_step(model, images, labels, eval_transform, optimizer, make_criterion(recipe))
        results.append(model.state_dict())
    before = _tiny(2, seed=3).state_dict()
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, rtol=1e-4, atol=1e-6, msg=name)
    changed = [name for name in before if not torch.equal(before[name], results[1][name])]
    assert changed and all(name.startswith(("encoder.layers.encoder_layer_2", "encoder.layers.encoder_layer_3",
                                            "heads")) for name in changed)  # only the top moved


def test_cache_refuses_an_unfrozen_model_and_a_cache_too_big(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny(4)
    data = ImageDataset(_images(4), torch.zeros(4, dtype=torch.long), ["c"])
    with pytest.raises(VitlabError, match="nothing to cache"):
        cache_trunk(model, data, data, 4, BatchTransform(32, train=False), batch_size=4, show_progress=False)
    monkeypatch.setattr(trunk_cache, "available_bytes", lambda device: 1000)
    with pytest.raises(VitlabError, match=r"GiB.*--subset"):
        cache_trunk(_tiny(1), data, data, 1, BatchTransform(32, train=False), batch_size=4, show_progress=False)


def test_cache_bytes_for_cifar100_on_vit_b_16() -> None:
    model = build_model("vit_b_16", 100, pretrained=False, progress=False)
    # 45,000 images x 2 views x 197 tokens x 768 numbers x 2 bytes (bf16): the 27 GB the module docstring states.
    assert trunk_cache.cache_bytes(model, 45_000, 2, torch.bfloat16) == 45_000 * 2 * 197 * 768 * 2


def test_finetune_with_the_cache_trains_resumes_and_tests_on_the_full_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = tmp_path / "straight"
    assert finetune.main([*CACHED, "--out", str(straight)]) == 0
    config = json.loads((straight / "config.json").read_text())
    summary = json.loads((straight / "summary.json").read_text())
    assert config["cache_trunk"] is True and config["max_rotation"] == 0.0  # --cache-trunk implies no rotation
    assert summary["trunk_cache_seconds"] > 0 and summary["test_images"] == 128 and summary["test_acc"] > 0.3

    resumed = tmp_path / "resumed"
    real = finetune.train_one_epoch
    calls = {"n": 0}

    def stop_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune, "train_one_epoch", stop_in_epoch_2)
    assert finetune.main([*CACHED, "--out", str(resumed)]) == 130
    monkeypatch.undo()
    assert finetune.main(["--resume", str(resumed), "--quiet"]) == 0
    a, b = load_checkpoint(straight)["model"], load_checkpoint(resumed)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the cache is rebuilt on resume, the flips drawn again alike


@pytest.mark.parametrize(
    "flags, message",
    [(["--max-rotation", "5"], "--max-rotation 0"), (["--trainable-blocks", "all"], "nothing to cache")],
)
def test_finetune_refuses_settings_a_cache_cannot_serve(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [*CACHED, *flags, "--out", str(tmp_path / "run")]
    assert finetune.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "max_rotation, trainable_blocks, distributed, message",
    [(10.0, 3, False, "--max-rotation 0"), (0.0, None, False, "nothing to cache"), (0.0, 3, True, "torchrun")],
)
def test_check_settings_refuses_what_a_cache_cannot_serve(
    max_rotation: float, trainable_blocks: int | None, distributed: bool, message: str
) -> None:
    trunk_cache.check_settings(0.0, 3, False)  # flip only, 3 blocks training, one process: fine
    with pytest.raises(VitlabError, match=message):
        trunk_cache.check_settings(max_rotation, trainable_blocks, distributed)
