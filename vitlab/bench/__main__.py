"""`python -m vitlab.bench`: see vitlab/bench/__init__.py."""

from vitlab.bench.cli import main

raise SystemExit(main())
