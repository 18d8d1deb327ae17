"""qscale.collect."""
