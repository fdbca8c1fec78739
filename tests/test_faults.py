"""Crash safety of the fine-tuning job: SIGKILL at 20 seeded moments, and a full disk during each kind of write.

The run is the demo preset in miniature (128 shapes per split, 3 epochs): the same code path as `--preset demo`
(shipped base, cached trunk, best.pt and checkpoint.pt), a few seconds a run, most of it Python start-up. One
uninterrupted run, traced through every write point (vitlab.faults), is the reference every kill is compared with.
Each killed run is a child process forked from a fork server that imported vitlab once (Python and torch's import
is most of a small run's time), SIGKILLed for real. Every run uses one intra-op thread (this process under
`single_thread`): the same arithmetic everywhere, and no two threads spinning on a busy 2-core machine.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from tqdm.auto import tqdm

from vitlab import atomic
from vitlab.errors import StorageError
from vitlab.faults import MOMENTS, VARIABLE
from vitlab.training import finetune
from vitlab.training.checkpoint import BEST, CONFIG, LAST, load_checkpoint, save_checkpoint, save_json

RUN = ["--preset", "demo", "--subset", "128", "--epochs", "3", "--batch-size", "32", "--quiet"]
TIMINGS = {"seconds", "images_per_second", "wall_seconds", "trunk_cache_seconds"}  # wall clock
WRITE_KILLS, TIMED_KILLS = 12, 8  # 20 kills in all
SEED = 14  # issue 14: every random choice below comes from this seed


def _job(argv: list[str], fault_at: str) -> None:
    """A child's whole life: one intra-op thread (as this process under `single_thread`), the fault hook, the job."""
    os.environ[VARIABLE] = fault_at  # in the child only: it was forked from the fork server
    torch.set_num_threads(1)
    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock, which a SIGKILL would leak
    raise SystemExit(finetune.main(argv))


@pytest.fixture(scope="module")
def children() -> multiprocessing.context.BaseContext:
    """Child processes forked from a server that imported vitlab once: a kill costs the run, not torch's import."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["vitlab.training.finetune"])
    return context


def _child(children: multiprocessing.context.BaseContext, out: Path, log: Path, at: int) -> multiprocessing.Process:
    """The job as a child process that SIGKILLs itself at write point `at` (0: never), logging points to `log`."""
    child = children.Process(target=_job, args=([*RUN, "--out", str(out)], f"{at}:{log}"))
    child.start()
    return child


def _wait(child: multiprocessing.Process) -> int:
    child.join(timeout=300)
    return child.exitcode


def _wait_for_config(child: multiprocessing.Process, out: Path) -> None:
    while not (out / CONFIG).exists() and child.is_alive():
        time.sleep(0.002)


@pytest.fixture(scope="module")
def reference(children: multiprocessing.context.BaseContext, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run: its folder, every write point it passed in order, and its seconds after config.json."""
    root = tmp_path_factory.mktemp("reference")
    out, log = root / "run", root / "points.log"
    child = _child(children, out, log, at=0)
    _wait_for_config(child, out)
    settled = time.perf_counter()
    assert _wait(child) == 0
    return {"out": out, "points": log.read_text().split(), "after_config": time.perf_counter() - settled}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _numbers(out: Path, name: str):
    """A JSON file of the run without its wall-clock fields."""
    value = json.loads((out / name).read_text())
    strip = lambda record: {k: v for k, v in record.items() if k not in TIMINGS}  # noqa: E731
    return [strip(r) for r in value] if isinstance(value, list) else strip(value)


def assert_same_run(out: Path, reference: Path) -> None:
    """Bit-identical final weights (checkpoint.pt and best.pt), the same history and test numbers, no temp file."""
    assert _same_weights(_weights(out / LAST), _weights(reference / LAST))
    assert _same_weights(_weights(out / BEST), _weights(reference / BEST))
    assert load_checkpoint(out / BEST)["epoch"] == load_checkpoint(reference / BEST)["epoch"]
    assert _numbers(out, "history.json") == _numbers(reference, "history.json")
    assert _numbers(out, "summary.json") == _numbers(reference, "summary.json")
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"


def assert_consistent(out: Path) -> None:
    """What a kill leaves: every file in place loads whole (a checkpoint loads, a JSON file parses)."""
    for name in (LAST, BEST):
        if (out / name).exists():
            load_checkpoint(out / name)
    for name in (CONFIG, "history.json", "summary.json"):
        if (out / name).exists():
            json.loads((out / name).read_text())


def resume_after_kill(out: Path, capsys: pytest.CaptureFixture) -> str:
    """`--resume` the killed run; before config.json there is no run, so the original command starts it.

    A run that failed before writing anything (in this process: the disk full at config.json) leaves no folder: its
    lock made it and took it away again.
    """
    if (out / CONFIG).exists():
        assert finetune.main(["--resume", str(out), "--quiet"]) == 0
        return "resumed"
    assert finetune.main(["--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds no run to resume" in err if out.exists() else f"No checkpoint at {out}" in err
    assert finetune.main([*RUN, "--out", str(out)]) == 0
    return "restarted"


def _kill_after(children: multiprocessing.context.BaseContext, out: Path, log: Path, delay: float) -> int:
    """Start the job, wait until its config.json exists, SIGKILL it `delay` seconds later; its exit code."""
    child = _child(children, out, log, at=0)
    _wait_for_config(child, out)
    time.sleep(delay)
    child.kill()  # SIGKILL; nothing happens if it already finished
    code = _wait(child)
    assert code in (-signal.SIGKILL, 0)
    return code


def _write_kill_points(points: list[str]) -> list[int]:
    """WRITE_KILLS distinct 1-based points, seeded, covering every moment and config, checkpoint, best, history."""
    rng = random.Random(SEED)
    while True:
        chosen = sorted(rng.sample(range(1, len(points) + 1), WRITE_KILLS))
        names = {points[i - 1] for i in chosen}
        if all(any(n.endswith(":" + m) for n in names) for m in MOMENTS) and all(
            any(n.startswith(f + ":") for n in names) for f in (CONFIG, LAST, BEST, "history.json")
        ):
            return chosen


@pytest.mark.slow
def test_the_reference_run_passes_every_write_point(reference: dict) -> None:
    points = reference["points"]
    per_write = [points[i:i + 4] for i in range(0, len(points), 4)]
    assert all([p.split(":")[1] for p in write] == list(MOMENTS) for write in per_write)
    files = [write[0].split(":")[0] for write in per_write]
    assert files[0] == CONFIG and files[-1] == "summary.json"
    assert files.count(LAST) == 3 and files.count("history.json") == 3  # one of each per epoch


@pytest.mark.slow
def test_sigkill_at_20_seeded_moments_then_resume_is_bit_identical(
    reference: dict, children: multiprocessing.context.BaseContext, tmp_path: Path, capsys: pytest.CaptureFixture,
    single_thread: None,
) -> None:
    rng = random.Random(SEED)
    outcomes = []
    for at in _write_kill_points(reference["points"]):  # inside the writes, at a named moment
        out, log = tmp_path / f"write{at}", tmp_path / f"write{at}.log"
        assert _wait(_child(children, out, log, at)) == -signal.SIGKILL
        assert log.read_text().split()[-1] == reference["points"][at - 1]  # it died exactly there
        assert_consistent(out)
        outcomes.append(resume_after_kill(out, capsys))
        assert_same_run(out, reference["out"])
    for kill in range(TIMED_KILLS):  # anywhere: a seeded delay after the run saved its settings
        out, code, window = tmp_path / f"timed{kill}", 0, 0.9 * reference["after_config"]
        while code == 0:  # a run that finished before its kill proves nothing: again, in a shorter window
            shutil.rmtree(out, ignore_errors=True)
            code = _kill_after(children, out, tmp_path / f"timed{kill}.log", rng.uniform(0.0, window))
            window /= 2
        assert code == -signal.SIGKILL
        assert_consistent(out)
        outcomes.append(resume_after_kill(out, capsys))
        assert_same_run(out, reference["out"])
    print(f"kill outcomes: { {o: outcomes.count(o) for o in set(outcomes)} }")
    assert len(outcomes) == 20 and outcomes.count("resumed") >= 14  # most kills land after config.json


class _FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are written, as a full disk does (wraps a real file)."""

    def __init__(self, file, room: int) -> None:
        self._file, self._room = file, room

    def write(self, data) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._file.write(data)

    def __getattr__(self, name: str):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


def _fill_disk_after(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    real = os.fdopen
    monkeypatch.setattr(atomic.os, "fdopen", lambda handle, mode: _FullDisk(real(handle, mode), room))


@pytest.mark.parametrize("room", [0, 1, 700, 5000, 200_000])  # bytes that still fit: none, a header, mid-tensor
def test_a_full_disk_mid_checkpoint_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room: int
) -> None:
    path = tmp_path / LAST
    save_checkpoint(path, {"model": {"w": torch.arange(100_000.0)}, "epoch": 1})
    before = path.read_bytes()
    _fill_disk_after(monkeypatch, room)
    with pytest.raises(StorageError) as caught:  # torch.save wraps the OSError in a RuntimeError: unwrapped
        save_checkpoint(path, {"model": {"w": torch.zeros(100_000)}, "epoch": 2})
    message = str(caught.value)
    assert str(path) in message and "disk is full" in message and "previous checkpoint.pt is intact" in message
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [LAST], "a temporary file was left behind"


def test_a_full_disk_at_a_first_json_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fill_disk_after(monkeypatch, 3)
    with pytest.raises(StorageError, match="No history.json was written"):
        save_json(tmp_path / "history.json", [{"epoch": 1}])
    assert list(tmp_path.iterdir()) == []


def _disk_full_at(monkeypatch: pytest.MonkeyPatch, point: str, occurrence: int, snapshot: dict) -> None:
    """Make the `occurrence`-th write of a file fail with ENOSPC at fault point `point` (after the data, at sync).

    `snapshot` receives the target's bytes just before the failing write (None if it did not exist yet).
    """
    seen = {"n": 0}

    def full(name: str) -> None:
        if name == point:
            seen["n"] += 1
            if seen["n"] == occurrence:
                target = snapshot["folder"] / name.split(":")[0]
                snapshot["before"] = target.read_bytes() if target.exists() else None
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "fault_point", full)


@pytest.mark.slow
@pytest.mark.parametrize("name, occurrence", [(LAST, 2), (BEST, 1), ("history.json", 3), ("summary.json", 1),
                                              (CONFIG, 1)])
def test_a_full_disk_during_the_run_exits_1_keeps_files_and_resume_finishes(
    reference: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    name: str, occurrence: int, single_thread: None,
) -> None:
    out = tmp_path / "run"
    snapshot = {"folder": out}
    _disk_full_at(monkeypatch, f"{name}:written", occurrence, snapshot)
    assert finetune.main([*RUN, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"Could not write {out / name}: the disk is full" in err and "Traceback" not in err
    assert "--resume" in err
    after = (out / name).read_bytes() if (out / name).exists() else None
    assert after == snapshot["before"]  # the previous file, byte for byte (or still none)
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"
    assert_consistent(out)
    monkeypatch.undo()  # space freed
    assert resume_after_kill(out, capsys) in ("resumed", "restarted")
    assert_same_run(out, reference["out"])
