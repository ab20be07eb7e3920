"""Proof of work to enter a waiting room: a cost for bots, cheap to check.

The front hands out a signed challenge (``wire.PowChallenge``: visitor, event,
difficulty, nonce); the page's script looks for a suffix ``x`` such that
``SHA-256(challenge + ":" + x)`` starts with ``bits`` zero bits (2**bits hashes on
average: 2**16 takes a few hundred ms in a browser, ~40 ms in CPython) and sends
it back. Checking is one hash and one signature verification; a solution is
single-use (the challenge's nonce) and good only for the visitor it was issued to.
"""

from __future__ import annotations

import hashlib
import itertools

from ..errors import TokenError
from ..tokens import NonceCache, TokenSigner, TokenVerifier
from ..wire import PowChallenge

DEFAULT_POW_BITS = (
    16  # a few hundred ms in Chromium on these machines (tests/test_waitroom_browser.py)
)
CHALLENGE_TTL = 120.0
MAX_SOLUTION = 24  # characters


def leading_zero_bits(digest: bytes) -> int:
    bits = 0
    for byte in digest:
        if byte:
            return bits + 8 - byte.bit_length()
        bits += 8
    return bits


def solved(challenge: str, solution: str, bits: int) -> bool:
    """Whether ``solution`` meets ``bits`` for ``challenge`` (one hash)."""
    if not solution or len(solution) > MAX_SOLUTION or not solution.isascii():
        return False
    digest = hashlib.sha256(f"{challenge}:{solution}".encode()).digest()
    return leading_zero_bits(digest) >= bits


def solve(challenge: str, bits: int) -> str:
    """What the page's script does, in Python (the web client, the benchmark)."""
    for i in itertools.count():
        if solved(challenge, str(i), bits):
            return str(i)
    raise AssertionError("unreachable")


class PowGate:
    """Issues challenges and checks solutions, each usable once."""

    def __init__(self, signer: TokenSigner, verifier: TokenVerifier) -> None:
        self.signer, self.verifier = signer, verifier
        self.used = NonceCache(clock=verifier.clock)

    def challenge(self, visitor: str, event: int, bits: int) -> str:
        return PowChallenge.new(visitor, event, bits).sign(self.signer, CHALLENGE_TTL)

    def check(self, token: str, solution: str, visitor: str, event: int, bits: int) -> bool:
        """A valid, unused challenge of this visitor and event, solved at ``bits`` or more."""
        try:
            held, exp = PowChallenge.verify(self.verifier, token)
        except TokenError:
            return False
        if held.visitor != visitor or held.event != event or held.bits < bits:
            return False
        return solved(token, solution, held.bits) and self.used.use(held.nonce, exp)
