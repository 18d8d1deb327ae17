"""qscale.formats."""
