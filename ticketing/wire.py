"""Cross-process contracts, defined once and imported by every side.

- the token types (``ADMISSION``) that fronts sign and shards verify, and
  ``PLACE``, which a front signs for itself; the arrival claim ``ARRIVED``;
- :class:`Sale`, a grant as it travels from a shard to main in ``report_sales``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ADMISSION = "admission"
PLACE = "place"  # a visitor's place in line, signed by the front (front/admission.py)
ARRIVED = "t"  # claim of admission and place tokens: first arrival at the front, unix s


def ticket_id(event_id: int, serial: int) -> str:
    """The public id of a ticket: ``"<event>-<serial>"``."""
    return f"{event_id}-{serial}"


@dataclass(frozen=True)
class Sale:
    """A grant reported by a shard: ``visitor`` got ``serial`` of ``event``."""

    event: int
    serial: int
    visitor: str
    account: int | None = None

    @classmethod
    def from_wire(cls, item: dict[str, Any]) -> Sale:
        event, serial, visitor = item["event"], item["serial"], item["visitor"]
        account = item.get("account")
        if type(event) is not int or type(serial) is not int or serial < 0:
            raise ValueError("event and serial must be integers")
        if not isinstance(visitor, str) or not 0 < len(visitor) <= 128:
            raise ValueError("visitor must be a short string")
        if account is not None and type(account) is not int:
            raise ValueError("account must be an integer")
        return cls(event, serial, visitor, account)
