"""`python -m vitlab.explorer --bench`."""

from vitlab.explorer.views import main

raise SystemExit(main())
