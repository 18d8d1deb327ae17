"""qscale.corpora."""
