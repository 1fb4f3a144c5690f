"""ownchat: train your own chat model on your own data and serve it.

This package holds what every part shares: the generated gRPC stubs
(``ownchat.<service>.v1``), the typed client, the CLI and the server runtime.
"""

__version__ = "0.1.0"
