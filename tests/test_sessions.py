"""Session tokens: issue, verify, expiry, forgery, sign-out and its propagation."""

from __future__ import annotations

import base64
import json

import pytest
from aiohttp import web

from ticketing.errors import TokenError
from ticketing.market.accounts import Account
from ticketing.market.sessions import (
    COOKIE_NAME,
    SessionClaims,
    SessionManager,
    SessionVerifier,
    cookie_kwargs,
)
from ticketing.tokens import TokenSigner

pytestmark = pytest.mark.timeout(30)

ALICE = Account(id=7, email="alice@example.com", created_at=0.0)
BOB = Account(id=8, email="bob@example.com", created_at=0.0)
TTL = 3600.0


class Clock:
    """A settable clock shared by signer, verifier and revocation list."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(clock: Clock) -> SessionManager:
    return SessionManager(TokenSigner(clock=clock), ttl=TTL)


def payload_of(token: str) -> dict[str, object]:
    body = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def test_issue_and_verify(manager: SessionManager, clock: Clock) -> None:
    token = manager.issue(ALICE)
    claims = manager.verify(token)
    assert claims == SessionClaims(
        account_id=7, email="alice@example.com", sid=claims.sid, exp=clock.now + TTL
    )
    assert payload_of(token)["typ"] == "session"
    assert payload_of(token)["sub"] == 7
    # 16 random bytes, url-safe base64 without padding
    assert len(base64.urlsafe_b64decode(claims.sid + "==")) == 16


def test_each_session_gets_a_fresh_sid(manager: SessionManager) -> None:
    sids = {manager.verify(manager.issue(ALICE)).sid for _ in range(20)}
    assert len(sids) == 20


def test_default_ttl_is_twelve_hours(clock: Clock) -> None:
    manager = SessionManager(TokenSigner(clock=clock))
    assert manager.verify(manager.issue(ALICE)).exp == clock.now + 12 * 3600


def test_expired(manager: SessionManager, clock: Clock) -> None:
    token = manager.issue(ALICE)
    clock.now += TTL - 1
    assert manager.verify(token).account_id == 7
    clock.now += 1
    with pytest.raises(TokenError) as info:
        manager.verify(token)
    assert info.value.reason == "expired"


def test_forged_by_other_signer(manager: SessionManager, clock: Clock) -> None:
    forger = SessionManager(TokenSigner(clock=clock), ttl=TTL)
    token = forger.issue(ALICE)
    assert forger.verify(token).account_id == 7  # valid for its own key...
    with pytest.raises(TokenError) as info:
        manager.verify(token)  # ...but not for ours
    assert info.value.reason == "bad signature"


def test_tampered_payload(manager: SessionManager) -> None:
    token = manager.issue(ALICE)
    payload = payload_of(token)
    payload["sub"] = BOB.id
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenError) as info:
        manager.verify(body + "." + token.split(".")[1])
    assert info.value.reason == "bad signature"


def test_other_token_type_refused(manager: SessionManager) -> None:
    admission = manager.signer.sign("admission", {"sub": 7, "sid": "x", "email": "a@b.c"}, TTL)
    with pytest.raises(TokenError) as info:
        manager.verify(admission)
    assert info.value.reason == "wrong token type"


@pytest.mark.parametrize(
    "claims",
    [
        {"sid": "s", "email": "a@b.c"},
        {"sub": "7", "sid": "s", "email": "a@b.c"},
        {"sub": True, "sid": "s", "email": "a@b.c"},
        {"sub": 7, "email": "a@b.c"},
        {"sub": 7, "sid": 5, "email": "a@b.c"},
        {"sub": 7, "sid": "s"},
    ],
)
def test_malformed_claims_refused(manager: SessionManager, claims: dict[str, object]) -> None:
    token = manager.signer.sign("session", claims, TTL)
    with pytest.raises(TokenError) as info:
        manager.verify(token)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "!!!.???"])
def test_garbage_refused(manager: SessionManager, garbage: str) -> None:
    with pytest.raises(TokenError):
        manager.verify(garbage)


def test_revoke_token(manager: SessionManager) -> None:
    token = manager.issue(ALICE)
    other = manager.issue(ALICE)
    assert manager.revoke(token) is True
    with pytest.raises(TokenError) as info:
        manager.verify(token)
    assert info.value.reason == "signed out"
    assert str(info.value) == "token refused: signed out"
    # only that session is signed out, not the account's other sessions
    assert manager.verify(other).account_id == 7
    # signing out twice is harmless
    assert manager.revoke(token) is False


def test_revoke_claims(manager: SessionManager) -> None:
    token = manager.issue(BOB)
    claims = manager.verify(token)
    assert manager.revoke(claims) is True
    with pytest.raises(TokenError):
        manager.verify(token)


def test_revoke_refused_token_is_a_no_op(manager: SessionManager, clock: Clock) -> None:
    forged = SessionManager(TokenSigner(clock=clock)).issue(ALICE)
    assert manager.revoke(forged) is False
    assert manager.revoke("garbage") is False
    assert manager.revoked_sids() == []


def test_revocations_expire_with_their_token(manager: SessionManager, clock: Clock) -> None:
    early = manager.issue(ALICE)
    clock.now += 100
    late = manager.issue(BOB)
    manager.revoke(late)
    manager.revoke(early)
    early_claims = manager.verifier.verify(early, "session")
    late_claims = manager.verifier.verify(late, "session")
    assert manager.revoked_sids() == [
        (early_claims["sid"], early_claims["exp"]),
        (late_claims["sid"], late_claims["exp"]),
    ]
    clock.now = early_claims["exp"]
    assert manager.revoked_sids() == [(late_claims["sid"], late_claims["exp"])]
    clock.now = late_claims["exp"]
    assert manager.revoked_sids() == []
    with pytest.raises(TokenError) as info:
        manager.verify(late)
    assert info.value.reason == "expired"  # refused anyway once the entry is gone


def test_verifier_only_checks_and_receives_revocations(
    manager: SessionManager, clock: Clock
) -> None:
    shard = SessionVerifier(manager.signer.verifier())
    assert not hasattr(shard, "issue")
    token = manager.issue(ALICE)
    kept = manager.issue(BOB)
    assert shard.verify(token) == manager.verify(token)
    manager.revoke(token)
    assert shard.verify(token).account_id == 7  # not told yet
    shard.add_revocations(manager.revoked_sids())
    with pytest.raises(TokenError) as info:
        shard.verify(token)
    assert info.value.reason == "signed out"
    assert shard.verify(kept).account_id == 8
    # pushing the same list again changes nothing
    shard.add_revocations(manager.revoked_sids())
    assert shard.revoked_sids() == manager.revoked_sids()


def test_verifier_only_refuses_forgeries(manager: SessionManager, clock: Clock) -> None:
    shard = SessionVerifier(manager.signer.verifier())
    forged = SessionManager(TokenSigner(clock=clock)).issue(ALICE)
    with pytest.raises(TokenError) as info:
        shard.verify(forged)
    assert info.value.reason == "bad signature"


def test_cookie_kwargs_work_with_aiohttp() -> None:
    response = web.Response()
    response.set_cookie(COOKIE_NAME, "tok", **cookie_kwargs(TTL))
    # aiohttp writes this morsel as the Set-Cookie header when the response is sent
    header = response.cookies[COOKIE_NAME].OutputString()
    assert header.startswith("ticketing_session=tok;")
    for part in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=3600"):
        assert part in header
