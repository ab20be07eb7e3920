"""ticketing: a distributed, TLS-sharded ticket dispenser.

- :class:`MainServer` owns the ledger and links to the shards over mutual TLS.
- :class:`ClientServer` is a shard: a slice of the pool, served first come, first
  served to browsers over WSS.
- :class:`RedirectServer` sends browsers to a shard with stock, with a signed token.
"""

from .errors import (
    CommandError,
    ConfigError,
    LinkClosed,
    PeerRejected,
    ProtocolError,
    TicketingError,
    TokenError,
    ValidationError,
)
from .front.server import RedirectServer
from .main.server import MainServer
from .shard.server import ClientServer
from .tls import write_cluster_keys
from .web_client import Outcome, WebClient, get_ticket

__all__ = [
    "ClientServer",
    "CommandError",
    "ConfigError",
    "LinkClosed",
    "MainServer",
    "Outcome",
    "PeerRejected",
    "ProtocolError",
    "RedirectServer",
    "TicketingError",
    "TokenError",
    "ValidationError",
    "WebClient",
    "get_ticket",
    "write_cluster_keys",
]
