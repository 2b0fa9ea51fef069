"""``python -m arssr_rt.bench``: run every CPU case and print the tables."""

import sys

from .cpu import main

sys.exit(main())
