"""One small module per scheduler, all with the same verbs (see base.py)."""
