"""qscale.lm."""
