"""Strips proxy metadata headers from captured TCP flows so Suricata sees the real streams."""

__version__ = "0.1.0"
