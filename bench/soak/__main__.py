"""``python -m bench.soak``: see :mod:`bench.soak`."""

from bench.soak.run import main

raise SystemExit(main())
