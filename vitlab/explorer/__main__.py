"""`python -m vitlab.explorer`: how to open the attention explorer, and where its timings are measured.

The explorer is a Streamlit page (`streamlit run streamlit_app.py` from a checkout); its timings are a row of the
benchmark (`python -m vitlab.bench --rows explorer`), which this package does not import. The command takes no flags
but --help: anything else exits 2 with one line naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

from vitlab.cli import Parser, command

USAGE = ("Open the attention explorer with: streamlit run streamlit_app.py (from the vitlab checkout). Its timings: "
         "python -m vitlab.bench --rows explorer [--arch vit_tiny] [--repeats 5].")


@command("vitlab")
def main(argv: Sequence[str] | None = None) -> int:
    """Print how to open the explorer; 0, or 2 for any flag but --help."""
    Parser(prog="python -m vitlab.explorer", description=USAGE).parse_args(argv)
    print(USAGE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
