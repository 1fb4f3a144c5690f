"""Who is calling and what they may do.

A caller presents ``Authorization: Bearer <secret>``: either the ownchat token
(the operator, allowed everything) or an API key's secret (allowed its scopes;
the admin scope allows everything). Unknown and revoked keys authenticate as
nobody.
"""

from __future__ import annotations

from dataclasses import dataclass

from ownchat.auth import token_matches
from ownchat_gateway.keys import ApiKey, KeyLimits, KeyStore, Scope

# The reviewer identity and display name of the ownchat token's holder.
OPERATOR_ID = "operator"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    # The key's id (stable; reviews are attributed to it), or OPERATOR_ID.
    id: str
    # The key's name, for people.
    name: str
    scopes: frozenset[Scope]
    operator: bool = False
    # The key's own limits; the operator is never limited.
    limits: KeyLimits = KeyLimits()

    def allows(self, scope: Scope) -> bool:
        """Whether the caller may use endpoints that need ``scope``."""
        return self.operator or Scope.ADMIN in self.scopes or scope in self.scopes

    @classmethod
    def of_key(cls, key: ApiKey) -> Principal:
        """The caller holding a key."""
        return cls(id=key.id, name=key.name, scopes=key.scopes, limits=key.limits)


OPERATOR = Principal(id=OPERATOR_ID, name=OPERATOR_ID, scopes=frozenset(Scope), operator=True)


def bearer_secret(authorization: str | None) -> str | None:
    """The secret of an ``Authorization: Bearer`` header, or None."""
    if not authorization:
        return None
    scheme, _, secret = authorization.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        return None
    return secret


class Authenticator:
    """Turns an ``Authorization`` header into a caller, by the token or the key store."""

    def __init__(self, token: str, keys: KeyStore) -> None:
        self._token = token
        self._keys = keys

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The caller, or None for a missing, unknown or revoked credential."""
        if token_matches(authorization, self._token):
            return OPERATOR
        secret = bearer_secret(authorization)
        if secret is None:
            return None
        key = self._keys.verify(secret)
        return None if key is None else Principal.of_key(key)
