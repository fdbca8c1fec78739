"""The training loop: it reads values back to the host only at progress-bar refreshes, never inside a step, and it
keeps frozen leading blocks in eval mode (`train_mode`) without changing what is computed.

On a GPU every such read (`.item()`, `.tolist()`, `bool(tensor)`, ...) makes Python wait for the kernels queued so
far, so a read per step would stall the loop. The same code runs on the CPU, so the reads can be counted here: a
TorchFunctionMode sees every tensor method call and notes those that vitlab's own code makes.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from vitlab.data import BatchTransform, ImageDataset, batches
from vitlab.model import build_model, train_mode
from vitlab.training.train import (
    RECIPES,
    Recipe,
    make_criterion,
    make_optimizer,
    make_scheduler,
    train_one_epoch,
    train_step,
)

HOST_READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"}
VITLAB = str(Path(__file__).resolve().parents[1] / "vitlab")


class VitlabHostReads(TorchFunctionMode):
    """Records (function name, file:line) for every host read that code under vitlab/ makes itself."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            # The frame that called the method. Reads inside torch itself do not count: the non-fused optimizers
            # read their CPU step counters, which never waits for a GPU (and the fused CUDA path reads nothing).
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(VITLAB):
                self.reads.append((name, f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("refresh_every, expected_reads", [(25, 1), (2, 4)])
def test_training_reads_the_host_only_at_refreshes(refresh_every: int, expected_reads: int) -> None:
    torch.manual_seed(0)
    model = build_model("vit_tiny", 4, pretrained=False, trainable_blocks=1, progress=False)
    recipe = RECIPES["default"]  # AdamW, warmup + cosine, label smoothing, clipping: every part of the step
    optimizer = make_optimizer(model, recipe, 1e-3, pretrained=False)
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8)
    data = ImageDataset(images, torch.arange(48) % 4, ["a", "b", "c", "d"])
    transform = BatchTransform(32, train=True)
    with VitlabHostReads() as mode:
        result = train_one_epoch(
            model, batches(data, 8, shuffle=True), len(data), transform, optimizer,
            make_scheduler(optimizer, recipe, total_steps=6), make_criterion(recipe), torch.device("cpu"), recipe,
            show_progress=False, refresh_every=refresh_every,
        )
    assert result["count"] == 48
    # 6 steps: one read at the end, plus one at each refresh (steps 2, 4 and 6 when refreshing every 2).
    assert len(mode.reads) == expected_reads, mode.reads
    assert {where.split(":")[0] for _, where in mode.reads} == {"train.py"}


def test_the_counter_sees_a_read_per_step() -> None:
    """The check above can fail: a loop that calls .item() every step is caught."""
    with VitlabHostReads() as mode:
        exec(compile("for _ in range(3): torch.ones(1).sum().item()", f"{VITLAB}/fake.py", "exec"), {"torch": torch})
    assert len(mode.reads) == 3


# ---------------------------------------------------------------------------------------------------------------
# train_mode: frozen leading blocks stay in eval mode
# ---------------------------------------------------------------------------------------------------------------


def _vit(trainable_blocks: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_model("vit_tiny", 4, pretrained=False, trainable_blocks=trainable_blocks, progress=False)


def test_train_mode_keeps_only_the_frozen_leading_blocks_in_eval() -> None:
    model = _vit(1)
    train_mode(torch.compile(model))  # looks through the compile wrapper (nothing is compiled until a call)
    assert [block.training for block in model.encoder.layers] == [False, False, False, True]
    assert not model.encoder.dropout.training and model.heads.training and model.encoder.ln.training
    assert all(m.training for m in model.encoder.layers[3].modules())  # dropout in a training block stays on
    everything = _vit(4)  # every block: the embeddings train too
    train_mode(everything)
    assert all(m.training for m in everything.modules())


def test_train_mode_runs_the_fused_attention_kernel_in_frozen_blocks_only() -> None:
    model = _vit(1)
    train_mode(model)
    inputs = torch.randn(2, 3, 32, 32)
    with torch.profiler.profile() as profile:
        model(inputs).sum().backward()
    fused = sum(e.count for e in profile.key_averages() if e.key == "aten::_native_multi_head_attention")
    assert fused == 3  # the three frozen blocks; the training block keeps the differentiable path


def test_a_step_in_train_mode_equals_a_step_in_plain_training_mode() -> None:
    images, labels = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8) % 4
    transform, criterion = BatchTransform(32, train=False), make_criterion(RECIPES["default"])
    states = []
    for use_train_mode in (False, True):
        model = _vit(2, seed=1)
        train_mode(model) if use_train_mode else model.train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        train_step(model, images, labels, transform, optimizer, criterion)
        states.append(model.state_dict())
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------------------------
# One optimiser and one schedule for fine-tuning and pretraining
# ---------------------------------------------------------------------------------------------------------------


def _groups(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    """Each parameter's (learning rate, weight decay), by name."""
    names = {id(param): name for name, param in model.named_parameters()}
    return {names[id(param)]: (group["lr"], group["weight_decay"])
            for group in optimizer.param_groups for param in group["params"]}


def test_the_optimiser_decays_weight_matrices_only_and_scales_named_parameters() -> None:
    model = build_model("vit_tiny", 4, pretrained=False, trainable_blocks=4, progress=False)
    optimizer = make_optimizer(model, RECIPES["default"], 1e-3, pretrained=True,
                               lr_scales={"encoder.pos_embedding": 10.0})
    groups = _groups(optimizer, model)
    assert groups["heads.head.weight"] == (1e-3, 0.05)  # the new head at --lr
    assert groups["encoder.layers.encoder_layer_0.mlp.0.weight"] == pytest.approx((1e-4, 0.05))  # pretrained: lr/10
    assert groups["conv_proj.weight"] == pytest.approx((1e-4, 0.05))  # a convolution kernel is a weight: decayed
    assert groups["encoder.pos_embedding"] == pytest.approx((1e-3, 0.0))  # scaled 10x, never decayed
    assert groups["class_token"] == pytest.approx((1e-4, 0.0))  # a learned input, not a weight: never decayed
    assert groups["encoder.layers.encoder_layer_0.ln_1.weight"][1] == 0.0  # norms and biases: no decay
    with pytest.raises(ValueError, match="no_such_parameter"):
        make_optimizer(model, RECIPES["default"], 1e-3, pretrained=True, lr_scales={"no_such_parameter": 2.0})


def test_the_schedule_warms_up_linearly_then_follows_a_half_cosine() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, RECIPES["default"], total_steps=100)  # 5% warmup: 5 steps
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert rates[5] == 1.0 and rates[50] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 95)))
    notebook = make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), RECIPES["notebook"], 9)
    assert notebook.get_last_lr() == [1.0]  # the notebook's constant rate


def test_a_recipe_is_built_by_keyword() -> None:
    with pytest.raises(TypeError):
        Recipe("x", "adam", 1e-3, 1.0, 0.0, 0.0, False, 0.0, None, False)  # ten values in a row: which is which?
    assert replace(RECIPES["notebook"], lr=0.5).optimizer == "adam"
