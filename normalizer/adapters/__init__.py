"""Thin I/O around the core: capture files, the AF_PACKET ring, the tap, metrics."""
