"""Atomic file writes: a temporary file next to the target, written, synced, then moved into place.

A crash, Ctrl-C or SIGKILL at any moment leaves the previous file intact (`os.replace` is atomic on one file
system), and a write that fails (a full disk, a read-only folder) removes its temporary file and raises a
`StorageError` that names the file and says what to do. A SIGKILL can still leave a temporary file behind (nothing
runs after it): `remove_stale_temporaries` clears those when a run folder is opened again.

Every write passes four fault points (`vitlab.faults`) that the crash tests kill at.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from vitlab.errors import StorageError
from vitlab.faults import fault_point

FULL = (errno.ENOSPC, errno.EDQUOT)  # the disk, or the user's quota on it, is full


def _temporary_pattern(name: str) -> str:
    return f".{name}.*.tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Call `write(file_object)` on a temporary file next to `path`, then move it into place atomically.

    Raises:
        StorageError: the file could not be written (disk full, quota, read-only, I/O error); `path` is unchanged
            and no temporary file is left.
    """
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        fault_point(f"{path.name}:created")
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            fault_point(f"{path.name}:written")
            os.fsync(file.fileno())
        fault_point(f"{path.name}:synced")
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        failure = _os_error(error)
        if failure is None:
            raise
        raise _storage_error(path, failure) from None
    fault_point(f"{path.name}:replaced")
    return path


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind `error`, if any: torch.save wraps a failed write in a RuntimeError (its __context__)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _storage_error(path: Path, failure: OSError) -> StorageError:
    kept = f"The previous {path.name} is intact" if path.exists() else f"No {path.name} was written"
    if failure.errno in FULL:
        return StorageError(
            f"Could not write {path}: the disk is full ({os.strerror(failure.errno)}). {kept}, and no partial file "
            f"was left. Free space on the disk holding {path.parent} (see `df -h {path.parent}`), or write to "
            f"another disk, then run the command again (a training run continues with --resume)."
        )
    return StorageError(
        f"Could not write {path}: {failure.strerror or failure}. {kept}, and no partial file was left. Check that "
        f"{path.parent} is writable and the disk is healthy, then run the command again."
    )


def remove_stale_temporaries(folder: str | os.PathLike, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files a killed `atomic_write` of `names` left in `folder`; returns what was removed."""
    removed = []
    for name in names:
        for stale in Path(folder).glob(_temporary_pattern(name)):
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
