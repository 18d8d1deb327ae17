"""qscale.kernels."""
