"""qscale.laws."""
