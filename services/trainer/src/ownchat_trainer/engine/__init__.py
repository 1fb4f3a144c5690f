"""The training engine: the parts of a training step and of its bookkeeping.

Pure PyTorch (plus transformers and peft), with no knowledge of the service:
the worker process composes these into a run.
"""
