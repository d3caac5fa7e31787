"""An example npcompile plugin package (see README.md)."""
