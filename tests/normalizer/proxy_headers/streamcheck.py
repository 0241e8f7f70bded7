"""Checks the contract every header codec shares, on every prefix of a byte string.

The stream core calls a codec on the growing prefix of a stream, one segment at a time, so the
codec must behave as a monotone function of the prefix: "need more" until the header is
complete or provably broken, then the same answer forever. These checks state that once, for
all codecs and for the dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable

from normalizer.proxy_headers.base import HeaderError, NeedMore, ProxyHeader

Result = ProxyHeader | NeedMore | HeaderError
Parser = Callable[[bytes], ProxyHeader | NeedMore]


def outcome(parse: Parser, buf: bytes) -> Result:
    """parse(buf), with HeaderError returned instead of raised; any other exception propagates."""
    try:
        result = parse(buf)
    except HeaderError as e:
        return e
    assert isinstance(result, ProxyHeader | NeedMore), f"unexpected result {result!r}"
    return result


def check_prefixes(parse: Parser, data: bytes) -> Result:
    """Feed every prefix of ``data`` (byte by byte, then whole) and check the contract.

    * only ProxyHeader, NeedMore or HeaderError come out;
    * NeedMore.at_least > len(prefix), and no header completes before at_least bytes (an error
      may: a codec rejects as soon as a byte rules a header out);
    * once a header or an error comes out, every longer prefix gives the same answer;
    * a header is reported exactly when its last byte arrives (length == that prefix length).

    Returns the outcome for the whole of ``data``.
    """
    results = [outcome(parse, data[:i]) for i in range(len(data) + 1)]
    # Linear, not quadratic, in the header's size (a v2 header may claim 64 KiB): once the
    # first answer that is not NeedMore has come, a later NeedMore fails anyway.
    first_header = next((j for j, x in enumerate(results) if isinstance(x, ProxyHeader)), None)
    final_at = None
    for i, r in enumerate(results):
        if isinstance(r, NeedMore):
            assert r.at_least > i, f"NeedMore({r.at_least}) for {i} bytes"
            assert final_at is None, f"NeedMore at {i} after a final answer at {final_at}"
            upto = min(r.at_least, len(results))
            assert first_header is None or not i <= first_header < upto, (
                f"NeedMore({r.at_least}) at {i} but a header came earlier"
            )
        elif final_at is None:
            final_at = i
            if isinstance(r, ProxyHeader):
                assert r.length == i, f"header of length {r.length} completed at {i} bytes"
        else:
            first = results[final_at]
            if isinstance(first, ProxyHeader):
                assert r == first, f"header changed at {i} bytes: {first!r} -> {r!r}"
            else:
                assert isinstance(r, HeaderError), f"error at {final_at} became {r!r} at {i}"
    return results[-1]
