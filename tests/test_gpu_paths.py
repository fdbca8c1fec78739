"""vitlab's CUDA-only paths run on the CPU, each compared with eager fp32 after a few real training steps.

No GPU has run the default recipe's bf16 autocast, `torch.compile` or fused AdamW. Each exists on the CPU too, so
these tests drive the same code the fine-tuning job runs (`vitlab.training.train.train_one_epoch`, one batch per call
so the
loss of every step is seen; the recipe's AdamW groups, warmup + cosine, clipping at 1.0, label smoothing 0.1) and
switch one path on at a time:

- bf16: `bf16_devices=("cpu",)` makes `autocast_for` pick `torch.autocast("cpu", bfloat16)`, the very branch that
  picks `torch.autocast("cuda", ...)` on a GPU.
- compile: the model wrapped in `torch.compile` (inductor, CPU C++ kernels), as `vitlab.training.finetune` wraps it.
- fused AdamW: `make_optimizer(..., fused=True)`, which PyTorch 2.14 supports on CPU tensors.

Each comparison has a stated tolerance, and `test_a_wrong_learning_rate_exceeds_the_tolerances` shows that a run
that is really different (lr x 1.5; lr x 1.01 for the fp32 paths) falls outside them: the comparisons can fail.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from vitlab.capture import capture, capture_forward
from vitlab.data import BatchTransform, seeded_generator
from vitlab.errors import VitlabError
from vitlab.model import build_model
from vitlab.training.train import BF16_DEVICES, RECIPES, make_criterion, make_optimizer, make_scheduler, train_one_epoch

STEPS = 6  # optimisation steps per run: enough for the cosine schedule and Adam's moments to matter
BATCH = 8
CPU = torch.device("cpu")

# Tolerances, as (largest relative loss gap over the steps, relative L2 gap of the total parameter update), each
# 5-20x what was measured here (2-core CPU, torch 2.14.1), so that other CPUs' kernels pass too.
# bf16 keeps 8 significant bits (~2-3 decimal digits: a relative rounding of 2^-8 = 0.4% per operation). The loss is
# computed in fp32 from bf16 logits and moved by 5e-4 (measured). Adam divides each gradient by its own running
# size, so weights whose gradients are small and coarsely rounded move differently: the update of all trainable
# weights after 6 steps differs by 2.9% (measured). lr x 1.5 moves the update by 50%, lr x 1.1 by 10%.
BF16_TOLERANCE = (0.005, 0.15)
# compile: the same fp32 arithmetic, reordered and fused by inductor (~1e-7 per operation): loss 1e-7, update 1.5e-4
# (measured; Adam's division amplifies rounding on near-zero gradients). lr x 1.01 moves the update by 1.0%.
COMPILE_TOLERANCE = (1e-5, 2e-3)
# fused AdamW: the same update in one kernel, only the rounding order differs: loss identical, update 4-6e-5
# (measured with 1 and 2 threads).
FUSED_TOLERANCE = (1e-5, 1e-3)


@dataclass
class Run:
    """What a short training run did: the loss of each step and the change of every trainable weight."""

    losses: list[float]  # one per step
    update: Tensor  # (trainable parameters,): weights after the run minus weights before, flattened
    head_dtypes: set[torch.dtype]  # the dtype of the classifier head's output, as the steps computed it


def train_run(*, lr_scale: float = 1.0, bf16: bool = False, compiled: bool = False, fused: bool = False) -> Run:
    """`STEPS` steps of recipe 'default' on vit_tiny (random weights, last 3 blocks + head train, 100 classes), on the
    CPU.

    The data are 8 fixed random images with fixed labels, seen every step (so the loss falls), augmented with a
    seeded generator: every run sees the same pixels.
    """
    torch.manual_seed(0)
    model = build_model("vit_tiny", 100, pretrained=False, trainable_blocks=3, progress=False)
    recipe = RECIPES["default"]
    optimizer = make_optimizer(model, recipe, recipe.lr * lr_scale, pretrained=True, fused=fused)
    scheduler = make_scheduler(optimizer, recipe, total_steps=STEPS)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    dtypes: set[torch.dtype] = set()
    model.heads.register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
    trainer = torch.compile(model) if compiled else model
    images = torch.randint(0, 256, (BATCH, 3, 32, 32), dtype=torch.uint8, generator=seeded_generator(1))
    labels = torch.randint(0, 100, (BATCH,), generator=seeded_generator(2))  # (B,)
    transform, generator = BatchTransform(model.image_size, train=True), seeded_generator(3)
    losses = []
    for _ in range(STEPS):
        result = train_one_epoch(trainer, [(images, labels)], BATCH, transform, optimizer, scheduler,
                                 make_criterion(recipe), CPU, recipe, generator=generator, show_progress=False,
                                 bf16_devices=("cpu",) if bf16 else BF16_DEVICES)
        losses.append(result["loss"])
    update = torch.cat([(p.detach() - p0).flatten() for p, p0 in zip(trainable, before, strict=True)])
    return Run(losses, update, dtypes)


def gaps(run: Run, reference: Run) -> tuple[float, float]:
    """(largest relative loss gap over the steps, relative L2 gap of the parameter update) of `run` to `reference`."""
    loss_gap = max(abs(a - b) / abs(b) for a, b in zip(run.losses, reference.losses, strict=True))
    update_gap = float((run.update - reference.update).norm() / reference.update.norm())
    return loss_gap, update_gap


def within(measured: tuple[float, float], tolerance: tuple[float, float]) -> bool:
    return all(m <= t for m, t in zip(measured, tolerance, strict=True))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread (as conftest's `single_thread`, for the whole module): on a busy 2-core machine two
    OpenMP threads waiting on each other make these small ops many times slower. Results do not depend on it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def eager(one_thread: None) -> Run:
    """The reference: eager fp32 with the unfused optimiser, as the job runs on the CPU today."""
    return train_run()


def test_the_reference_run_learns(eager: Run) -> None:
    assert eager.head_dtypes == {torch.float32}
    assert eager.losses[-1] < eager.losses[0] - 0.1  # the same 8 images every step: the loss must fall
    assert eager.update.norm() > 0


def test_bf16_autocast_through_the_recipe_path_matches_fp32_within_bf16_precision(eager: Run) -> None:
    bf16 = train_run(bf16=True)
    assert bf16.head_dtypes == {torch.bfloat16}  # autocast really ran: the head computed in bf16
    measured = gaps(bf16, eager)
    assert measured[0] > 0  # and it changed the numbers, as lower precision must
    assert within(measured, BF16_TOLERANCE), measured


def test_the_default_bf16_devices_leave_the_cpu_in_fp32(eager: Run) -> None:
    assert BF16_DEVICES == ("cuda",)  # the shipped behaviour: bf16 on CUDA only
    assert train_run().losses == eager.losses  # the default run is deterministic fp32, bit for bit


def test_fused_adamw_on_the_cpu_matches_the_unfused_one(eager: Run) -> None:
    # PyTorch 2.14 accepts fused=True for CPU tensors, so nothing needs to fall back; the optimiser really is fused.
    fused = train_run(fused=True)
    assert within(gaps(fused, eager), FUSED_TOLERANCE), gaps(fused, eager)
    optimizer = make_optimizer(build_model("vit_tiny", 10, pretrained=False, progress=False), RECIPES["default"],
                               1e-3, pretrained=True, fused=True)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True


@pytest.mark.slow
def test_torch_compile_matches_eager_fp32(eager: Run) -> None:
    compiled = train_run(compiled=True)  # inductor on the CPU: one compile of forward and backward, tens of seconds
    assert within(gaps(compiled, eager), COMPILE_TOLERANCE), gaps(compiled, eager)


@pytest.mark.parametrize(("lr_scale", "tolerances"), [
    (1.5, (BF16_TOLERANCE, COMPILE_TOLERANCE, FUSED_TOLERANCE)),
    (1.01, (COMPILE_TOLERANCE, FUSED_TOLERANCE)),  # the fp32 paths' tolerances catch even a 1% change
])
def test_a_wrong_learning_rate_exceeds_the_tolerances(eager: Run, lr_scale: float, tolerances: tuple) -> None:
    measured = gaps(train_run(lr_scale=lr_scale), eager)
    for tolerance in tolerances:
        assert not within(measured, tolerance), (measured, tolerance)


# ---------------------------------------------------------------------------------------------------------------
# Capture on a torch.compile'd model
# ---------------------------------------------------------------------------------------------------------------


def test_capture_forward_runs_a_compiled_model_eagerly_with_the_same_numbers() -> None:
    torch.manual_seed(0)
    model = build_model("vit_tiny", 10, pretrained=False, progress=False).eval()
    compiled = torch.compile(model)  # lazy: nothing is compiled until compiled(...) is called, and it never is
    images = torch.randn(2, 3, 32, 32)  # (B, 3, S, S)
    with torch.no_grad():
        expected_logits, expected = capture_forward(model, images)
        logits, captured = capture_forward(compiled, images)
    assert torch.equal(logits, expected_logits)
    assert all(torch.equal(a, b) for a, b in zip(captured.attentions, expected.attentions, strict=True))
    assert captured.attentions[0].shape == (2, 4, 65, 65)  # 4 heads, class token + 8x8 patches
    assert torch.allclose(captured.attentions[-1].sum(dim=-1), torch.ones(2, 4, 65))  # softmax rows


def test_capture_refuses_a_compiled_model_and_names_the_eager_one() -> None:
    model = build_model("vit_tiny", 10, pretrained=False, progress=False)
    with pytest.raises(VitlabError, match=r"needs the eager model.*model\._orig_mod"), capture(torch.compile(model)):
        pass
    hooks = [m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooks == []  # refused before any hook was registered
    with capture(torch.compile(model)._orig_mod) as cap, torch.no_grad():  # what the message says to do works
        model.eval()(torch.randn(1, 3, 32, 32))
    assert len(cap.attentions) == 4
