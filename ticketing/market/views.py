"""Orders, held tickets and listings as the API answers them (plain functions, no I/O)."""

from __future__ import annotations

from typing import Any

from ..ledger import ListingStatus, OrderKind, OrderStatus, Principal
from ..wire import ticket_id


def order_json(
    kind: OrderKind,
    row: dict[str, Any],
    events: dict[int, dict[str, Any]],
    *,
    now: float,
    currency: str,
) -> dict[str, Any]:
    held = row["status"] == OrderStatus.AWAITING_PAYMENT
    out = {
        "kind": kind.value,
        "id": row["id"],
        "ticket_id": ticket_id(row["event_id"], row["serial"]),
        "event": events.get(row["event_id"], {"id": row["event_id"]}),
        "price_cents": row["price_cents"],
        "currency": currency,
        "status": row["status"],
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
        "seconds_left": round(max(0.0, row["expires_at"] - now), 1) if held else 0,
        "version": row["version"],
    }
    if kind is OrderKind.RESALE:
        out["listing_id"] = row["listing_id"]
    return out


def listing_json(
    row: dict[str, Any], *, currency: str, viewer: Principal | None = None
) -> dict[str, Any]:
    """A listing row (with ``locked_until`` from the ledger) as JSON; ``mine`` for a viewer."""
    out = {
        "id": row["id"],
        "ticket_id": ticket_id(row["event_id"], row["serial"]),
        "event_id": row["event_id"],
        "price_cents": row["price_cents"],
        "currency": currency,
        "status": row["status"],
        "locked_until": row.get("locked_until") if row["status"] == ListingStatus.LOCKED else None,
        "version": row["version"],
        "updated_at": row["updated_at"],
    }
    if viewer is not None:
        out["mine"] = viewer.owns(row)
    return out


def ticket_json(
    row: dict[str, Any],
    events: dict[int, dict[str, Any]],
    listing: dict[str, Any] | None,
) -> dict[str, Any]:
    """A sold ticket someone holds, with its open listing if any."""
    return {
        "ticket_id": ticket_id(row["event_id"], row["serial"]),
        "event": events.get(row["event_id"], {"id": row["event_id"]}),
        "order_id": row["order_id"],
        "resale_order_id": row["resale_order_id"],
        "since": row["since"],
        "listing": listing,
    }
