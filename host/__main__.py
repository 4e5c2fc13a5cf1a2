"""``python -m host``: the same as ``kms-host``."""

import sys

from host.cli import main

sys.exit(main())
