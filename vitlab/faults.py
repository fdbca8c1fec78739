"""Test-only fault injection: kill this process with SIGKILL at the N-th named write point it reaches.

vitlab's file writes (`vitlab.atomic.atomic_write`: checkpoints, JSON, figures) call `fault_point(name)` at the
moments a crash is most likely to corrupt something: the temporary file just created, fully written but not yet on
disk, on disk but not yet moved into place, and moved into place. Names are "<file name>:<moment>", for example
"checkpoint.pt:synced". The test suite (tests/test_faults.py) sets

    VITLAB_FAULT_AT="N:/path/to/points.log"

in a child process: each point reached appends its name as one line to points.log, and the N-th one kills the
process on the spot (no cleanup, no `finally`, as a power cut or the OOM killer would). N = 0 only logs, which is how
the test lists every point of a run before choosing where to kill. The count lives in that file, never in this
process, so nothing here is global mutable state. Without the variable, `fault_point` does nothing.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "VITLAB_FAULT_AT"

# The moments of one atomic write, in order (vitlab.atomic.atomic_write).
MOMENTS = ("created", "written", "synced", "replaced")


def fault_point(name: str) -> None:
    """Log reaching point `name` and SIGKILL this process if it is the N-th point; a no-op without VITLAB_FAULT_AT."""
    spec = os.environ.get(VARIABLE)
    if not spec:
        return
    at, _, log = spec.partition(":")
    with open(log, "a", encoding="utf-8") as file:
        file.write(name + "\n")
    with open(log, encoding="utf-8") as file:
        reached = sum(1 for _ in file)
    if int(at) == reached:
        os.kill(os.getpid(), signal.SIGKILL)
