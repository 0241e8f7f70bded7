"""``eve-enricher``: entry point reserved for the eve enrichment commands (issue 3).

Until the connection cache exists there is nothing to enrich from; the command says so
plainly instead of pretending to work.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "eve-enricher: not available yet: it needs the connection cache the normalizer will "
        "write (see issue 3)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
