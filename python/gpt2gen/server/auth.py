"""API keys: ``Authorization: Bearer KEY``, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from .errors import APIError


class APIKeys:
    def __init__(self, keys: Sequence[str]):
        # Comparing fixed-size digests hides the keys' lengths as well as their contents.
        self._digests = [hashlib.sha256(k.encode("utf-8")).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str) -> None:
        """Raises a 401 unless ``authorization`` (the header's value) carries a valid key."""
        if not self._digests:
            return
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "Missing API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        matches = [hmac.compare_digest(digest, known) for known in self._digests]  # no early exit
        if not any(matches):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
