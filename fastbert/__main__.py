"""`python -m fastbert ...`: the same command line as the `fastbert` console script."""

import sys

from fastbert.cli.main import main

sys.exit(main())
