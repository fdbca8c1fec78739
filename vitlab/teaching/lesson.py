"""What a lesson's cells call: its settings and model, printing, saving figures, and the check against vitlab.

A lesson (lessons/NN_topic.py) is a jupytext py:percent notebook. Its first code cell imports and sets FLAGS, the next
reads the settings and loads the model to study:

    FLAGS = []                                        # in a notebook: e.g. ["--arch", "vit_b_16"]
    settings = start("07_rollout", FLAGS, own_flags)  # the flags: the common ones and the lesson's own
    subject = study(settings)                         # the model to study, with its test images
    ...
    assert_same(rollout(a), rollout_by_hand(a), vitlab="vitlab's rollout", lesson="rollout_by_hand")
    explain(f"Model: {subject.name} ...")             # prose with computed numbers, wrapped to 100 columns
    save(figure, settings.out, "figure.png")          # a PNG under --out, a line saying where; shown in a notebook

Where the command line comes from, by how the lesson runs:
- `python lessons/07_rollout.py --discard 0.5`: `start` hands the file to `vitlab.teaching.cells.run_lesson_file`,
  which runs every cell with that command line and vitlab's exit codes (a VitlabError is one line and exit 2), then
  ends the process with that code. So a lesson needs no `main` and no `if __name__ == "__main__"`.
- run by `run_lesson_file` (tests, the script above): its argv, after FLAGS.
- in a notebook kernel (Jupyter, VS Code, Colab), whose sys.argv is the kernel's own: FLAGS only. Change FLAGS in
  the first code cell and run the cells again. (The same holds wherever else a lesson's code is run without the
  runner, e.g. pasted into a Python prompt.)

Importing this module loads no model and writes nothing; `study` does the loading.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from vitlab.plotting import save_figure
from vitlab.teaching.cells import FlagsChecked, active_run, run_lesson_file
from vitlab.teaching.checks import assert_same
from vitlab.teaching.flags import OwnFlags, parse_args, studies_small_model, use_threads
from vitlab.teaching.subject import Subject, demo_run, study

__all__ = ["LARGEST_BLOCKS", "LARGEST_GRID", "Subject", "assert_same", "demo_run", "explain", "in_notebook",
           "save", "start", "study"]

LARGEST_BLOCKS = 12  # ViT-B/16's encoder blocks: the most any lesson's model has
LARGEST_GRID = 14  # ViT-B/16's 14x14 patch grid


def start(name: str, flags: Sequence[str] = (), own_flags: OwnFlags | None = None) -> argparse.Namespace:
    """The lesson's settings: `flags` (the lesson's FLAGS) followed by the command line, parsed and checked.

    name: the lesson's file name without .py; it names the default --out folder. As a script, this call runs the
    whole lesson through `run_lesson_file` and exits with its code (see the module docstring). Sets PyTorch's
    thread count (--threads; 1 for the small model, where more threads only wait for each other).
    """
    run = active_run()
    if run is None and not in_notebook():
        script = Path(getattr(sys.modules["__main__"], "__file__", "") or "")
        if script.stem == name:  # python lessons/NN_topic.py [flags]
            raise SystemExit(run_lesson_file(script, sys.argv[1:]))
    argv = [*flags, *(run.argv if run is not None else ())]
    settings = parse_args(name, argv, own_flags, title=run.title if run is not None else "")
    if run is not None and run.flags_only:
        raise FlagsChecked()
    use_threads(settings, small=studies_small_model(settings))
    return settings


def in_notebook() -> bool:
    """Whether this runs in an IPython kernel (Jupyter, VS Code's notebooks, Colab): there sys.argv is the kernel's."""
    ipython = sys.modules.get("IPython")
    return ipython is not None and ipython.get_ipython() is not None


def explain(text: str) -> None:
    """Print prose, dedented; paragraphs are wrapped to 100 columns, except indented ones (tables), kept as typed."""
    paragraphs = textwrap.dedent(text).strip("\n").split("\n\n")
    print("\n\n".join(p.rstrip() if p.startswith(" ") else textwrap.fill(" ".join(p.split()), width=100)
                      for p in paragraphs) + "\n")


def save(fig: Figure, out: str | Path, file_name: str) -> None:
    """Save a figure as PNG under `out` and say where; in a notebook, also show it below the cell."""
    path = save_figure(fig, Path(out) / file_name)
    print(f"  wrote {path}")
    if in_notebook():
        from IPython.display import Image, display  # only ever imported inside a running kernel

        display(Image(data=path.read_bytes(), format="png"))
