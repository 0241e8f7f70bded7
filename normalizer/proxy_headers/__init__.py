"""Codecs for the metadata headers a proxy writes at the start of each forwarded connection."""

from normalizer.proxy_headers.base import HeaderError, NeedMore, ProxyHeader, Tlv
from normalizer.proxy_headers.detect import HeaderKind, parse_header

__all__ = ["HeaderError", "HeaderKind", "NeedMore", "ProxyHeader", "Tlv", "parse_header"]
