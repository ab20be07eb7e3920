"""Signed, expiring tokens (Ed25519): admission tokens and session tokens.

Main holds the private key and signs; shards get only the public key (sent in the
hello of the mutual-TLS link), so they verify a token without a round trip and
cannot mint one themselves. Fronts sign admission tokens with their own keys, named
by a key id (``kid`` in the payload); main certifies which front keys are valid and
tells the shards, which verify against a :class:`KeyRing` of certified keys.

Wire form: ``base64url(json payload) "." base64url(signature)``; the payload always
carries ``exp`` (unix seconds) and ``typ`` so an admission token is never accepted
as a session token or the reverse.
"""

from __future__ import annotations

import base64
import heapq
import json
import time
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import TokenError

MAX_TOKEN_LENGTH = 2048
Clock = Callable[[], float]


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Signs payloads with an Ed25519 private key.

    ``kid``: the key's name, put in every payload so a :class:`KeyRing` knows which
    key to check it with (None: main's own key, the ring's default).
    """

    def __init__(
        self,
        private_key: Ed25519PrivateKey | None = None,
        *,
        clock: Clock = time.time,
        kid: str | None = None,
    ):
        self.private_key = private_key or Ed25519PrivateKey.generate()
        self.clock = clock
        self.kid = kid

    @property
    def public_key_bytes(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def verifier(self) -> TokenVerifier:
        return TokenVerifier(self.public_key_bytes, clock=self.clock)

    def sign(self, typ: str, claims: dict[str, Any], ttl: float) -> str:
        payload = dict(claims, typ=typ, exp=round(self.clock() + ttl, 3))
        if self.kid is not None:
            payload["kid"] = self.kid
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        return _b64e(body) + "." + _b64e(self.private_key.sign(body))


def peek_claims(token: str) -> dict[str, Any] | None:
    """A token's claims *without* checking its signature: for measurements only
    (the benchmark reading its own queue position), never for a decision."""
    try:
        claims = json.loads(_b64d(token.split(".")[0]))
    except (ValueError, IndexError):
        return None
    return claims if isinstance(claims, dict) else None


class TokenVerifier:
    """Verifies tokens made by the matching :class:`TokenSigner`."""

    def __init__(self, public_key: bytes, *, clock: Clock = time.time) -> None:
        try:
            self.public_key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError as exc:
            raise TokenError("bad public key") from exc
        self.public_bytes = public_key
        self.clock = clock

    def verify(self, token: str, typ: str) -> dict[str, Any]:
        """Return the claims, or raise :class:`TokenError` saying why not."""
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
            raise TokenError("malformed")
        body_text, sig_text = token.split(".")
        try:
            body, sig = _b64d(body_text), _b64d(sig_text)
        except ValueError as exc:
            raise TokenError("malformed") from exc
        try:
            self.public_key.verify(sig, body)
        except InvalidSignature as exc:
            raise TokenError("bad signature") from exc
        try:
            claims = json.loads(body)
        except ValueError as exc:  # signed garbage: only possible with our own key
            raise TokenError("malformed") from exc
        if not isinstance(claims, dict) or claims.get("typ") != typ:
            raise TokenError("wrong token type")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= self.clock():
            raise TokenError("expired")
        return claims


class KeyRing:
    """The certified signing keys: a token is checked with the key its ``kid`` names.

    A token without ``kid`` is checked with the ``default`` key (main's own). An
    unknown ``kid`` (an uncertified or revoked front) is refused without trying any
    other key, so a forged token costs one JSON parse and no signature check.
    """

    def __init__(self, default: TokenVerifier | None = None, *, clock: Clock = time.time):
        self.default = default
        self.clock = clock
        self._keys: dict[str, TokenVerifier] = {}

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def kids(self) -> list[str]:
        return sorted(self._keys)

    def replace(self, keys: dict[str, str]) -> None:
        """Certify exactly ``keys`` (kid -> public key hex); every other kid is revoked."""
        fresh: dict[str, TokenVerifier] = {}
        for kid, hexkey in keys.items():
            old = self._keys.get(kid)
            raw = bytes.fromhex(hexkey)
            fresh[kid] = (
                old if old and old.public_bytes == raw else TokenVerifier(raw, clock=self.clock)
            )
        self._keys = fresh

    def verify(self, token: str, typ: str) -> dict[str, Any]:
        """The claims, or :class:`TokenError` (``uncertified key`` for an unknown kid)."""
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
            raise TokenError("malformed")
        try:  # peek at the (unverified) kid only to pick the key
            kid = json.loads(_b64d(token.split(".")[0])).get("kid")
        except (ValueError, AttributeError) as exc:
            raise TokenError("malformed") from exc
        verifier = self.default if kid is None else self._keys.get(kid)
        if verifier is None:
            raise TokenError("uncertified key")
        claims = verifier.verify(token, typ)
        if claims.get("kid") != kid:
            raise TokenError("malformed")
        return claims


class NonceCache:
    """Remembers single-use nonces until their token expires (replay guard)."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self.clock = clock
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def use(self, nonce: str, exp: float) -> bool:
        """Mark ``nonce`` used; False when it was already used (a replay)."""
        self._evict()
        if nonce in self._seen:
            return False
        self._seen.add(nonce)
        heapq.heappush(self._expiry, (exp, nonce))
        return True

    def _evict(self) -> None:
        now = self.clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, nonce = heapq.heappop(self._expiry)
            self._seen.discard(nonce)
