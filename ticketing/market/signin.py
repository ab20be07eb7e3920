"""Accounts and sessions: sign up, in and out; claiming a visitor's rows."""

from __future__ import annotations

import math

from ..errors import TicketingError, TokenError, ValidationError
from .accounts import BAD_CREDENTIALS, DUPLICATE_EMAIL, Account, Accounts
from .base import MarketBase
from .errors import Conflict, TooManyAttempts, Unauthorized
from .ownership import Principal
from .schema import CLAIMABLE
from .sessions import SessionClaims


class SigninMixin(MarketBase):
    """The accounts wiring: who is signed in, and what their visitor id brings along."""

    def _accounts(self) -> Accounts:
        if self.accounts is None:
            raise TicketingError("market not started")
        return self.accounts

    def session(self, token: str | None) -> SessionClaims | None:
        """The valid session of a cookie value, or None (no DB lookup: a signature check)."""
        if not token or self.sessions is None:
            return None
        try:
            return self.sessions.verify(token)
        except TokenError:
            return None

    async def signup(self, email: object, password: object, p: Principal) -> tuple[Account, str]:
        """Create an account, sign it in and claim the visitor's orders and tickets."""
        try:
            account = await self._accounts().signup(email, password)  # type: ignore[arg-type]
        except ValidationError as exc:
            if exc.message == DUPLICATE_EMAIL:
                raise Conflict(exc.message, "email") from exc
            raise
        return account, await self._sign_in(account, p)

    async def signin(
        self, email: object, password: object, p: Principal, address: str = ""
    ) -> tuple[Account, str]:
        """Sign in; failures are throttled per (email, client ``address``), see SigninThrottle."""
        key = email if isinstance(email, str) else ""
        wait = self.signin_throttle.retry_after(key, address)
        if wait > 0:
            raise TooManyAttempts(
                f"too many failed sign-ins; try again in {math.ceil(wait)} s", "email", wait
            )
        try:
            account = await self._accounts().signin(email, password)  # type: ignore[arg-type]
        except ValidationError as exc:
            self.signin_throttle.failed(key, address)
            raise Unauthorized(BAD_CREDENTIALS) from exc
        self.signin_throttle.succeeded(key, address)
        return account, await self._sign_in(account, p)

    async def _sign_in(self, account: Account, p: Principal) -> str:
        await self.claim(Principal(p.visitor, account.id))
        assert self.sessions is not None
        return self.sessions.issue(account)

    async def signout(self, claims: SessionClaims | None) -> bool:
        """Revoke the session (persisted, so a restart keeps it signed out)."""
        if claims is None or self.sessions is None:
            return False
        revoked = self.sessions.revoke(claims)
        async with self.ledger.transaction() as db:
            await db.execute(
                "INSERT OR IGNORE INTO revoked_sessions(sid, exp) VALUES (?, ?)",
                (claims.sid, claims.exp),
            )
            await db.execute("DELETE FROM revoked_sessions WHERE exp <= ?", (self.clock(),))
        return revoked

    async def account(self, account_id: int) -> Account | None:
        return await self._accounts().get(account_id)

    async def claim(self, p: Principal) -> int:
        """Give the visitor's account-less rows to ``p.account_id``; returns how many."""
        if p.account_id is None:
            return 0
        n = 0
        async with self.ledger.transaction() as db:
            for table in CLAIMABLE:
                # OR IGNORE: an account already waiting for that event keeps its place.
                cur = await db.execute(
                    f"UPDATE OR IGNORE {table} SET account_id = ?"
                    " WHERE visitor = ? AND account_id IS NULL",
                    (p.account_id, p.visitor),
                )
                n += cur.rowcount
        return n
