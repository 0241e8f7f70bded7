"""Benchmarks: ``./run bench`` (python -m bench) prints ratios against baselines run in the same process."""
