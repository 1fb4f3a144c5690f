"""The ``ownchat`` command line."""
