"""``python -m eve_enricher``: the same command as ``eve-enricher``."""

import sys

from eve_enricher.cli import main

sys.exit(main())
