"""The marketplace's refusals: one exception tree, each with its HTTP status."""

from __future__ import annotations

from ..errors import TicketingError


class MarketError(TicketingError):
    """A refused marketplace request; ``status`` is the HTTP status the API answers with.

    ::

        MarketError (400)
         ├── Unauthorized  401  not signed in / wrong credentials
         ├── PaymentFailed 402  the card was declined or the provider failed
         ├── Forbidden     403  someone else's order, your own listing, ...
         ├── NotFound      404
         ├── Conflict      409  wrong state, locked, version mismatch, duplicate
         └── TooManyAttempts 429  too many failed sign-ins (``retry_after`` seconds)
    """

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.status} {self.message}" + (f" ({self.field})" if self.field else "")


class Unauthorized(MarketError):
    status = 401


class PaymentFailed(MarketError):
    status = 402


class Forbidden(MarketError):
    status = 403


class NotFound(MarketError):
    status = 404


class Conflict(MarketError):
    status = 409


class TooManyAttempts(MarketError):
    status = 429

    def __init__(self, message: str, field: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, field)
        self.retry_after = retry_after
