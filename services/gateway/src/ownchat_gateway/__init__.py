"""ownchat's gateway service."""
