"""``ticketing event create|list|show|distribute|schedule``: events on a running cluster.

A small client of the admin API (``/api/v1/admin/...``) over HTTPS, trusting the
cluster CA, with the operator token from ``--token-file``, ``TICKETING_OPERATOR_TOKEN``
or ``TICKETING_OPERATOR_TOKEN_FILE``. Readable tables by default, ``--json`` for
scripts. Exit codes: 0 done, 1 the server refused (its message is printed), 2 the
server could not be reached or the command was misused, 3 not supported by the
server.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from .errors import ConfigError, TicketingError
from .operator import OPERATOR_ENV, OPERATOR_FILE_ENV, operator_token_from_env

DEFAULT_URL = "https://127.0.0.1:8443"
DEFAULT_CA = "data/cluster/keys/ca.crt"
URL_ENV, CA_ENV = "TICKETING_URL", "TICKETING_CA"
# The admin API's sale-start field (``EventSettings`` in its OpenAPI description).
SCHEDULE_FIELD = "sale_starts_at"


class AdminError(TicketingError):
    """The server answered with an error; ``status`` and its ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class Unreachable(TicketingError):
    """No answer from the server (refused, TLS failure, timeout)."""


class AdminClient:
    """The admin API of one cluster's front. Synchronous: one call per CLI command."""

    def __init__(self, base_url: str, token: str, ca: str | os.PathLike[str] | None) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.ssl = ssl.create_default_context(cafile=str(ca) if ca else None)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ssl, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise AdminError(exc.code, _error_message(exc.read())) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise Unreachable(f"cannot reach {self.base}: {getattr(exc, 'reason', exc)}") from None

    # -- the admin API ---------------------------------------------------------------

    def create_event(self, name: str, description: str, price: str, count: int) -> dict[str, Any]:
        body = {"name": name, "description": description, "price": price, "count": count}
        return dict(self.call("POST", "/api/v1/admin/events", body)["event"])

    def events(self) -> list[dict[str, Any]]:
        """Every event: the operator's view (unassigned) joined with availability."""
        status = self.call("GET", "/api/v1/admin/status")
        public = {e["id"]: e for e in self.call("GET", "/api/v1/events")["events"]}
        out = []
        for e in status["events"]:
            p = public.get(e["id"], {})
            out.append(
                dict(
                    e,
                    available=p.get("available"),
                    waitlist=p.get("waitlist"),
                    in_pools=sum(int(s["stock"].get(str(e["id"]), 0)) for s in status["shards"]),
                )
            )
        return out

    def show(self, event_id: int) -> dict[str, Any]:
        """One event with its audit and each shard's stock of it."""
        status = self.call("GET", "/api/v1/admin/status")
        event = next((e for e in status["events"] if e["id"] == event_id), None)
        if event is None:
            raise AdminError(404, f"no event {event_id}")
        audit = self.call("GET", f"/api/v1/admin/audit?event={event_id}")
        shards = [
            {
                "name": s["name"],
                "online": s["online"],
                "epoch": s["epoch"],
                "stock": int(s["stock"].get(str(event_id), 0)),
            }
            for s in status["shards"]
        ]
        return {"event": event, "audit": audit, "shards": shards}

    def distribute(self, event_id: int) -> dict[str, Any]:
        return dict(self.call("POST", f"/api/v1/admin/events/{event_id}/distribute"))

    def schedule_field(self) -> str | None:
        """The sale-start field the server's admin API accepts, if it has one."""
        spec = self.call("GET", "/api/v1/openapi.json")
        schema = spec.get("components", {}).get("schemas", {}).get("EventSettings", {})
        return SCHEDULE_FIELD if SCHEDULE_FIELD in schema.get("properties", {}) else None

    def settings(self, event_id: int, settings: dict[str, Any]) -> dict[str, Any]:
        """Set the event's waiting-room settings (PATCH); returns the event."""
        return dict(self.call("PATCH", f"/api/v1/admin/events/{event_id}", settings)["event"])


def _error_message(raw: bytes) -> str:
    try:
        errors = json.loads(raw)["errors"]
        return "; ".join(str(e.get("message")) for e in errors)
    except (ValueError, KeyError, TypeError, AttributeError):
        return raw.decode("utf-8", "replace")[:200] or "no message"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: TextIO) -> None:
    """Aligned columns with a header; numbers right-aligned."""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), int | float) for r in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(line([c.upper() for c in columns]), file=out)
    for row in cells:
        print(line(row), file=out)


# -- the command ---------------------------------------------------------------------


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        return Path(args.token_file).read_text(encoding="utf-8").strip()
    token = operator_token_from_env()
    if token is None:
        raise ConfigError(f"no operator token: set {OPERATOR_ENV} or {OPERATOR_FILE_ENV}")
    return token


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        client = AdminClient(args.url, _token(args), args.ca)
        return _run(client, args, out)
    except AdminError as exc:
        print(f"error: the server answered {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    except (Unreachable, ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(client: AdminClient, args: argparse.Namespace, out: TextIO) -> int:
    action = args.action
    result: Any
    if action == "create":
        result = client.create_event(args.name, args.description, args.price, args.count)
        if args.distribute:
            result = dict(result, given=client.distribute(result["id"])["given"])
        if not args.json:
            print(f"created event {result['id']}: {result['count']} x {result['name']!r}", file=out)
            if "given" in result:
                print(f"distributed: {_given(result['given'])}", file=out)
    elif action == "list":
        result = client.events()
        if not args.json:
            cols = ["id", "name", "price_cents", "count", "unassigned", "in_pools", "available"]
            table(result, [*cols, "waitlist"], out)
    elif action == "show":
        result = client.show(args.id)
        if not args.json:
            e, a = result["event"], result["audit"]
            print(f"event {e['id']}: {e['name']} ({e['description']})", file=out)
            print(f"price {e['price_cents'] / 100:.2f}, {e['count']} tickets", file=out)
            print(
                f"unassigned {a['unassigned']}  in pools {a['in_pools']}  held {a['held']}"
                f"  sold {a['sold']}  audit {'exact' if a['exact'] else 'NOT EXACT'}",
                file=out,
            )
            table(result["shards"], ["name", "online", "epoch", "stock"], out)
    elif action == "distribute":
        result = client.distribute(args.id)
        if not args.json:
            print(f"event {args.id} distributed: {_given(result['given'])}", file=out)
    else:  # schedule
        field = client.schedule_field()
        if field is None:
            print(
                "error: scheduling is not supported by this server yet: its admin API has no"
                " sale-start field (see /api/v1/openapi.json)",
                file=sys.stderr,
            )
            return 3
        result = client.settings(args.id, schedule_settings(args))
        if not args.json:
            start = result["sale_starts_at"]
            when = "now (no start time)" if start is None else _iso(start)
            print(
                f"event {args.id}: on sale {when}, pre-queue {result['prequeue_order']},"
                f" proof of work {result['pow_bits']} bits,"
                f" release rate {result['release_rate'] or 'measured'}",
                file=out,
            )
    if args.json:
        print(json.dumps(result, indent=2), file=out)
    return 0


def parse_time(text: str) -> float | None:
    """ISO 8601 (``2030-01-01T10:00Z``; no zone means UTC) or ``none`` -> unix s."""
    if text.lower() in ("none", "now"):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"--at: not an ISO 8601 time: {text!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")


def schedule_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The PATCH body of ``event schedule``: only what was given."""
    out: dict[str, Any] = {"sale_starts_at": parse_time(args.at)}
    if args.order is not None:
        out["prequeue_order"] = args.order
    if args.pow_bits is not None:
        out["pow_bits"] = args.pow_bits
    if args.release_rate is not None:
        try:
            rate = None if args.release_rate == "measured" else float(args.release_rate)
        except ValueError as exc:
            raise ConfigError(
                f"--release-rate: a number or measured: {args.release_rate!r}"
            ) from exc
        out["release_rate"] = rate
    return out


def _given(given: dict[str, int]) -> str:
    return ", ".join(f"{n} to {s}" for s, n in sorted(given.items())) or "nothing (none left)"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``event`` and its actions to the ``ticketing`` command's subparsers."""
    p = sub.add_parser("event", help="create, list, show and distribute events on a cluster")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"the cluster's front (default ${URL_ENV} or {DEFAULT_URL})",
    )
    common.add_argument(
        "--ca",
        default=os.environ.get(CA_ENV, DEFAULT_CA),
        help=f"the cluster CA certificate to trust (default ${CA_ENV} or {DEFAULT_CA})",
    )
    common.add_argument(
        "--token-file",
        help=f"file holding the operator token (default ${OPERATOR_ENV} or ${OPERATOR_FILE_ENV})",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    actions = p.add_subparsers(dest="action", required=True)

    a = actions.add_parser("create", parents=[common], help="create an event")
    a.add_argument("--name", required=True, help="the event's name")
    a.add_argument("--description", default="", help="a line about it")
    a.add_argument("--price", required=True, help='price in currency units, e.g. "25.00"')
    a.add_argument("--count", type=int, required=True, help="how many tickets")
    a.add_argument("--distribute", action="store_true", help="split it among the shards at once")
    actions.add_parser("list", parents=[common], help="every event with its stock")
    for name, text in (
        ("show", "one event: audit and stock per shard"),
        ("distribute", "split the event's unassigned tickets among the online shards"),
    ):
        a = actions.add_parser(name, parents=[common], help=text)
        a.add_argument("id", type=int, help="the event id")
    a = actions.add_parser("schedule", parents=[common], help="set when the sale starts")
    a.add_argument("id", type=int, help="the event id")
    a.add_argument(
        "--at", required=True, help="sale start, ISO 8601 (e.g. 2030-01-01T10:00Z); none: now"
    )
    a.add_argument(
        "--order", choices=["random", "arrival"], help="the pre-queue's order at the start"
    )
    a.add_argument("--pow-bits", type=int, help="proof of work to enter the queue (0: off)")
    a.add_argument("--release-rate", help="visitors let through per second at most, or measured")
    p.set_defaults(fn=run)
    return p
