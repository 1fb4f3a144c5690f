"""ownchat's serving service."""
