"""``ownchat certs``: certificates for mutual TLS between the services.

ownchat certs create deploy/secrets/tls     a new CA and the services' certificate
ownchat certs renew deploy/secrets/tls      a new service certificate from the same CA

The folder then holds ca.crt, ca.key, tls.crt and tls.key (see
``ownchat.certificates``); the output says how to hand them to Kubernetes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer

from ownchat.certificates import (
    CA_KEY,
    DEFAULT_NAMESPACE,
    DEFAULT_VALID_DAYS,
    CertificateError,
    Identity,
    create_service_certificates,
    renew_service_certificates,
)
from ownchat.cli.common import console, error_console

certs_app = typer.Typer(
    help="Certificates for mutual TLS between the services (the cluster profile).",
    no_args_is_help=True,
)

FolderArgument = Annotated[
    Path, typer.Argument(help="Folder of ca.crt, ca.key, tls.crt and tls.key.")
]
NamespaceOption = Annotated[
    str,
    typer.Option(help="Kubernetes namespace the services run in (their DNS names)."),
]
ExtraNameOption = Annotated[
    list[str] | None,
    typer.Option("--name", help="Another DNS name the services answer to (repeatable)."),
]
DaysOption = Annotated[
    int, typer.Option(min=1, max=3650, help="Days the service certificate stays valid.")
]


@certs_app.command("create")
def create(
    folder: FolderArgument,
    namespace: NamespaceOption = DEFAULT_NAMESPACE,
    name: ExtraNameOption = None,
    days: DaysOption = DEFAULT_VALID_DAYS,
) -> None:
    """A new CA and one certificate every service presents, as server and as client."""
    _write(create_service_certificates, "created", folder, namespace, name or [], days)


@certs_app.command("renew")
def renew(
    folder: FolderArgument,
    namespace: NamespaceOption = DEFAULT_NAMESPACE,
    name: ExtraNameOption = None,
    days: DaysOption = DEFAULT_VALID_DAYS,
) -> None:
    """A new key and certificate for the services, signed by the CA already in FOLDER."""
    _write(renew_service_certificates, "renewed", folder, namespace, name or [], days)


def _write(
    issue: Callable[[Path, str, Sequence[str], int], Identity],
    what: str,
    folder: Path,
    namespace: str,
    extra_names: list[str],
    days: int,
) -> None:
    try:
        identity = issue(folder, namespace, extra_names, days)
    except CertificateError as error:
        error_console.print(f"[red]error[/red] {error}")
        raise typer.Exit(1) from None
    console.print(f"{what}: {identity.ca}, {identity.cert}, {identity.key}")
    console.print(
        f"Keep {folder / CA_KEY} out of the cluster. For Kubernetes:\n"
        f"  kubectl -n {namespace} create secret generic ownchat-tls"
        f" --from-file={identity.ca} --from-file={identity.cert} --from-file={identity.key}"
        " --dry-run=client -o yaml | kubectl apply -f -"
    )
