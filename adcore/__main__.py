"""Entry point for ``python -m adcore``."""

import sys

from adcore.cli import main

sys.exit(main())
