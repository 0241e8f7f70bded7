"""``python -m normalizer``: the same command as ``suricata-normalizer``."""

import sys

from normalizer.cli import main

sys.exit(main())
