"""`python -m vitlab.explorer`: how to open the attention explorer, and where its timings are measured.

The explorer is a Streamlit page (`streamlit run streamlit_app.py` from a checkout); its timings are a row of the
benchmark (`python -m vitlab.bench --rows explorer`), which this package does not import.
"""

import sys

USAGE = ("Open the attention explorer with: streamlit run streamlit_app.py (from the vitlab checkout). Its timings: "
         "python -m vitlab.bench --rows explorer [--arch vit_tiny] [--repeats 5].")

if __name__ == "__main__":
    if sys.argv[1:]:
        print(f"python -m vitlab.explorer takes no flags ({' '.join(sys.argv[1:])}). {USAGE}", file=sys.stderr)
        raise SystemExit(2)
    print(USAGE)
