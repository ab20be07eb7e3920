"""User accounts: an email and an scrypt password hash, kept in SQLite.

Passwords are only ever held in memory long enough to hash them; the database stores
``scrypt$N$r$p$<salt>$<hash>``. The scrypt work runs in a worker thread so one
sign-in never stalls the event loop that also serves the ticket queue.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ValidationError
from ..ledger.driver import Driver

# scrypt parameters (memory-hard: 128 * r * n bytes = 16 MiB per hash)
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# Refuse stored parameters that would need more memory than this (a corrupt or
# hostile row must not make verify_password allocate gigabytes).
SCRYPT_MAXMEM = 64 * 1024 * 1024

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
    return email


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
    try:
        password.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. from JSON "\ud800"
        raise ValidationError("password is not valid text", "password") from exc


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

    def __init__(self, db: Driver, *, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    async def init_schema(self) -> None:
        """Make the dummy hash now, so the first sign-in to an unknown email is not slower."""
        await asyncio.to_thread(_dummy_hash)

    async def signup(self, email: str, password: str) -> Account:
        """Create an account; :class:`ValidationError` for bad input or a taken email."""
        email = validate_email(email)
        validate_password(password)
        password_hash = await asyncio.to_thread(hash_password, password)
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
        if len(password) > MAX_PASSWORD_LENGTH:
            raise ValidationError(BAD_CREDENTIALS, None)
        rows = await self.db.fetch(
            "SELECT id, email, created_at, password_hash FROM accounts WHERE email = ?",
            (normalise_email(email),),
        )
        row = rows[0] if rows else None
        ok = await asyncio.to_thread(
            _check_password, password, row["password_hash"] if row else None
        )
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
    """At most ``limit`` failed sign-ins per email within ``window`` seconds.

    In memory, per main process: it slows password guessing against one account
    without a database write per attempt. A success clears the email's failures.
    """

    # Limits
    MAX_TRACKED = 100_000  # emails remembered at once; the oldest are forgotten first

    def __init__(
        self, limit: int = 5, window: float = 900.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._failures: dict[str, list[float]] = {}

    def retry_after(self, email: str) -> float:
        """Seconds until ``email`` may try again; 0 when it may now."""
        recent = self._recent(normalise_email(email))
        return 0.0 if len(recent) < self.limit else recent[0] + self.window - self.clock()

    def failed(self, email: str) -> None:
        key = normalise_email(email)
        self._failures[key] = [*self._recent(key), self.clock()]
        while len(self._failures) > self.MAX_TRACKED:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, email: str) -> None:
        self._failures.pop(normalise_email(email), None)

    def _recent(self, key: str) -> list[float]:
        cutoff = self.clock() - self.window
        recent = [t for t in self._failures.get(key, ()) if t > cutoff]
        if not recent:
            self._failures.pop(key, None)
        return recent
