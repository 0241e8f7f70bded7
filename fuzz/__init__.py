"""The fuzz target of issue 11 (``./run fuzz``): hostile input, an independent oracle, reproducers."""
