"""``python -m benchmarks``: run every CPU case and print the table (see benchmarks/README.md)."""

import sys

from .cpu import main

sys.exit(main())
