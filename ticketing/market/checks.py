"""Checks on what a buyer or seller sends (plain functions; :class:`ValidationError`)."""

from __future__ import annotations

from typing import Any

from ..errors import ValidationError
from .errors import Conflict

# Limits
MAX_PRICE_CENTS = 100_000_000
MAX_CARD_TOKEN = 128


def parse_ticket_id(value: object) -> tuple[int, int]:
    """``"3-17"`` -> ``(3, 17)``; :class:`ValidationError` otherwise."""
    if isinstance(value, str):
        event, _, serial = value.partition("-")
        # ASCII digits only ("²".isdigit() is true), and within SQLite's integers
        if all(0 < len(n) <= 12 and n.isascii() and n.isdigit() for n in (event, serial)):
            return int(event), int(serial)
    raise ValidationError("ticket_id must look like '<event>-<serial>'", "ticket_id")


def check_price(value: object, name: str = "price_cents") -> int:
    if type(value) is not int or not 0 < value <= MAX_PRICE_CENTS:
        raise ValidationError(
            f"{name} must be a whole number of cents between 1 and {MAX_PRICE_CENTS}", name
        )
    return value


def check_card(card: object) -> str:
    if not isinstance(card, str) or not 0 < len(card) <= MAX_CARD_TOKEN:
        raise ValidationError("card must be a card token such as 'tok_visa'", "card")
    return card


def check_version(row: dict[str, Any], version: int | None, what: str) -> None:
    """Optimistic concurrency: refuse a change based on an outdated read."""
    if version is None:
        return
    if type(version) is not int:
        raise ValidationError("version must be an integer", "version")
    if row["version"] != version:
        raise Conflict(
            f"this {what} changed since you loaded it (version {row['version']}, not {version});"
            " reload and try again",
            "version",
        )
