"""`python -m vitlab.bench` checks every flag before any work: a bad value, or a flag that no row of the run reads,
exits 2 with one line naming the flag and what it is for, and writes no JSON; a good command line runs and reports
finite numbers.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vitlab.bench.cli import ROWS, build_parser, main

# The ranges, written out here (not read from vitlab.bench.cli.RULES): name, lowest, highest.
RANGES = {"--repeats": (1, 1_000), "--batch-size": (1, 4_096), "--epoch-images": (10, 50_000)}
CHEAP_ROWS = ("data_pipeline", "eval_throughput", "epoch")  # with vit_tiny and tiny batches: well under a second
# (the epoch row needs CUDA or --force-epoch: here it reports "not measured" at once, and reads no flag)


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def refused(argv: list[str]) -> str:
    """Assert `argv` exits 2 with one line on stderr, nothing on stdout and no JSON written; return the line."""
    with tempfile.TemporaryDirectory() as folder:
        json_path = Path(folder) / "bench.json"
        code, out, err = run_main([*argv, "--json", str(json_path)] if "--json" not in argv else argv)
        assert code == 2, (argv, err)
        assert not json_path.exists() and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize(("argv", "names", "allowed", "example"), [
    (["--repeats", "0"], "--repeats 0", "1 to 1,000", "for example --repeats 3"),
    (["--repeats", "-3"], "--repeats -3", "1 to 1,000", "for example --repeats 3"),
    (["--repeats", "1000000"], "--repeats 1000000", "1 to 1,000", "for example --repeats 3"),
    (["--repeats", "nan"], "'nan'", "1 to 1,000", "for example --repeats 3"),
    (["--batch-size", "inf"], "'inf'", "1 to 4,096", "for example --batch-size 8"),
    (["--batch-size", "2.5"], "'2.5'", "1 to 4,096", "for example --batch-size 8"),
    (["--batch-size", "0"], "--batch-size 0", "1 to 4,096", "for example --batch-size 8"),
    (["--epoch-images", "5"], "--epoch-images 5", "10 to 50,000", "for example --epoch-images 200"),
    (["--rows", "train_stpe"], "'train_stpe'", "did you mean train_step?", "for example --rows"),
    (["--rows", ","], "--rows ','", "Choose from: data_pipeline", "for example --rows"),
    (["--rows", "demo,demo"], "demo twice", "name each row once", "for example --rows"),
    (["--arch", "vit_l_16"], "'vit_l_16'", "'vit_b_16', 'vit_tiny'", "for example --arch vit_tiny"),
    (["--device", "tpu"], "--device tpu", "one of: cuda, cpu", "Use auto"),
    (["--device", "mps"], "--device mps", "one of: cuda, cpu", "Use auto"),
])
def test_each_bad_flag_exits_2_naming_flag_value_range_and_example(argv, names, allowed, example) -> None:
    message = refused(argv)
    assert message.startswith("vitlab.bench: ")
    assert names in message and allowed in message and example in message, message


def test_a_json_path_that_cannot_be_written_is_refused_before_the_run(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    assert "is a folder" in refused(["--rows", "epoch", "--json", str(tmp_path)])
    assert "not a folder this user can write in" in refused(["--rows", "epoch", "--json", str(blocker / "b.json")])
    assert blocker.read_text() == "mine"  # nothing the user made is touched


def test_no_cuda_here_is_refused_with_what_to_use() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "Use --device cpu" in refused(["--device", "cuda"])


# A flag that no row of the run reads is refused, naming the flag and the rows it is for (the audit:
# /work/notes/flag-audit-bench.md). Each of these ran on the old code, the flag silently ignored.
@pytest.mark.parametrize(("argv", "names"), [
    (["--rows", "data_pipeline", "--epoch-images", "200"], "--epoch-images is for the row epoch;"),
    (["--rows", "data_pipeline", "--force-epoch"], "--force-epoch is for the row epoch;"),
    (["--rows", "data_pipeline", "--compile"], "--compile is for the row epoch;"),
    (["--rows", "data_pipeline", "--no-compile"], "--compile is for the row epoch;"),
    (["--epoch-images", "200"], "(epoch: run with --epoch)"),  # the default rows: epoch is not measured
    (["--rows", "epoch", "--epoch-images", "200"], "(epoch: needs CUDA; --force-epoch"),
    (["--rows", "demo", "--repeats", "3"], "--repeats is for the rows data_pipeline"),
    (["--rows", "demo", "--batch-size", "8"], "--batch-size is for the rows data_pipeline"),
    (["--rows", "demo", "--arch", "vit_tiny"], "--arch is for the rows data_pipeline"),
    (["--rows", "demo", "--quick"], "--quick is for the rows data_pipeline"),
    (["--rows", "explorer", "--device", "cpu"], "--device is for the rows data_pipeline"),
    (["--rows", "laptop_estimate", "--batch-size", "8"], "--batch-size is for the rows"),
])
def test_a_flag_no_row_of_the_run_reads_is_refused(argv: list[str], names: str) -> None:
    if "needs CUDA" in names and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the epoch row runs")
    message = refused(argv)
    flag = names.split()[0] if names.startswith("--") else argv[-2]
    assert names in message and "no row of this run reads it" in message and f"Drop {flag}" in message, message


def test_epoch_is_for_the_default_rows_and_refused_with_rows() -> None:
    message = refused(["--rows", "data_pipeline", "--epoch"])
    assert "--epoch adds the epoch row to the default rows" in message and "--rows epoch" in message
    assert "--epoch adds" in refused(["--rows", "epoch", "--no-epoch"])


def test_every_on_off_flag_has_its_no_form() -> None:
    parser = build_parser()
    for flag in ("quick", "epoch", "force_epoch", "compile"):
        name = flag.replace("_", "-")
        assert vars(parser.parse_args([f"--{name}"]))[flag] is True
        assert vars(parser.parse_args([f"--no-{name}"]))[flag] is False
        assert vars(parser.parse_args([]))[flag] is None  # left out: told apart from either form


def test_every_flag_is_read_by_some_row() -> None:
    read = set().union(*(row.flags for row in ROWS.values()))
    flags = {action.dest for action in build_parser()._actions} - {"help", "rows", "json", "epoch"}
    assert flags == read  # no flag that nothing reads, no field read that has no flag


@pytest.mark.slow  # starting Python and torch: seconds
def test_no_traceback_in_a_real_process(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "vitlab.bench", "--repeats", "0", "--json", str(tmp_path / "b.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "--repeats 0" in done.stderr
    assert not (tmp_path / "b.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# Property: over generated command lines, exit 2 with one line exactly when a flag is bad; otherwise a finite run
# ---------------------------------------------------------------------------------------------------------------

# Numbers as a user might type them: small (so that some command lines are valid and run), in range, at and past
# the edges, huge, negative, not whole, not finite, words.
numbers = st.one_of(st.integers(1, 4).map(str), st.integers(-10, 60_000).map(str),
                    st.sampled_from(["nan", "inf", "-inf", "1e3", "2.5", "x", ""]))
# Each range's edges, always tried (as explicit examples): just outside, and just inside.
EDGES = [{flag: str(n)} for flag, (low, high) in RANGES.items() for n in (low - 1, low, high, high + 1)]
row_lists = st.lists(st.sampled_from([*CHEAP_ROWS, "train_stpe", "Demo", ""]), min_size=1, max_size=3).map(",".join)
flag_values = st.fixed_dictionaries({}, optional={
    "--repeats": numbers, "--batch-size": numbers, "--epoch-images": numbers, "--rows": row_lists,
    "--arch": st.sampled_from(["vit_tiny", "vit_tiny", "vit_b_16 ", "resnet"]),
    "--device": st.sampled_from(["cpu", "auto", "cpu:0", "gpu", "tpu", "mps"]),
})


def bad_flags(flags: dict[str, str]) -> list[str]:
    """The flags the rules refuse (on this CPU-only machine 'auto' and 'cpu:0' mean the CPU): a value out of range,
    or a flag that no row that runs reads (here the epoch row never runs, so --epoch-images is never read)."""
    bad = [flag for flag, (low, high) in RANGES.items()
           if flag in flags and not (flags[flag].lstrip("-").isdigit() and low <= int(flags[flag]) <= high)]
    rows = [r for r in flags["--rows"].split(",") if r]
    if not rows or not set(rows) <= set(CHEAP_ROWS) or len(set(rows)) != len(rows):
        bad.append("--rows")
    if flags["--arch"] != "vit_tiny":
        bad.append("--arch")
    if flags.get("--device", "cpu") not in ("cpu", "auto", "cpu:0"):
        bad.append("--device")
    running = set(rows) - {"epoch"}
    bad += [flag for flag in ("--epoch-images", *(() if running else ("--repeats", "--batch-size", "--arch",
                                                                        "--device", "--quick"))) if flag in flags]
    return bad


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(flags=flag_values)
def test_generated_command_lines_exit_2_or_run_with_finite_numbers(flags: dict[str, str]) -> None:
    # Runs stay cheap: the rows are the cheapest, so are batches and repeats when valid (others are refused).
    flags = {"--rows": "data_pipeline", "--arch": "vit_tiny", "--quick": "", **flags}
    bad = bad_flags(flags)
    if not bad and (int(flags.get("--batch-size", 2)) > 4 or int(flags.get("--repeats", 1)) > 2):
        flags["--batch-size"], flags["--repeats"] = "2", "1"  # valid but slow: run a tiny valid one instead
    argv = [flag if flag == "--quick" else f"{flag}={value}" for flag, value in flags.items()]
    if bad:
        message = refused(argv)
        assert any(flag in message for flag in bad), (argv, message)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.json"
        code, out, err = run_main([*argv, "--json", str(path)])
        assert code == 0, (argv, err)
        rows = json.loads(path.read_text())["rows"]
    assert [r["row"] for r in rows] == [r for r in flags["--rows"].split(",") if r]
    for row in rows:
        numbers_in_row = [row[k] for k in ("baseline", "vitlab", "ratio") if row[k] is not None]
        assert all(math.isfinite(x) and x > 0 for x in numbers_in_row), row
        assert row.get("measured", True) is False or len(numbers_in_row) == 3, row


for _edge in EDGES:  # the edges of every range run on top of the generated command lines
    test_generated_command_lines_exit_2_or_run_with_finite_numbers = example(flags=_edge)(
        test_generated_command_lines_exit_2_or_run_with_finite_numbers)
