"""``python -m fluxmon``."""

import sys

from fluxmon.cli import main

sys.exit(main())
