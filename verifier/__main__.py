"""``python -m verifier``: the same command line as ``kms-verifier``."""

import sys

from verifier.cli import main

sys.exit(main())
