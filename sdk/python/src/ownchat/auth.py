"""The bearer token every ownchat call carries.

There is no unauthenticated mode: when no token is configured, the first
process to start generates one into ``$OWNCHAT_HOME/token`` (mode 0600) and
every later process, the CLI included, reads it from there, as Jupyter does.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from pathlib import Path

from pydantic import SecretStr

TOKEN_FILE_NAME = "token"
AUTHORIZATION_KEY = "authorization"


def token_path(home: Path) -> Path:
    """Where the generated token lives."""
    return home / TOKEN_FILE_NAME


def load_or_create_secret(path: Path, configured: SecretStr | None = None) -> str:
    """Returns the configured secret, else the one in ``path``, creating it once (0600).

    Creation uses O_EXCL so that processes starting together agree on one value.
    """
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32))
        handle.flush()
        os.fsync(handle.fileno())
    return _read_secret(path)


def load_or_create_token(home: Path, configured: SecretStr | None = None) -> str:
    """The bearer token: configured, or generated once into ``$OWNCHAT_HOME/token``."""
    return load_or_create_secret(token_path(home), configured)


def _read_secret(path: Path) -> str:
    # Another process may have created the file and not yet written it.
    for _ in range(50):
        value = path.read_text().strip()
        if value:
            return value
        time.sleep(0.02)
    raise RuntimeError(f"secret file {path} is empty")


def bearer(token: str) -> str:
    """The metadata value for a token."""
    return f"Bearer {token}"


def token_matches(metadata_value: str | None, token: str) -> bool:
    """Whether an ``authorization`` header carries the token (constant time)."""
    if not metadata_value:
        return False
    scheme, _, presented = metadata_value.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())
