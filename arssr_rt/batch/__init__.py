"""Batch processing: discover inputs, skip what is up to date, run many volumes with one model
load per worker, and report every input's fate (see docs/batch.md)."""
