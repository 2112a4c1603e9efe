"""`python -m pblink ...` is `pblink ...`."""

import sys

from pblink.cli import main

sys.exit(main())
