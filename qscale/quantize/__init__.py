"""qscale.quantize."""
