"""Small utilities with no AMoLE knowledge: atomic file writes, cache paths, stable seeds."""
