"""The :class:`Market` assembled from its parts, and its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib

from ..db import open_db
from .accounts import Accounts
from .base import fetch, log
from .checkout import CheckoutMixin
from .overview import OverviewMixin
from .resale import ResaleMixin
from .schema import SCHEMA
from .sessions import SessionManager
from .signin import SigninMixin


class Market(SigninMixin, CheckoutMixin, ResaleMixin, OverviewMixin):
    """The marketplace of one main server. Started and closed by the front (``api.py``)."""

    async def start(self) -> None:
        """Create the tables, expire overdue holds now, then sweep on every deadline."""
        if self._started:
            return
        self._started = True
        await self.main.start()
        async with self.ledger.transaction() as db:
            await db.executescript(SCHEMA)
        # Accounts get their own connection: their commits must never land in the
        # middle of a ledger transaction on the shared one.
        self._accounts_db = await open_db(
            self.main.ledger_path, "", synchronous=self.main.synchronous
        )
        self.accounts = Accounts(self._accounts_db, clock=self.clock)
        await self.accounts.init_schema()
        assert self.main.signer is not None
        self.sessions = SessionManager(self.main.signer, ttl=self.session_ttl)
        rows = await fetch(
            self.ledger.db, "SELECT sid, exp FROM revoked_sessions WHERE exp > ?", (self.clock(),)
        )
        self.sessions.add_revocations((r[0], r[1]) for r in rows)
        self.main.sale_listeners.append(self._on_sales)
        await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="market-sweeper")
        log.info("market started (hold %.0fs)", self.main.hold_seconds)

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(ValueError):
            self.main.sale_listeners.remove(self._on_sales)
        for task in [self._sweeper, *self._tasks]:
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._accounts_db is not None:
            await self._accounts_db.close()
            self._accounts_db = None
        log.info("market closed")

    async def __aenter__(self) -> Market:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
