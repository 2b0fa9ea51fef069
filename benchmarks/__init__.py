"""CPU benchmarks of arssr-rt against the straightforward torch pipeline (``python -m benchmarks``)."""
