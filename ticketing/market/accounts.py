"""User accounts: an email and an scrypt password hash, kept in SQLite.

Passwords are only ever held in memory long enough to hash them; the database stores
``scrypt$N$r$p$<salt>$<hash>``. The scrypt work runs in a small pool of worker
threads so one sign-in never stalls the event loop that also serves the ticket
queue, and that pool's queue is bounded: beyond ``max_hashing`` hashes running or
waiting, a sign-up or sign-in is refused at once (:class:`~ticketing.errors.Overloaded`,
a 429) instead of making every later one wait behind a flood.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from ..errors import Overloaded, ValidationError
from ..ledger.driver import Driver

T = TypeVar("T")

# scrypt parameters (memory-hard: 128 * r * n bytes = 16 MiB per hash)
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# Refuse stored parameters that would need more memory than this (a corrupt or
# hostile row must not make verify_password allocate gigabytes).
SCRYPT_MAXMEM = 64 * 1024 * 1024

# Hashing: one thread per core (scrypt is CPU-bound), a few waiting each
HASH_WORKERS = max(1, os.cpu_count() or 1)
MAX_HASHING = 4 * HASH_WORKERS  # ~0.3 s of queue at ~60 ms per hash on 2 cores

# Limits
MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024

# One "@", no whitespace, a domain of dot-separated non-empty labels (so at least one dot).
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")

DUPLICATE_EMAIL = "an account with this email already exists"
BAD_CREDENTIALS = "wrong email or password"


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=SCRYPT_MAXMEM
    )


def hash_password(password: str) -> str:
    """Hash ``password`` with scrypt and a fresh random salt; return the encoded form."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64e(salt)}${_b64e(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches ``encoded``; False for a mismatch or a bad encoding.

    The parameters come from ``encoded``, so hashes made with older settings keep working.
    """
    try:
        scheme, n, r, p, salt_text, key_text = encoded.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_text, validate=True)
        expected = base64.b64decode(key_text, validate=True)
        actual = _scrypt(password, salt, int(n), int(r), int(p), len(expected))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        # hashlib raises ValueError for impossible or too costly parameters
        return False
    return hmac.compare_digest(actual, expected)


@functools.cache
def _hash_pool() -> ThreadPoolExecutor:
    """The password-hashing threads, shared by every store of this process."""
    return ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="scrypt")


@functools.cache
def _dummy_hash() -> str:
    """A hash of a random password, made once, for sign-ins to unknown emails."""
    return hash_password(secrets.token_urlsafe(16))


def _check_password(password: str, encoded: str | None) -> bool:
    """verify_password against ``encoded``, or against the dummy hash when there is none."""
    return verify_password(password, encoded if encoded is not None else _dummy_hash())


def normalise_email(email: str) -> str:
    """Strip and lowercase, so lookups and the UNIQUE constraint agree."""
    return email.strip().lower()


def validate_email(email: object) -> str:
    """Return the normalised email, or raise :class:`ValidationError` (field ``email``)."""
    if not isinstance(email, str):
        raise ValidationError("email must be a string", "email")
    email = normalise_email(email)
    if len(email) > MAX_EMAIL_LENGTH:
        raise ValidationError(f"email must be at most {MAX_EMAIL_LENGTH} characters", "email")
    if not _EMAIL_RE.fullmatch(email):
        raise ValidationError("not a valid email address", "email")
    if not _utf8(email):  # lone surrogates, e.g. from JSON "\ud800"
        raise ValidationError("not a valid email address", "email")
    return email


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_password(password: object) -> None:
    """Raise :class:`ValidationError` (field ``password``) unless ``password`` is acceptable."""
    if not isinstance(password, str):
        raise ValidationError("password must be a string", "password")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(
            f"password must be at least {MIN_PASSWORD_LENGTH} characters", "password"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationError(
            f"password must be at most {MAX_PASSWORD_LENGTH} characters", "password"
        )
    if not _utf8(password):  # lone surrogates, e.g. from JSON "\ud800"
        raise ValidationError("password is not valid text", "password")


@dataclass(frozen=True)
class Account:
    """A signed-up user (never carries the password hash)."""

    id: int
    email: str
    created_at: float


class Accounts:
    """The ``accounts`` table (made by the ledger's migrations), on the ledger's database.

    Every write is one statement in its own transaction of the ledger's driver, so it
    never lands in the middle of a ledger transaction.
    """

    def __init__(
        self,
        db: Driver,
        *,
        clock: Callable[[], float] = time.time,
        # Limits
        max_hashing: int = MAX_HASHING,
    ):
        self.db = db
        self.clock = clock
        self.max_hashing = max_hashing
        self.hashing = 0  # running or waiting for a worker
        self.hashes = 0  # started since this store was made (for tests and status)

    async def _hash(self, fn: Callable[..., T], *args: str | None) -> T:
        """Run ``fn`` on the hashing pool, or refuse at once when its queue is full."""
        if self.hashing >= self.max_hashing:
            raise Overloaded("too many sign-ins at once, try again in a moment")
        self.hashing += 1
        self.hashes += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(_hash_pool(), fn, *args)
        finally:
            self.hashing -= 1

    async def init_schema(self) -> None:
        """Make the dummy hash now, so the first sign-in to an unknown email is not slower."""
        await asyncio.to_thread(_dummy_hash)

    async def signup(self, email: str, password: str) -> Account:
        """Create an account; :class:`ValidationError` for bad input or a taken email."""
        email = validate_email(email)
        validate_password(password)
        password_hash = await self._hash(hash_password, password)
        created_at = self.clock()
        # The UNIQUE constraint decides races between concurrent sign-ups.
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                "INSERT INTO accounts (email, password_hash, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (email) DO NOTHING RETURNING id",
                (email, password_hash, created_at),
            )
        if not rows:
            raise ValidationError(DUPLICATE_EMAIL, "email")
        return Account(int(rows[0]["id"]), email, created_at)

    async def signin(self, email: str, password: str) -> Account:
        """Return the account for these credentials.

        Unknown email and wrong password raise the same :class:`ValidationError`, and
        both cost one scrypt, so neither the answer nor its timing tells which it was.
        """
        if not isinstance(email, str) or not isinstance(password, str):
            raise ValidationError(BAD_CREDENTIALS, None)
        if len(password) > MAX_PASSWORD_LENGTH or len(email) > 4 * MAX_EMAIL_LENGTH:
            raise ValidationError(BAD_CREDENTIALS, None)
        if not _utf8(email) or not _utf8(password):
            raise ValidationError(BAD_CREDENTIALS, None)
        rows = await self.db.fetch(
            "SELECT id, email, created_at, password_hash FROM accounts WHERE email = ?",
            (normalise_email(email),),
        )
        row = rows[0] if rows else None
        ok = await self._hash(_check_password, password, row["password_hash"] if row else None)
        if row is None or not ok:
            raise ValidationError(BAD_CREDENTIALS, None)
        return Account(row["id"], row["email"], row["created_at"])

    async def get(self, account_id: int) -> Account | None:
        """The account with this id, or None."""
        rows = await self.db.fetch(
            "SELECT id, email, created_at FROM accounts WHERE id = ?", (account_id,)
        )
        return Account(**rows[0]) if rows else None


class SigninThrottle:
    """Failed sign-ins: slow password guessing, without letting strangers lock owners out.

    Failures count per (email, client address): ``limit`` of them within ``window``
    seconds make *that address* wait for that email; the owner signing in from
    elsewhere is not affected. All addresses together may fail ``email_limit``
    times per window before everyone waits (a guesser spread over many addresses);
    that wait ends as the window slides, so nobody is locked out for good. A success
    clears the email's failures. In memory, per main process: no database write per
    attempt. (Sign-in attempts per address, failed or not, are rate-limited in the API.)
    """

    # Limits
    MAX_TRACKED = 100_000  # emails remembered at once; the oldest are forgotten first
    MAX_ADDRESSES = 1_000  # addresses remembered per email

    def __init__(
        self,
        limit: int = 5,
        window: float = 900.0,
        *,
        email_limit: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window, self.email_limit, self.clock = limit, window, email_limit, clock
        # email -> address -> failure times ("" gathers every address of the email)
        self._failures: dict[str, dict[str, list[float]]] = {}

    def retry_after(self, email: str, address: str = "") -> float:
        """Seconds until ``email`` may try again from ``address``; 0 when it may now."""
        per = self._failures.get(normalise_email(email), {})
        wait = 0.0
        for times, limit in (
            (per.get(address, []), self.limit),
            (per.get("", []), self.email_limit),
        ):
            recent = self._recent(times)
            if len(recent) >= limit:
                wait = max(wait, recent[-limit] + self.window - self.clock())
        return wait

    def failed(self, email: str, address: str = "") -> None:
        key = normalise_email(email)
        per = self._failures.pop(key, {})  # re-inserted last: dict order is recency
        now = self.clock()
        for k in {address, ""}:
            per[k] = [*self._recent(per.pop(k, [])), now]
        while len(per) > self.MAX_ADDRESSES + 1:
            del per[next(k for k in per if k)]
        self._failures[key] = per
        while len(self._failures) > self.MAX_TRACKED:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, email: str, address: str = "") -> None:
        self._failures.pop(normalise_email(email), None)

    def _recent(self, times: list[float]) -> list[float]:
        cutoff = self.clock() - self.window
        return [t for t in times if t > cutoff]
