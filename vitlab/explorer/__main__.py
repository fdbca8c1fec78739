"""`python -m vitlab.explorer --bench`: the explorer's benchmark, which lives in vitlab.bench.explorer.

Only this entry point imports the bench; the package's __init__ does not, so the two never import each other.
"""

from vitlab.bench.explorer import main

raise SystemExit(main())
