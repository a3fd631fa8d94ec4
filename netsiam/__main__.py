import sys

from netsiam.cli import main

sys.exit(main())
