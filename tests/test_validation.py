"""Every fine-tuning setting is checked before any work: a bad value exits 2 with one line, and leaves no run folder.

Five typical mistakes come first (a negative batch size, no epochs, a NaN learning rate, a validation set larger
than the training set, a rotation of a billion degrees): each would otherwise run and report a result.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitlab.errors import VitlabError
from vitlab.training import finetune
from vitlab.training.config import RULES, make_config

TYPICAL_MISTAKES = [
    (["--batch-size", "-5"], "--batch-size -5", "1 to 65,536"),
    (["--epochs", "0"], "--epochs 0", "1 to 10,000"),
    (["--lr", "nan"], "--lr nan", "1e-08 to 10"),
    (["--val-size", "999999"], "--val-size 999999", "less than cifar100's 50,000"),
    (["--max-rotation", "1e9"], "--max-rotation 1000000000.0", "0 to 180"),
]


def refused(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> str:
    """Run finetune.main with `argv` into tmp_path/run; assert exit 2, no run folder, one line; return the line."""
    out = tmp_path / "run"
    code = finetune.main([*argv, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert not out.exists()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(("argv", "names", "allowed"), TYPICAL_MISTAKES)
def test_typical_mistakes_exit_2_naming_flag_value_range_and_example(argv, names, allowed, tmp_path, capsys):
    message = refused(argv, tmp_path, capsys)
    assert names in message and allowed in message and "for example" in message


@pytest.mark.parametrize("argv", [
    ["--lr", "inf"], ["--lr", "0"], ["--lr=-1e-3"], ["--seed", "-1"], ["--subset", "0"], ["--val-size", "0"],
    ["--max-rotation", "-1"], ["--max-rotation", "nan"], ["--preset", "demo", "--trainable-blocks", "5"],
    ["--pretrained", "/no/such/weights.pth"], ["--dataset", "folder", "--data-dir", "/no/such/folder"],
])
def test_other_bad_values_exit_2_before_any_work(argv, tmp_path, capsys):
    message = refused(argv, tmp_path, capsys)
    assert message.startswith("vitlab: --")


def test_trainable_blocks_message_names_the_archs_range():
    with pytest.raises(VitlabError, match=r"from 0 to 4 \(vit_tiny has 4 blocks\)"):
        make_config({"preset": "demo", "trainable_blocks": 7})


def test_the_defaults_and_the_demo_preset_pass():
    assert make_config({}).epochs == 5
    assert make_config({"preset": "demo"}).arch == "vit_tiny"


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(RULES)), value=st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64), st.floats(allow_nan=True, allow_infinity=True)))
def test_every_rule_accepts_exactly_its_range(name: str, value: float):
    """Property: make_config accepts a value iff it is a finite number in the rule's range (of the right kind)."""
    rule = RULES[name]
    expected = (not (rule.whole and isinstance(value, float)) and value == value and abs(value) != float("inf")
                and rule.low <= value <= rule.high)
    if name == "trainable_blocks":
        expected = expected and value <= 12  # vit_b_16 has 12 blocks
    if name == "val_size":
        expected = expected and value < 50_000  # the default dataset, CIFAR-100, has 50,000 training images
    if name == "subset":  # CIFAR-100's largest split is 45,000 training images: a subset that keeps them all is refused
        expected = expected and value < 45_000
    flags = {name: value}
    try:
        make_config(flags)
    except VitlabError as error:
        assert not expected, f"{name}={value!r} refused: {error}"
        assert "\n" not in str(error) and f"--{name.replace('_', '-')}" in str(error)
    else:
        assert expected, f"{name}={value!r} accepted"


def test_no_traceback_in_a_real_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vitlab.finetune", "--preset", "demo", "--epochs", "0",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "--epochs 0" in result.stderr
    assert not (tmp_path / "run").exists()
