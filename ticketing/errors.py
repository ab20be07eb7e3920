"""The project's exception tree.

::

    TicketingError
     ├── ConfigError               bad certificate paths, options, keys
     ├── ProtocolError             the main<->shard line protocol
     │    └── LocalProtocolError   we misused the protocol object
     ├── PeerRejected              TLS identity (role/name) or hello refused
     ├── CommandError              a peer answered a request with an error reply
     ├── LinkClosed                the link went away with requests in flight
     ├── NotLeader                 a newer main's term fenced this one
     ├── TokenError                a signed token is forged, expired or malformed
     ├── Overloaded                a bounded queue is full: try again (``retry_after``)
     └── ValidationError           bad user input for the REST API (has a field)

What the peer sends wrong never raises: the protocol turns it into an error event
or reply. Library errors (ssl, OSError, sqlite3) are translated into these at the
boundary.
"""

from __future__ import annotations


class TicketingError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(TicketingError):
    """Certificates, keys or options are missing or inconsistent."""


class ProtocolError(TicketingError):
    """A line of the command protocol could not be accepted.

    ``code`` is the machine-readable code that travels in an error reply.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class LocalProtocolError(ProtocolError):
    """This side misused the protocol object (a bug in our code)."""


class PeerRejected(TicketingError):
    """The peer's certificate role/name or its hello is not acceptable."""


class CommandError(TicketingError):
    """The peer answered a request with ``ok: false``."""

    def __init__(self, cmd: str, code: str, message: str) -> None:
        super().__init__(cmd, code, message)
        self.cmd = cmd
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.cmd} failed: {self.code}: {self.message}"


class LinkClosed(TicketingError):
    """The link closed before a reply arrived."""


class NotLeader(TicketingError):
    """This main's term is over: another main leads now (its writes are refused)."""


class TokenError(TicketingError):
    """A signed token was refused; ``reason`` says why (forged, expired, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"token refused: {self.reason}"


class Overloaded(TicketingError):
    """A bounded resource (e.g. the password-hashing queue) is full; the API says 429."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after)
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.message} (retry after {self.retry_after:g} s)"


class ValidationError(TicketingError):
    """User input is invalid; ``field`` names the input when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message
