"""Asks a gRPC server whether it is serving: ``python -m ownchat.healthcheck HOST:PORT``.

The container images' ``HEALTHCHECK``: one ``grpc.health.v1.Health/Check`` call
with a deadline. Plaintext, as Kubernetes' own ``grpc`` probe, unless the client
settings name a CA (``OWNCHAT_TLS_CA_FILE``, with ``OWNCHAT_TLS_CERT_FILE`` and
``OWNCHAT_TLS_KEY_FILE`` for mTLS): then over TLS, which is how a probe reaches
a server in the cluster profile (an exec probe; the kubelet's ``grpc`` probe
cannot present a client certificate). ``--server-name`` is the name the
server's certificate must carry when that is not the address's host: a probe
dials 127.0.0.1 inside the pod, the certificate names the Service (``data``).
Health needs no token. Exit status 0
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
    server_name: str | None = None,
) -> str | None:
    """None when ``address`` reports ``service`` SERVING, else why not, in words.

    ``server_name``: over TLS, the name checked against the server's certificate
    instead of the address's host; ignored in plaintext.
    """
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.secure_channel(address, credentials, options=options)
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


def argument_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m ownchat.healthcheck``."""
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
    parser.add_argument(
        "--server-name",
        default=None,
        help="over TLS, the name the server's certificate must carry (default: the host)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    credentials = channel_credentials(ClientSettings())
    problem = check(args.address, args.service, args.timeout, credentials, args.server_name)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
