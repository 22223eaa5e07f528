"""`python -m fastbert ...`: the same command line as the `fastbert` console script."""

import sys

from .cli import main

sys.exit(main())
