"""One run per run folder: a run, a `--resume` or a pretraining into a folder in use exits 2 naming it, before any
work, and leaves the first run's files alone; the lock goes with its process, even when that process is SIGKILLed.

The lock is held two ways here: by a second real process (a fine-tuning run stopped with SIGSTOP right after it saved
its config.json, so it holds the folder for as long as the test needs, then continued with SIGCONT), and, for the
cheap cases, by this test process itself through `lock_folder`, which is the lock every run takes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from vitlab.training import finetune, folder_lock, pretrain
from vitlab.training.checkpoint import CONFIG, LAST, save_json
from vitlab.training.config import make_config
from vitlab.training.flags import explicit_flags
from vitlab.training.folder_lock import LOCK_FILE, FolderInUse, lock_folder

# The demo preset in miniature: the shipped base, the cached trunk, best.pt and checkpoint.pt, in seconds.
DEMO = ["--preset", "demo", "--subset", "256", "--epochs", "2", "--batch-size", "32", "--quiet"]
# Trains every block from scratch, with no trunk cache: a run torchrun's processes can share.
SCRATCH = ["--preset", "demo", "--dataset", "shapes",
           "--pretrained", "none", "--trainable-blocks", "all", "--lr", "1e-3", "--subset", "64",
           "--epochs", "1", "--batch-size", "32", "--quiet"]
PRETRAIN = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--num-classes", "5", "--quiet"]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vitlab.finetune", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of a folder, by name, with its bytes."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended ({process.returncode}) before writing {path.name}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.005)


def _refused(result: subprocess.CompletedProcess, folder: Path) -> None:
    """Exit 2, one line naming the folder as in use, no traceback."""
    err = result.stderr.strip()
    assert result.returncode == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{folder} is in use by another run" in err, err


@pytest.mark.slow
def test_a_second_run_or_resume_into_a_folder_in_use_is_refused_and_the_first_run_finishes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen(_command(*DEMO, "--out", str(out)), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / CONFIG, first)
        first.send_signal(signal.SIGSTOP)  # it holds the folder, mid-run, until continued
        before = _files(out)
        for argv in ([*DEMO, "--out", str(out)], ["--resume", str(out), "--quiet"]):
            second = subprocess.run(_command(*argv), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                                    timeout=300)
            _refused(second, out)
            assert _files(out) == before  # the first run's files, byte for byte, and nothing added
            assert f"process {first.pid}" in second.stderr  # who holds it
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert [record["epoch"] for record in json.loads((out / "history.json").read_text())] == [1, 2]
    assert (out / "summary.json").is_file() and not (out / LOCK_FILE).exists()  # released at the end


@pytest.mark.slow
def test_after_a_sigkill_the_lock_is_gone_and_resume_finishes_the_run(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    run = subprocess.Popen(_command(*DEMO, "--out", str(out)), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        _wait_for(out / LAST, run)  # epoch 1 is on disk
    finally:
        run.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
    run.wait(timeout=60)
    assert (out / LOCK_FILE).exists()  # left behind: a killed run cannot remove it, and it locks nothing
    resumed = subprocess.run(_command("--resume", str(out), "--quiet"), cwd=tmp_path, env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert len(json.loads((out / "history.json").read_text())) == 2 and (out / "summary.json").is_file()
    assert not (out / LOCK_FILE).exists()  # the resumed run took the file over and removed it at its end


@pytest.mark.slow
def test_under_torchrun_every_rank_stops_at_once_when_the_folder_is_in_use(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "vitlab.finetune", *SCRATCH, "--out", str(out)]
    with lock_folder(out):
        result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
        assert sorted(path.name for path in out.iterdir()) == [LOCK_FILE]  # nothing was written
    assert result.returncode != 0
    # Rank 0 was refused and told rank 1, so both said why and exited 2; neither waited for the other to time out.
    # Counted in the text, not by line: the two ranks' lines can interleave on one stderr.
    assert result.stderr.count(f"{out} is in use by another run") == 2, result.stderr[-3000:]


def test_a_run_into_a_locked_folder_exits_2_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    loads = []
    monkeypatch.setattr(finetune, "load_dataset", lambda *args, **kwargs: loads.append(args))
    with lock_folder(out):  # as another run would hold it
        assert finetune.main([*SCRATCH, "--out", str(out)]) == 2
        assert f"{out} is in use by another run (process {os.getpid()})" in capsys.readouterr().err
        assert sorted(path.name for path in out.iterdir()) == [LOCK_FILE]  # nothing written
        save_json(out / CONFIG, asdict(make_config(explicit_flags([*SCRATCH, "--out", str(out)]))))  # its settings
        assert finetune.main(["--resume", str(out)]) == 2
        assert f"{out} is in use by another run" in capsys.readouterr().err
        assert sorted(path.name for path in out.iterdir()) == [LOCK_FILE, CONFIG]
    assert loads == []  # no data was loaded


def test_a_pretraining_into_a_locked_folder_exits_2_and_writes_nothing(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "pretrain"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with lock_folder(out):
        assert pretrain.main([*PRETRAIN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} is in use by another run" in err and len(err.strip().splitlines()) == 1
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]  # a folder it did not make stays


def test_a_refused_run_leaves_no_folder_and_a_finished_one_no_lock_file(tmp_path: Path) -> None:
    empty = tmp_path / "no_classes"
    empty.mkdir()
    out = tmp_path / "refused"
    # The folder dataset is read after the lock is taken: a folder with no class subfolders is refused then.
    assert finetune.main(["--arch", "vit_tiny", "--dataset", "folder", "--data-dir", str(empty), "--quiet",
                          "--out", str(out)]) == 2
    assert not out.exists()
    done = tmp_path / "done"
    assert pretrain.main([*PRETRAIN, "--out", str(done)]) == 0
    assert not (done / LOCK_FILE).exists() and (done / "base.pt").is_file()


def test_a_left_lock_file_is_no_run_and_locks_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "after_kill"
    out.mkdir()
    (out / LOCK_FILE).write_text("999999")  # what a SIGKILLed run leaves: the file, not the lock
    assert finetune.main(["--resume", str(out)]) == 2
    assert "holds no run to resume" in capsys.readouterr().err
    with lock_folder(out) as lock:  # free to take
        assert (out / LOCK_FILE).read_text() == str(os.getpid()) and lock.note is None


def test_the_lock_is_taken_once_and_released_on_exit_from_the_block(tmp_path: Path) -> None:
    with lock_folder(tmp_path / "a"), pytest.raises(FolderInUse, match="is in use"):
        lock_folder(tmp_path / "a")
    with lock_folder(tmp_path / "a"):  # released by the block above: taken again at once
        pass


def test_without_file_locks_runs_go_unlocked_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folder_lock, "fcntl", None)
    monkeypatch.setattr(folder_lock, "msvcrt", None)
    with lock_folder(tmp_path / "x") as lock:
        assert "not locked" in lock.note and lock.handle is None
    # A platform without fcntl (Windows) imports the module: the lock falls back to msvcrt there.
    code = ("import sys; sys.modules['fcntl'] = None; import vitlab.training.folder_lock as lock; "
            "assert lock.fcntl is None; print('imported')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "imported", result.stderr
