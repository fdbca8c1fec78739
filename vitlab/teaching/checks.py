"""`assert_same`: the one check a lesson makes that vitlab's function equals the algorithm it wrote out by hand.

    assert_same(rollout(attentions), rollout_by_hand(attentions), vitlab="vitlab's rollout", lesson="rollout_by_hand")

It passes silently, or raises an AssertionError that names both sides and says how they differ:

    AssertionError: vitlab's rollout differs from the lesson's rollout_by_hand: largest difference 0.31 at (0, 5)
    (vitlab 0.41, lesson 0.1); 12 of 256 values differ by more than the float rounding allowed (atol 1e-05 +
    rtol 1.3e-06 x |lesson|).

A failed check is a bug in the lesson or in vitlab, never a user's mistake, so it is not a VitlabError: it is
loud, with its traceback, and a lesson run as a script exits with Python's status 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

Value = Tensor | float | int | bool


def assert_same(vitlab_value: Value, lesson_value: Value, *, vitlab: str, lesson: str, rtol: float | None = None,
                atol: float | None = None, hint: str = "") -> None:
    """Assert that vitlab's result equals the lesson's hand-written one; otherwise fail naming both.

    Args:
        vitlab_value, lesson_value: tensors of one shape, or numbers. Floating-point values may differ by float
            rounding, |vitlab - lesson| <= atol + rtol * |lesson| (torch.testing.assert_close's defaults for the
            dtype, unless both rtol and atol are given); integer and boolean values must be equal.
        vitlab: what computed `vitlab_value`, as the message names it: "vitlab's rollout (mean fusion)".
        lesson: the lesson's function that computed `lesson_value`: "rollout_by_hand".
        hint: a sentence added to the message: what usually causes this difference.

    Raises:
        AssertionError: "{vitlab} differs from the lesson's {lesson}: ..." with the shapes when they differ, else
            the largest difference, where it is, and how many values differ.
    """
    actual, expected = _as_tensor(vitlab_value), _as_tensor(lesson_value)
    try:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, check_dtype=False)
    except AssertionError:
        message = f"{vitlab} differs from the lesson's {lesson}: {_difference(actual, expected, rtol, atol)}"
        raise AssertionError(message + (f" {hint}" if hint else "")) from None


def _as_tensor(value: Value) -> Tensor:
    """A tensor, detached; a Python float becomes float64 so that it is compared at its own precision."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float64)
    return torch.as_tensor(value)


def _difference(actual: Tensor, expected: Tensor, rtol: float | None, atol: float | None) -> str:
    """How two tensors that assert_close refused differ, in one sentence."""
    if actual.shape != expected.shape:
        return f"the shapes differ: vitlab {tuple(actual.shape)}, lesson {tuple(expected.shape)}."
    exact = not (actual.is_floating_point() or expected.is_floating_point())
    if exact:
        differ = actual != expected  # same shape: bool or integer values must be equal
        where = _index(differ.float().argmax(), differ.shape)
        return (f"{int(differ.sum())} of {differ.numel()} values differ, the first at {where} (vitlab "
                f"{_item(actual, where)}, lesson {_item(expected, where)}).")
    gap = (actual.double() - expected.double()).abs()
    ranked = gap.nan_to_num(nan=float("inf"))  # a NaN on one side is the largest difference there is
    rtol, atol = _tolerances(actual, expected, rtol, atol)
    outside = ranked > atol + rtol * expected.double().abs()
    where = _index(ranked.argmax(), gap.shape)
    return (f"largest difference {gap[where].item():.3g}{f' at {where}' if where else ''} (vitlab "
            f"{_item(actual, where):.6g}, lesson {_item(expected, where):.6g}); {int(outside.sum())} of "
            f"{gap.numel()} values differ by more than the float rounding allowed (atol {atol:.3g} + rtol "
            f"{rtol:.3g} x |lesson|).")


DEFAULT_TOLERANCES = {torch.float16: (1e-3, 1e-5), torch.bfloat16: (1.6e-2, 1e-5), torch.float32: (1.3e-6, 1e-5),
                      torch.float64: (1e-7, 1e-7)}  # (rtol, atol): torch.testing.assert_close's, per dtype


def _tolerances(actual: Tensor, expected: Tensor, rtol: float | None, atol: float | None) -> tuple[float, float]:
    """The tolerances assert_close used: the given ones, else the larger of its defaults for the two dtypes."""
    if rtol is not None and atol is not None:
        return rtol, atol
    defaults = [DEFAULT_TOLERANCES.get(t.dtype, (0.0, 0.0)) for t in (actual, expected)]
    return max(r for r, _ in defaults), max(a for _, a in defaults)


def _index(flat: Tensor, shape: torch.Size) -> tuple[int, ...]:
    """A flat index -> the index in `shape`, as a tuple (() for a single number)."""
    return tuple(int(i) for i in torch.unravel_index(flat, shape)) if shape else ()


def _item(tensor: Tensor, where: tuple[int, ...]) -> float | int | bool:
    return tensor[where].item()
