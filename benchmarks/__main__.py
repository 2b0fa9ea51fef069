"""``python -m benchmarks`` (from a source checkout): the benchmark now lives in arssr_rt.bench."""

import sys

from arssr_rt.bench.cpu import main

sys.exit(main())
