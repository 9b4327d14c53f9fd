"""``python -m bench [--rows N] [--repeat R] [--only NAME] [--json FILE] [--large] [--database URL]``."""
import sys

from .runner import main

sys.exit(main())
