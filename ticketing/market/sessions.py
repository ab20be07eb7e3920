"""Browser sessions as signed, expiring tokens (:class:`~ticketing.wire.SessionClaims`).

A session token carries the account id, a random session id (``sid``) and the
email, so anyone holding only the public key can check it without a database.
Signing out puts the ``sid`` on a revocation list until the token would have
expired anyway; the list is kept in the ledger so a restart keeps it.

``SessionVerifier`` needs only the public key (verify, revocations: what a process
other than main would run); ``SessionManager`` adds issuing, where the private key is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import TokenError
from ..tokens import NonceCache, TokenSigner, TokenVerifier
from ..wire import SessionClaims

if TYPE_CHECKING:
    from .accounts import Account

DEFAULT_TTL = 12 * 3600.0

# Cookie
COOKIE_NAME = "ticketing_session"


def cookie_kwargs(max_age: float) -> dict[str, Any]:
    """Keyword arguments for aiohttp ``StreamResponse.set_cookie`` for the session cookie."""
    # httponly: page scripts cannot read it; secure: only sent over TLS;
    # Lax: not sent on cross-site POSTs, which blunts CSRF.
    return {
        "max_age": int(max_age),
        "httponly": True,
        "secure": True,
        "samesite": "Lax",
        "path": "/",
    }


class _RevocationSet(NonceCache):
    """Signed-out sids, each kept until its token's expiry (then it is harmless)."""

    def __contains__(self, sid: object) -> bool:
        self._evict()
        return sid in self._seen

    def entries(self) -> list[tuple[str, float]]:
        self._evict()
        return [(sid, exp) for exp, sid in sorted(self._expiry)]


class SessionVerifier:
    """Checks session tokens and remembers sign-outs; needs only the public key."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier
        # Same clock as the expiry check, so a revocation lasts exactly as long as the token.
        self._revoked = _RevocationSet(clock=verifier.clock)

    def verify(self, token: str) -> SessionClaims:
        """Return the claims, or raise :class:`TokenError` (forged, expired, signed out...)."""
        claims = SessionClaims.verify(self.verifier, token)
        if claims.sid in self._revoked:
            raise TokenError("signed out")
        return claims

    def revoke(self, token_or_claims: str | SessionClaims) -> bool:
        """Sign a session out; True if it was valid until now.

        A token that is already refused (expired, forged, signed out) needs nothing
        more, so that is not an error: sign-out is idempotent.
        """
        if isinstance(token_or_claims, str):
            try:
                claims = self.verify(token_or_claims)
            except TokenError:
                return False
        else:
            claims = token_or_claims
        return self._revoked.use(claims.sid, claims.exp)

    def revoked_sids(self) -> list[tuple[str, float]]:
        """Unexpired revocations as ``(sid, exp)``, earliest expiry first."""
        return self._revoked.entries()

    def add_revocations(self, revocations: Iterable[tuple[str, float]]) -> None:
        """Merge revocations received from main (already-known sids are ignored)."""
        for sid, exp in revocations:
            self._revoked.use(sid, exp)


class SessionManager(SessionVerifier):
    """Issues session tokens (main only: it needs the private key) and verifies them."""

    def __init__(self, signer: TokenSigner, *, ttl: float = DEFAULT_TTL) -> None:
        super().__init__(signer.verifier())
        self.signer = signer
        self.ttl = ttl

    def issue(self, account: Account) -> str:
        """A new session token for ``account`` with a fresh ``sid``."""
        return SessionClaims.new(account.id, account.email).sign(self.signer, self.ttl)
