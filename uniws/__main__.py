"""`python -m uniws` runs the command line."""

import sys

from uniws.cli import main

sys.exit(main())
