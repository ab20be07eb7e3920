"""Accounts: password hashing, validation, and the SQLite store on real files."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from ticketing.errors import ValidationError
from ticketing.ledger import open_ledger
from ticketing.ledger.driver import Driver
from ticketing.market import accounts
from ticketing.market.accounts import (
    Account,
    Accounts,
    hash_password,
    validate_email,
    validate_password,
    verify_password,
)

pytestmark = pytest.mark.timeout(30)

PASSWORD = "correct horse battery staple"


@asynccontextmanager
async def ledger_db(path: Path) -> AsyncIterator[Driver]:
    """The ledger's database (migrated: it has the accounts table), as Accounts uses it."""
    ledger = await open_ledger(path)
    try:
        yield ledger.driver
    finally:
        await ledger.close()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Driver]:
    async with ledger_db(tmp_path / "accounts.db") as driver:
        yield driver


@pytest.fixture
async def store(db: Driver) -> Accounts:
    store = Accounts(db, clock=lambda: 1234.5)
    await store.init_schema()
    return store


def read_database_files(path: Path) -> bytes:
    """The bytes of the database and any journal/WAL files beside it."""
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


# Hashing


def test_hash_format() -> None:
    encoded = hash_password(PASSWORD)
    scheme, n, r, p, salt, key = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt, validate=True)) == 16
    assert len(base64.b64decode(key, validate=True)) == 32
    assert PASSWORD not in encoded


def test_hash_is_salted() -> None:
    assert hash_password(PASSWORD) != hash_password(PASSWORD)


def test_verify_true_and_false() -> None:
    encoded = hash_password(PASSWORD)
    assert verify_password(PASSWORD, encoded) is True
    assert verify_password(PASSWORD + "!", encoded) is False
    assert verify_password("", encoded) is False


def test_verify_reads_parameters_from_encoding() -> None:
    # A hash made with other (cheaper) parameters must still verify.
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(PASSWORD.encode(), salt=salt, n=2**10, r=4, p=2, dklen=24)
    encoded = f"scrypt$1024$4$2${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    assert verify_password(PASSWORD, encoded) is True
    assert verify_password("wrong password", encoded) is False


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "bcrypt$16384$8$1$AAAA$AAAA",
        "scrypt$16384$8$1$not base64$AAAA",
        "scrypt$abc$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA",
        "scrypt$3$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA",  # n not a power of two
        "scrypt$1048576$64$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA",  # 8 GiB: over maxmem
        "scrypt$16384$8$1$AAAA",
    ],
)
def test_verify_malformed_is_false(encoded: str) -> None:
    assert verify_password(PASSWORD, encoded) is False


# Validation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice@example.com", "alice@example.com"),
        ("  Alice@Example.COM \n", "alice@example.com"),
        ("a.b+tag@sub.example.co.uk", "a.b+tag@sub.example.co.uk"),
    ],
)
def test_validate_email_normalises(raw: str, expected: str) -> None:
    assert validate_email(raw) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "alice",
        "alice@example",
        "alice@@example.com",
        "al@ice@example.com",
        "al ice@example.com",
        "alice@exa mple.com",
        "@example.com",
        "alice@.com",
        "alice@example.",
        "alice@example..com",
        "a" * 250 + "@example.com",
        None,
        42,
    ],
)
def test_validate_email_rejects(bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        validate_email(bad)
    assert info.value.field == "email"


def test_validate_email_length_limit_is_254() -> None:
    local = "a" * (254 - len("@example.com"))
    assert validate_email(local + "@example.com") == local + "@example.com"
    with pytest.raises(ValidationError):
        validate_email("a" + local + "@example.com")


@pytest.mark.parametrize("good", ["a" * 10, "x" * 1024, "pässwörd😀ok"])
def test_validate_password_accepts(good: str) -> None:
    validate_password(good)


@pytest.mark.parametrize("bad", ["", "a" * 9, "x" * 1025, "abcdefghij\ud800", None, 1234567890])
def test_validate_password_rejects(bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        validate_password(bad)
    assert info.value.field == "password"


# Store


async def test_signup_and_signin(store: Accounts) -> None:
    account = await store.signup(" Alice@Example.com ", PASSWORD)
    assert account == Account(account.id, "alice@example.com", 1234.5)
    assert await store.signin("alice@example.com", PASSWORD) == account
    assert await store.signin("ALICE@example.com", PASSWORD) == account
    assert await store.get(account.id) == account
    assert await store.get(account.id + 1) is None


async def test_signup_ids_are_distinct(store: Accounts) -> None:
    a = await store.signup("a@example.com", PASSWORD)
    b = await store.signup("b@example.com", PASSWORD)
    assert a.id != b.id
    assert (await store.get(b.id)) == b


async def test_signup_duplicate(store: Accounts) -> None:
    await store.signup("alice@example.com", PASSWORD)
    with pytest.raises(ValidationError) as info:
        await store.signup("ALICE@example.com", "another password")
    assert info.value.field == "email"
    assert info.value.message == "an account with this email already exists"
    # the first password still works, the second was not stored
    await store.signin("alice@example.com", PASSWORD)
    with pytest.raises(ValidationError):
        await store.signin("alice@example.com", "another password")


async def test_signup_bad_email(store: Accounts) -> None:
    with pytest.raises(ValidationError) as info:
        await store.signup("not-an-email", PASSWORD)
    assert info.value.field == "email"


async def test_signup_short_password(store: Accounts) -> None:
    with pytest.raises(ValidationError) as info:
        await store.signup("alice@example.com", "short")
    assert info.value.field == "password"
    assert await store.get(1) is None


async def test_unknown_email_and_wrong_password_look_the_same(
    store: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.signup("alice@example.com", PASSWORD)
    calls: list[str] = []
    real_verify = accounts.verify_password

    def counting_verify(password: str, encoded: str) -> bool:
        calls.append(encoded)
        return real_verify(password, encoded)

    monkeypatch.setattr(accounts, "verify_password", counting_verify)
    with pytest.raises(ValidationError) as wrong_password:
        await store.signin("alice@example.com", "wrong password!")
    with pytest.raises(ValidationError) as unknown_email:
        await store.signin("bob@example.com", PASSWORD)
    assert (str(wrong_password.value), wrong_password.value.field) == (
        "wrong email or password",
        None,
    )
    assert (str(unknown_email.value), unknown_email.value.field) == (
        str(wrong_password.value),
        wrong_password.value.field,
    )
    # Both paths ran exactly one scrypt verification (the unknown email against a dummy).
    assert len(calls) == 2
    assert calls[1].startswith("scrypt$16384$8$1$")


async def test_password_never_stored_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "clear.db"
    password = "Zebra-Quartz-7741-unique"
    async with ledger_db(path) as db:
        store = Accounts(db)
        await store.init_schema()
        await store.signup("carol@example.com", password)
        await store.signin("carol@example.com", password)
    data = await asyncio.to_thread(read_database_files, path)
    assert b"carol@example.com" in data  # we are reading the file that holds the account
    assert b"scrypt$16384$8$1$" in data
    assert password.encode() not in data
    assert password.encode("utf-16-le") not in data


async def test_schema_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "reopen.db"
    async with ledger_db(path) as db:
        store = Accounts(db)
        await store.init_schema()
        account = await store.signup("dave@example.com", PASSWORD)
    async with ledger_db(path) as db:
        store = Accounts(db)
        await store.init_schema()  # IF NOT EXISTS: keeps the data
        assert await store.signin("dave@example.com", PASSWORD) == account


async def test_concurrent_signups_one_email_one_connection(store: Accounts) -> None:
    results = await asyncio.gather(
        *(store.signup("race@example.com", f"password-{i:04d}") for i in range(8)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Account)]
    losers = [r for r in results if isinstance(r, ValidationError)]
    assert len(winners) == 1
    assert len(losers) == 7
    assert all(e.field == "email" for e in losers)
    winner_index = results.index(winners[0])
    assert await store.signin("race@example.com", f"password-{winner_index:04d}") == winners[0]


async def test_concurrent_signups_one_email_two_connections(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with ledger_db(path) as first, ledger_db(path) as second:
        stores = [Accounts(first), Accounts(second)]
        await stores[0].init_schema()
        results = await asyncio.gather(
            *(stores[i % 2].signup("race@example.com", PASSWORD) for i in range(6)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, Account) for r in results) == 1
        assert sum(isinstance(r, ValidationError) for r in results) == 5
        # the failed INSERTs did not leave a write lock behind: both connections can write
        await stores[0].signup("one@example.com", PASSWORD)
        await stores[1].signup("two@example.com", PASSWORD)


def test_signin_throttle_counts_failures_per_email_in_a_window() -> None:
    from ticketing.market.accounts import SigninThrottle

    now = [1000.0]
    throttle = SigninThrottle(limit=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("Ann@Example.com ") == 0
        throttle.failed("ann@example.com")
    assert throttle.retry_after("ANN@example.com") == pytest.approx(60)
    assert throttle.retry_after("bob@example.com") == 0  # other emails are not affected
    now[0] += 30
    assert throttle.retry_after("ann@example.com") == pytest.approx(30)
    now[0] += 31  # the window slid past the failures
    assert throttle.retry_after("ann@example.com") == 0
    throttle.failed("ann@example.com")
    throttle.succeeded("ann@example.com")  # a success forgives
    assert throttle._failures == {}
