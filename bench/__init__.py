"""Benchmarks: ``./run bench`` prints ratios against baselines run in the same process."""
