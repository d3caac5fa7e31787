"""``python -m npcompile`` runs the command line."""

import sys

from npcompile.cli import main

sys.exit(main())
