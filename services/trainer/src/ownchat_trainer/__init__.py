"""ownchat's trainer service."""
