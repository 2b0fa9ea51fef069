"""CPU benchmarks of arssr-rt against the straightforward torch pipeline (extra: torch).

``arssr-rt bench`` or ``python -m arssr_rt.bench``; results and notes in benchmarks/ of the
source tree. Every measurement runs in a fresh process (``measure.py``, ``e2e.py``).
"""
