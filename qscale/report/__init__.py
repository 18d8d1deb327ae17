"""qscale.report."""
