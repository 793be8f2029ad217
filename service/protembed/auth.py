"""The API key check, one behaviour for every transport.

A client sends the key as ``Authorization: Bearer <key>`` or as ``x-api-key: <key>`` (HTTP headers or
gRPC metadata alike). A Bearer header wins when both are present; surrounding whitespace is ignored in
either; the comparison takes constant time, so response timing says nothing about how much of a wrong
key matched.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from protembed.errors import UnauthenticatedError

HINT = "send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"


class ApiKey:
    """The configured key (or none: every call is allowed)."""

    def __init__(self, key: SecretStr | str | None) -> None:
        secret = key.get_secret_value() if isinstance(key, SecretStr) else key
        self._key: bytes | None = secret.encode() if secret else None

    @property
    def required(self) -> bool:
        return self._key is not None

    def check(self, authorization: str | None, x_api_key: str | None) -> None:
        """Raise :class:`UnauthenticatedError` unless the headers carry the key."""
        if self._key is None:
            return
        given = presented_key(authorization, x_api_key)
        if given is None:
            raise UnauthenticatedError(f"missing API key: {HINT}")
        if not hmac.compare_digest(given.encode(), self._key):
            raise UnauthenticatedError(f"wrong API key: {HINT}")


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a client presented: the Bearer token if there is one, else x-api-key."""
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if x_api_key is not None and x_api_key.strip():
        return x_api_key.strip()
    return None
