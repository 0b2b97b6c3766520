"""`python -m benchmark` is `shotstream-bench`."""

import sys

from benchmark.cli import main

sys.exit(main())
