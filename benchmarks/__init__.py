"""Benchmark results and notes; the code is the arssr_rt.bench package (``python -m benchmarks``)."""
