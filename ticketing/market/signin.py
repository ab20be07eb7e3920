"""Accounts and sessions: sign up, in and out; claiming a visitor's rows."""

from __future__ import annotations

import math

from ..errors import TokenError, ValidationError
from ..ledger import OrderKind, OrderStatus, Principal
from ..wire import SessionClaims
from .accounts import BAD_CREDENTIALS, DUPLICATE_EMAIL, Account, Accounts, SigninThrottle
from .context import Effects, MarketContext
from .errors import Conflict, TooManyAttempts, Unauthorized
from .holds import Holds
from .sessions import SessionManager


class Signin:
    """Who is signed in, and what their visitor id brings along."""

    def __init__(
        self,
        ctx: MarketContext,
        accounts: Accounts,
        sessions: SessionManager,
        holds: Holds,
        throttle: SigninThrottle | None = None,
    ) -> None:
        self.ctx = ctx
        self.holds = holds
        self.accounts = accounts
        self.sessions = sessions
        self.throttle = throttle or SigninThrottle()

    async def load_revocations(self) -> None:
        """Sign-outs survive a restart: they are in the ledger."""
        revoked = await self.ctx.ledger.reader().revoked_sessions(self.ctx.clock())
        self.sessions.add_revocations(revoked)

    def session(self, token: str | None) -> SessionClaims | None:
        """The valid session of a cookie value, or None (no DB lookup: a signature check)."""
        if not token:
            return None
        try:
            return self.sessions.verify(token)
        except TokenError:
            return None

    async def signup(self, email: object, password: object, p: Principal) -> tuple[Account, str]:
        """Create an account, sign it in and claim the visitor's orders and tickets."""
        try:
            account = await self.accounts.signup(email, password)  # type: ignore[arg-type]
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
        wait = self.throttle.retry_after(key, address)
        if wait > 0:
            raise TooManyAttempts(
                f"too many failed sign-ins; try again in {math.ceil(wait)} s", "email", wait
            )
        try:
            account = await self.accounts.signin(email, password)  # type: ignore[arg-type]
        except ValidationError as exc:
            self.throttle.failed(key, address)
            raise Unauthorized(BAD_CREDENTIALS) from exc
        self.throttle.succeeded(key, address)
        return account, await self._sign_in(account, p)

    async def _sign_in(self, account: Account, p: Principal) -> str:
        await self.claim(Principal(p.visitor, account.id))
        return self.sessions.issue(account)

    async def signout(self, claims: SessionClaims | None) -> bool:
        """Revoke the session (persisted, so a restart keeps it signed out)."""
        if claims is None:
            return False
        revoked = self.sessions.revoke(claims)
        async with self.ctx.ledger.transaction() as tx:
            await tx.revoke_session(claims.sid, claims.exp, self.ctx.clock())
        return revoked

    async def claim(self, p: Principal) -> int:
        """Give the visitor's account-less rows to ``p.account_id``; returns how many.

        One ticket per event per account holds for tickets owned too: a held order of
        the visitor's for an event the account already has a ticket for is cancelled
        (the ticket goes back on sale), and a paid one stays the visitor's.
        """
        if p.account_id is None:
            return 0
        now, fx = self.ctx.clock(), Effects()
        async with self.ctx.ledger.transaction() as tx:
            for order in await tx.claim_conflicts(p):
                await self.holds.close(tx, OrderKind.PRIMARY, order, OrderStatus.CANCELLED, now, fx)
            n = await tx.claim(p)
        await self.ctx.finish(fx)
        return n
