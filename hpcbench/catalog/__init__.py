"""Built-in model catalog and sweeps (package data)."""
