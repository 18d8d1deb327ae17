"""qscale.measure."""
