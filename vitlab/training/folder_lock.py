"""One run per run folder: a lock held for the life of a run, so a second run into the same folder is refused.

Two runs writing one folder would mix their checkpoints and histories, and the second run's clean-up of temporary
files would delete the first run's writes in flight. So `python -m vitlab.finetune` and `python -m vitlab.pretrain`
lock their run folder before any work (before data is loaded or a file is written) and hold it until they exit. A
second run, or a `--resume`, into a folder in use is refused at once (a VitlabError: exit 2) with the folder's name.

The lock is the operating system's: `fcntl.flock` on the hidden file `.vitlab-lock` inside the folder
(`msvcrt.locking` on Windows). The kernel drops it when the process ends, however it ends (SIGKILL, the OOM killer,
a crash), so a killed run never leaves its folder locked and `--resume` works at once. The file holds the holder's
process id, for the refusal message. A run that ends normally removes the file; a killed run leaves it behind, an
empty-looking hidden file that the next run in the folder takes over. It is never "a run in the folder": only
checkpoint.pt and config.json are (`vitlab.training.checkpoint`).

Where the platform has neither lock (rare), runs go unlocked and the lock says so in `note`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from vitlab.errors import StorageError, VitlabError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # every platform but Windows
    msvcrt = None

LOCK_FILE = ".vitlab-lock"


class FolderInUse(VitlabError):
    """Another process holds the run folder's lock (CLI exit code 2: nothing was done)."""


@dataclass
class FolderLock:
    """A run folder's lock while this process holds it; `release()` (or leaving a `with` block) gives it up."""

    folder: Path
    handle: int | None  # the open lock file; None once released, or where the platform cannot lock
    created_folder: bool  # this lock made the folder: releasing removes it again if nothing was written there
    note: str | None = None  # why the folder is not locked, where the platform has no lock

    def release(self) -> None:
        """Give the lock up and remove the lock file (and the folder, if the lock made it and it is still empty)."""
        if self.handle is None:
            return
        path = self.folder / LOCK_FILE
        if fcntl is not None:  # removed while held: a process that opened the old file sees it is gone (_take)
            path.unlink(missing_ok=True)
            os.close(self.handle)
        else:  # Windows cannot remove an open file: close, then remove it unless another run took it meanwhile
            os.close(self.handle)
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        self.handle = None
        if self.created_folder:
            with contextlib.suppress(OSError):  # only an empty folder: a run that wrote nothing leaves nothing
                self.folder.rmdir()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


def lock_folder(folder: str | os.PathLike) -> FolderLock:
    """Lock `folder` for this process (creating it if needed), or raise FolderInUse naming it and its holder.

    Raises:
        FolderInUse: another process holds the folder's lock.
        StorageError: the folder or its lock file cannot be created (a read-only disk, no permission).
    """
    folder = Path(folder).expanduser()
    if fcntl is None and msvcrt is None:
        return FolderLock(folder, None, False, note=f"this platform has no file locks, so {folder} is not locked: "
                          "do not start a second run into it while this one runs.")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = _take(folder / LOCK_FILE)
    except OSError as error:
        raise StorageError(f"Could not lock the run folder {folder}: {error.strerror or error}. Check that the "
                           f"folder is writable, or choose another --out.") from None
    if handle is None:
        raise FolderInUse(f"{folder} is in use by another run ({_holder(folder / LOCK_FILE)}): two runs in one "
                          f"folder would mix their files, so this one did nothing. Wait for that run to end, or "
                          f"choose another --out; a run that was stopped continues with --resume {folder}.")
    return FolderLock(folder, handle, created)


def _take(path: Path) -> int | None:
    """Open `path` and lock it without waiting: the open file, or None if another process holds it."""
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(handle):
            os.close(handle)
            return None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(handle)):
            os.ftruncate(handle, 0)
            os.write(handle, str(os.getpid()).encode())
            return handle
        os.close(handle)  # the holder removed the file between our open and our lock: take the new one


def _try_lock(handle: int) -> bool:
    """Lock an open file exclusively without waiting; False if another process holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    try:
        msvcrt.locking(handle, msvcrt.LK_NBLCK, 1)
    except OSError:  # msvcrt says "held elsewhere" with a PermissionError
        return False
    return True


def _holder(path: Path) -> str:
    """Who holds the lock, as words for the message: "process 1234" when the file says so."""
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"
