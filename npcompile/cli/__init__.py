"""The ``npcompile`` command line (see :mod:`.main`)."""

from npcompile.cli.main import app, main

__all__ = ["app", "main"]
