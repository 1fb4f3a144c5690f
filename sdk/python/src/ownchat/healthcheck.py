"""Asks a gRPC server whether it is serving: ``python -m ownchat.healthcheck HOST:PORT``.

The container images' ``HEALTHCHECK``: one ``grpc.health.v1.Health/Check`` call
with a deadline. Plaintext, as Kubernetes' own ``grpc`` probe, unless the client
settings name a CA (``OWNCHAT_TLS_CA_FILE``, with ``OWNCHAT_TLS_CERT_FILE`` and
``OWNCHAT_TLS_KEY_FILE`` for mTLS): then over TLS, which is how a probe reaches
a server in the cluster profile (an exec probe; the kubelet's ``grpc`` probe
cannot present a client certificate). Health needs no token. Exit status 0
when the answer is SERVING, 1 for any other answer, an unknown service name,
an unreachable server or a missed
deadline; each failure prints one line on stderr. ``--service`` names the
service to ask about (``ownchat.data.v1.DataService``...); the default, the
empty name, is the whole server.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ownchat.client import channel_credentials
from ownchat.config import ClientSettings

DEFAULT_TIMEOUT_SECONDS = 5.0


def check(
    address: str,
    service: str = "",
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    credentials: grpc.ChannelCredentials | None = None,
) -> str | None:
    """None when ``address`` reports ``service`` SERVING, else why not, in words."""
    channel = (
        grpc.secure_channel(address, credentials)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=timeout,
                wait_for_ready=False,
            )
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            if code is grpc.StatusCode.NOT_FOUND:
                return f"{address} does not know the service {service!r}"
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            name = code.name if code is not None else "error"
            return f"{address}: {name}: {details}"
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return f"{address} is {status}"
    return None


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ownchat.healthcheck",
        description="Exit 0 when a gRPC server's health (grpc.health.v1) is SERVING, else 1.",
    )
    parser.add_argument("address", help="HOST:PORT of the server")
    parser.add_argument(
        "--service", default="", help="service name to ask about; the whole server when empty"
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT_SECONDS,
        help=f"deadline of the call in seconds (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    args = parser.parse_args(argv)
    credentials = channel_credentials(ClientSettings())
    problem = check(args.address, args.service, args.timeout, credentials)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
