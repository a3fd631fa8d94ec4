"""``python -m netsiam.dashboard``: see :mod:`netsiam.dashboard.cli`."""

import sys

from netsiam.dashboard.cli import main

sys.exit(main())
