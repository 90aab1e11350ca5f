"""`python -m server serve` runs the same command line as `promptswap`."""

import sys

from server.cli import main

sys.exit(main())
