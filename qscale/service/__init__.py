"""qscale.service."""
