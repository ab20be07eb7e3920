"""Prometheus metrics: every metric of every role, defined once, here.

Each server object (a :class:`~ticketing.main.server.MainServer`, a
:class:`~ticketing.front.server.RedirectServer`, a shard's ``ClientServer``) owns one
metrics object with its **own** :class:`CollectorRegistry`, never the global one:
tests run a main and several shards in one process, and each must expose only its
own series (the global registry would refuse the second definition).

Conventions: ``ticketing_`` prefix, counters end in ``_total``, base units
(seconds, tickets), and bounded labels only — event ids and shard names (both set
by the operator), routes (the router's patterns, not raw paths), fixed outcome
and reason words. Never a visitor, account, token or raw URL.

Where: ``GET /metrics`` on the front's HTTPS port (main's series + the front's) and
on every shard's HTTPS port, behind the operator bearer token (see
:mod:`ticketing.operator`): the series tell sales per event, so they are not public, and
reusing the TLS port avoids a plain-text port per process that would need its own
firewalling; Prometheus scrapes it with ``scheme: https``, ``tls_config.ca_file``
and ``authorization.credentials_file``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "CONTENT_TYPE",
    "FrontMetrics",
    "MainMetrics",
    "ShardMetrics",
    "refusal_reason",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Buckets in seconds: a grant takes milliseconds alone, seconds in a flash crowd.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 256, 1000, 10_000)

# Ticket states as the ledger's audit names them (a bounded label set).
TICKET_STATES = ("unassigned", "pool", "held", "sold")


def refusal_reason(message: str) -> str:
    """A bounded reason label for a refused admission token (from TokenError.reason)."""
    text = message.lower()
    for needle, reason in (
        ("expired", "expired"),
        ("signature", "forged"),
        ("uncertified", "uncertified"),
        ("already used", "replayed"),
        ("another shard", "other_shard"),
        ("malformed", "malformed"),
        ("wrong token type", "malformed"),
    ):
        if needle in text:
            return reason
    return "other"


class _Metrics:
    """A registry of one server object and its text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MainMetrics(_Metrics):
    """Main: the ledger's tickets, grants, stock per shard, links and fencing."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.tickets = Gauge(
            "ticketing_tickets",
            "Tickets per event and ledger state (unassigned, pool, held, sold), read at scrape",
            ["event", "state"],
            registry=r,
        )
        self.granted = Counter(
            "ticketing_tickets_granted_total",
            "Tickets granted on a shard and committed to the ledger as a held order",
            ["event"],
            registry=r,
        )
        self.sold = Counter(
            "ticketing_tickets_sold_total",
            "Held tickets paid for (primary orders completed)",
            ["event"],
            registry=r,
        )
        self.released = Counter(
            "ticketing_tickets_released_total",
            "Held tickets whose hold expired or was cancelled (back on sale or to the waiting list)",
            ["event"],
            registry=r,
        )
        self.waitlist = Gauge(
            "ticketing_waitlist_length",
            "Entries waiting on each event's waiting list, read at scrape",
            ["event"],
            registry=r,
        )
        self.shard_stock = Gauge(
            "ticketing_shard_stock_tickets",
            "Tickets in a shard's pool per event, as main's ledger counts them",
            ["shard", "event"],
            registry=r,
        )
        self.shard_up = Gauge(
            "ticketing_shard_up",
            "1 while main's link to the shard is up and in sync, else 0",
            ["shard"],
            registry=r,
        )
        self.shard_epoch = Gauge(
            "ticketing_shard_epoch", "The shard's current epoch (fencing)", ["shard"], registry=r
        )
        self.reconnects = Counter(
            "ticketing_link_reconnects_total",
            "Links to a shard re-established after it went offline",
            ["shard"],
            registry=r,
        )
        self.link_losses = Counter(
            "ticketing_link_losses_total", "Links to a shard that dropped", ["shard"], registry=r
        )
        self.fencings = Counter(
            "ticketing_fencings_total",
            "Shards fenced by a new epoch (their unsold tickets reclaimed)",
            ["shard"],
            registry=r,
        )
        self.handshake_failures = Counter(
            "ticketing_tls_handshake_failures_total",
            "Mutual-TLS link handshakes or peer checks that failed",
            ["port"],
            registry=r,
        )
        # Not a metric: the last fencings, for the dashboard's "recent fencings".
        self.recent_fencings: deque[dict[str, Any]] = deque(maxlen=20)
        self.batch_size = Histogram(
            "ticketing_ledger_batch_size_sales",
            "Sales per batch recorded in one ledger commit",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "ticketing_ledger_commit_seconds",
            "Time to record one batch of sales in the ledger (one transaction)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    @contextmanager
    def timed_batch(self, n: int) -> Iterator[None]:
        """Observe one ledger batch of ``n`` sales and how long it took."""
        t0 = time.perf_counter()
        yield
        self.commit_seconds.observe(time.perf_counter() - t0)
        self.batch_size.observe(n)

    def fenced(self, shard: str, epoch: int) -> None:
        self.fencings.labels(shard).inc()
        self.recent_fencings.append({"time": time.time(), "shard": shard, "epoch": epoch})

    def count_ticket(self, what: str, event: int) -> None:
        """A market change committed: ``sold`` or ``released`` for ``event``."""
        {"sold": self.sold, "released": self.released}[what].labels(str(event)).inc()

    def set_tickets(self, event: int, audit: Mapping[str, Any]) -> None:
        """Gauges from one event's audit (``Audit.as_dict()``)."""
        pools = audit.get("pools", {})
        counts = {
            "unassigned": audit["unassigned"],
            "pool": sum(pools.values()) if isinstance(pools, dict) else 0,
            "held": audit["held"],
            "sold": audit["sold"],
        }
        for state in TICKET_STATES:
            self.tickets.labels(str(event), state).set(counts[state])

    def set_shards(self, shards: list[Mapping[str, Any]]) -> None:
        """Link gauges from main's shard views (``ShardLink.public()``)."""
        for s in shards:
            name = str(s["name"])
            self.shard_up.labels(name).set(1 if s["online"] else 0)
            self.shard_epoch.labels(name).set(s["epoch"])
            for event, n in s["stock"].items():
                self.shard_stock.labels(name, str(event)).set(n)


class FrontMetrics(_Metrics):
    """The front door: admissions by outcome, HTTP request latency by route."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.admissions = Counter(
            "ticketing_front_admissions_total",
            "Visitors answered by the front: redirect (admitted), sold_out, unavailable, no_event",
            ["outcome"],
            registry=r,
        )
        self.waiting = Gauge(
            "ticketing_front_queue_waiting",
            "Visitors waiting in the front's waiting room (front/queue.py), per event",
            ["event"],
            registry=r,
        )
        self.requests = Histogram(
            "ticketing_http_request_duration_seconds",
            "HTTP requests on the front/API port by route pattern, method and status",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # A front process's link to main (front/node.py; zero in the embedded front).
        self.main_term = Gauge(
            "ticketing_front_main_term",
            "Leadership term of the main this front process is linked to (0: none now)",
            registry=r,
        )
        self.mains_linked = Counter(
            "ticketing_front_main_links_total",
            "Links to a main this front adopted (a new leader, or the same term after a blip)",
            registry=r,
        )
        self.mains_refused = Counter(
            "ticketing_front_main_links_refused_total",
            "Dials to a main that did not become this front's link: stale_term (a term older"
            " than the newest seen), not_leader (a standby), unreachable, rejected (bad hello)",
            ["reason"],
            registry=r,
        )


class ShardMetrics(_Metrics):
    """A shard: admissions and refusals, queues, stock, grants and time to ticket."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.upgrades = Counter(
            "ticketing_shard_admissions_total",
            "WSS upgrades by outcome: admitted, or refused with a reason (forged, expired,"
            " replayed, other_shard, malformed, uncertified, conflict, not_linked, draining, other)",
            ["outcome"],
            registry=r,
        )
        self.queue = Gauge(
            "ticketing_shard_queue_length",
            "Visitors waiting in the shard's FIFO per event, read at scrape",
            ["event"],
            registry=r,
        )
        self.stock = Gauge(
            "ticketing_shard_pool_tickets",
            "Tickets left in this shard's pool per event, read at scrape",
            ["event"],
            registry=r,
        )
        self.connections = Gauge(
            "ticketing_shard_connections",
            "Open browser WebSocket connections, read at scrape",
            registry=r,
        )
        self.unacked = Gauge(
            "ticketing_shard_unacked_grants",
            "Grants journaled but not yet confirmed by main, read at scrape",
            registry=r,
        )
        self.linked = Gauge(
            "ticketing_shard_linked", "1 while linked to main and in sync", registry=r
        )
        self.answers = Counter(
            "ticketing_shard_answers_total",
            "Answers to ticket requests by type (ticket, sold_out, error)",
            ["type"],
            registry=r,
        )
        self.time_to_ticket = Histogram(
            "ticketing_time_to_ticket_seconds",
            "From a visitor's request reaching the shard to its answer, by answer type",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.handshake_failures = Counter(
            "ticketing_tls_handshake_failures_total",
            "Mutual-TLS link handshakes or peer checks that failed",
            ["port"],
            registry=r,
        )

    def answered(self, kind: str, seconds: float) -> None:
        kind = kind if kind in ("ticket", "sold_out") else "error"
        self.answers.labels(kind).inc()
        self.time_to_ticket.labels(kind).observe(seconds)

    def refresh(self, status: Mapping[str, Any], queues: Mapping[int, int]) -> None:
        """Gauges from the shard's ``status()`` and its per-event queue lengths."""
        for event, n in status["pools"].items():
            self.stock.labels(str(event)).set(n)
        for event, n in queues.items():
            self.queue.labels(str(event)).set(n)
        self.connections.set(status["connections"])
        self.unacked.set(status["unacked"])
        self.linked.set(1 if status["linked"] else 0)
