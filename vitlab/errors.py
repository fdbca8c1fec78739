"""The one exception type vitlab raises for problems a user can fix.

Every `VitlabError` message says what happened, why, and what to do next. Command-line entry points catch it,
print the message without a traceback and exit with status 2 ("bad input"); library callers can catch it too.
"""

from __future__ import annotations


class VitlabError(Exception):
    """A problem with the user's input or environment, explained in the message (CLI exit code 2)."""


class WeightsUnavailableError(VitlabError):
    """Pretrained weights are neither in torchvision's cache nor downloadable (for example: no network)."""


class DataUnavailableError(VitlabError):
    """A dataset is missing, unreadable or corrupt, and cannot be downloaded."""


class CheckpointError(VitlabError):
    """A checkpoint file is missing, not a vitlab checkpoint, unsafe to load, or made for another model."""


class StorageError(VitlabError):
    """A file could not be written: the disk is full, over quota, read-only or failing (CLI exit code 1).

    Not bad input, so the training job exits 1 rather than 2. The file it was writing is left as it was before.
    """


class UsageError(VitlabError):
    """A command line argparse could not read: an unknown flag, a missing value, a choice that does not exist."""


class TrainingFailed(Exception):
    """The run itself failed (for example its loss became NaN): the input was fine (CLI exit code 1)."""


class Interrupted(Exception):
    """The user pressed Ctrl-C; the message says what was kept and how to continue (CLI exit code 130)."""
