"""The fuzz target of issue 11 (``./run fuzz``): hostile input, its own oracle, reproducers."""
