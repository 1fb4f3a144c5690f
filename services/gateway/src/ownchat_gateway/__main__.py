"""Runs the gateway: ``python -m ownchat_gateway`` (http://127.0.0.1:3000 by default).

The process replaces itself (exec) with ``bentoml serve ownchat_gateway.service:Gateway``
on the configured host and port, so the pid that started is BentoML's supervisor:
SIGTERM or SIGINT to it drains and stops every worker it started. Ready when
``GET /readyz`` answers 200.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ownchat.server import exit_if_insecure
from ownchat_gateway.config import GatewaySettings

SERVICE_IMPORT = "ownchat_gateway.service:Gateway"


def serve_command(settings: GatewaySettings) -> list[str]:
    """The ``bentoml serve`` command line for these settings."""
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        SERVICE_IMPORT,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--working-dir",
        str(Path(__file__).resolve().parent.parent),
        "--timeout-graceful-shutdown",
        str(max(1, round(settings.grace_seconds))),
    ]


def serve_environment(settings: GatewaySettings) -> dict[str, str]:
    """The environment for BentoML: no usage reporting, its state under the home."""
    env = dict(os.environ)
    # BentoML would report usage to its makers; ownchat runs offline.
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    # Its home holds the Prometheus multiprocess directory, which BentoML empties
    # on start: one per ownchat home keeps two gateways from sharing it.
    env.setdefault("BENTOML_HOME", str(settings.home / "gateway" / "bentoml"))
    # The service reads its settings again in the workers; pin the home they resolve.
    env["OWNCHAT_HOME"] = str(settings.home)
    return env


def main() -> None:
    settings = GatewaySettings()  # fails here, before BentoML starts, on a bad setting
    # In the cluster profile its calls to the gRPC services need mutual TLS.
    exit_if_insecure(settings, serves_grpc=False)
    command = serve_command(settings)
    os.execve(command[0], command, serve_environment(settings))


if __name__ == "__main__":
    main()
