"""ownchat's data service."""
