"""ownchat's evaluator service."""
