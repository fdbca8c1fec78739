"""Is a PyTorch file the bytes it was written as? Every entry's CRC-32 checked before torch reads it.

A PyTorch file (`torch.save`, zip format) is a zip archive: the pickled structure in data.pkl and one stored entry per
tensor, each with the CRC-32 of its bytes in the zip directory. `torch.load` does not check those CRCs (measured with
torch 2.14: a flipped byte inside a tensor's data loads without a word, as a silently different weight), so vitlab
checks them: CRC-32 detects every change of up to 32 consecutive bits, so a flipped byte in any entry is always
caught. A flip in the zip's own bookkeeping (headers, directory) either breaks the archive, which this check or
torch then refuses, or touches a field nothing reads (a timestamp), which changes nothing loaded.

Files in torch's older non-zip format carry no checksums; they are left to torch.load.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

CHUNK = 1 << 20  # bytes read at a time: a ViT-B/16 checkpoint (about 1 GB) is checked in constant memory


class DamagedFileError(ValueError):
    """A PyTorch file's bytes differ from what was written (its zip structure or an entry's CRC-32)."""


def check_torch_file(path: str | os.PathLike) -> None:
    """Raise DamagedFileError if the zip-format PyTorch file at `path` fails its structure or any entry's CRC-32.

    A file that is not a zip archive at all (torch's legacy format, or a zip truncated before its directory) is
    left to torch.load, which refuses a damaged one itself.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        with path.open("rb") as file:
            head = file.read(4)
        if head == b"PK\x03\x04":  # starts as a zip, but its directory is gone: truncated
            raise DamagedFileError("the zip archive has no end-of-directory record (the file is truncated)")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist():
                _check_entry(archive, entry)
    except Exception as error:  # whatever zipfile trips on (BadZipFile for a bad CRC-32, struct.error, ...)
        raise DamagedFileError(f"its bytes fail the zip archive's own checks ({error})") from None


def _check_entry(archive: zipfile.ZipFile, entry: zipfile.ZipInfo) -> None:
    """Read one entry through: zipfile compares the bytes read with the directory's CRC-32 and size at the end."""
    with archive.open(entry) as stream:
        while stream.read(CHUNK):
            pass
