"""The OpenAPI 3.1 description of ``/api/v1``, served at ``/api/v1/openapi.json``.

Written by hand next to the routes (``api.py``) and kept true by tests: every
aiohttp route under ``/api/v1`` is described and nothing described is missing
(``tests/test_openapi.py``), and schemathesis fuzzes a live cluster against it
(no 5xx, every answer's status, content type and body as described).
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from .sessions import COOKIE_NAME

__all__ = ["OPENAPI_PATH", "handle_openapi", "openapi_spec"]

OPENAPI_PATH = "/api/v1/openapi.json"

JSON = "application/json"
MAX_ID = 999_999_999_999  # the routes take 1 to 12 digits


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], props: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, **extra}


INT = {"type": "integer"}
# An event's waiting-room settings (PATCH /api/v1/admin/events/{id}; front/queue.py).
WAITROOM_PROPS: dict[str, Any] = {
    "sale_starts_at": {
        "type": ["number", "null"],
        "minimum": 0,
        "description": "sale start, unix seconds; null: on sale now. Visitors before it"
        " wait in a pre-queue",
    },
    "prequeue_order": {
        "enum": ["random", "arrival"],
        "description": "the pre-queue's order at the start (random, as most waiting rooms)",
    },
    "pow_bits": {
        "type": "integer",
        "minimum": 0,
        "maximum": 28,
        "description": "proof of work to enter the queue, leading zero bits; 0: off",
    },
    "release_rate": {
        "type": ["number", "null"],
        "exclusiveMinimum": 0,
        "description": "visitors let through per second at most; null: measured",
    },
}
NUM = {"type": "number"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
NULLABLE_INT = {"type": ["integer", "null"]}
NULLABLE_NUM = {"type": ["number", "null"]}
EVENT_REF = _obj(["id"], {"id": INT, "name": STR})

SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        ["errors"],
        {
            "errors": {
                "type": "array",
                "minItems": 1,
                "items": _obj(["message"], {"message": STR, "field": STR}),
            }
        },
    ),
    "Account": _obj(["id", "email", "created_at"], {"id": INT, "email": STR, "created_at": NUM}),
    "Me": _obj(
        ["signed_in", "account"],
        {"signed_in": BOOL, "account": {"oneOf": [_ref("Account"), {"type": "null"}]}},
    ),
    "SignedOut": _obj(["signed_in", "signed_out"], {"signed_in": BOOL, "signed_out": BOOL}),
    "Credentials": _obj(
        ["email", "password"], {"email": STR, "password": {"type": "string", "format": "password"}}
    ),
    "Event": _obj(
        ["id", "name", "description", "price_cents", "count"],
        {
            "id": INT,
            "name": STR,
            "description": STR,
            "price_cents": INT,
            "count": INT,
            **WAITROOM_PROPS,
        },
    ),
    "EventSettings": _obj([], WAITROOM_PROPS, additionalProperties=False),
    "EventOverview": {
        "allOf": [
            _ref("Event"),
            _obj(
                ["currency", "available", "sold_out", "waitlist"],
                {"currency": STR, "available": INT, "sold_out": BOOL, "waitlist": INT},
            ),
        ]
    },
    "Events": _obj(["events"], {"events": {"type": "array", "items": _ref("EventOverview")}}),
    "Waitlist": _obj(
        ["event_id", "length", "status"],
        {
            "event_id": INT,
            "length": INT,
            "status": {"type": ["string", "null"]},
            "joined_at": NUM,
            "position": INT,
            "order_id": NULLABLE_INT,
        },
    ),
    "Order": _obj(
        [
            "kind",
            "id",
            "ticket_id",
            "event",
            "price_cents",
            "currency",
            "status",
            "created_at",
            "expires_at",
            "seconds_left",
            "version",
        ],
        {
            "kind": {"enum": ["primary", "resale"]},
            "id": INT,
            "ticket_id": STR,
            "event": EVENT_REF,
            "price_cents": INT,
            "currency": STR,
            "status": {"enum": ["awaiting_payment", "complete", "expired", "cancelled"]},
            "created_at": NUM,
            "expires_at": NUM,
            "seconds_left": NUM,
            "version": INT,
            "listing_id": INT,
        },
    ),
    "Orders": _obj(["orders"], {"orders": {"type": "array", "items": _ref("Order")}}),
    "Listing": _obj(
        [
            "id",
            "ticket_id",
            "event_id",
            "price_cents",
            "currency",
            "status",
            "locked_until",
            "version",
            "updated_at",
        ],
        {
            "id": INT,
            "ticket_id": STR,
            "event_id": INT,
            "price_cents": INT,
            "currency": STR,
            "status": STR,
            "locked_until": NULLABLE_NUM,
            "version": INT,
            "updated_at": NUM,
            "mine": BOOL,
        },
    ),
    "Listings": _obj(["listings"], {"listings": {"type": "array", "items": _ref("Listing")}}),
    "Ticket": _obj(
        ["ticket_id", "event", "order_id", "resale_order_id", "since", "listing"],
        {
            "ticket_id": STR,
            "event": EVENT_REF,
            "order_id": INT,
            "resale_order_id": NULLABLE_INT,
            "since": NUM,
            "listing": {"oneOf": [_ref("Listing"), {"type": "null"}]},
        },
    ),
    "Tickets": _obj(["tickets"], {"tickets": {"type": "array", "items": _ref("Ticket")}}),
    "Pay": _obj(
        ["card"],
        {"card": {"type": "string", "examples": ["tok_visa", "tok_decline"]}, "version": INT},
    ),
    "Version": _obj([], {"version": INT}),
    "NewListing": _obj(
        ["ticket_id", "price_cents"], {"ticket_id": STR, "price_cents": {"type": "integer"}}
    ),
    "ListingChange": _obj(["price_cents"], {"price_cents": INT, "version": INT}),
    "NewEvent": _obj(
        ["name", "price", "count"],
        {
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "description": {"type": "string", "maxLength": 2000},
            "price": {"type": ["string", "number"], "examples": ["25.00"]},
            "count": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        },
    ),
    "CreatedEvent": _obj(["event"], {"event": _ref("Event")}),
    "Distributed": _obj(
        ["event_id", "given"],
        {"event_id": INT, "given": {"type": "object", "additionalProperties": INT}},
    ),
    "Status": _obj(
        ["events", "shards"],
        {
            "events": {
                "type": "array",
                "items": {"allOf": [_ref("Event"), _obj(["unassigned"], {"unassigned": INT})]},
            },
            "shards": {
                "type": "array",
                "items": _obj(
                    ["name", "online", "epoch", "url", "stock"],
                    {
                        "name": {"type": ["string", "null"]},
                        "online": BOOL,
                        "epoch": INT,
                        "url": STR,
                        "stock": {"type": "object", "additionalProperties": INT},
                    },
                ),
            },
        },
    ),
    "Audit": _obj(
        ["total", "unassigned", "pools", "held", "sold", "problems", "in_pools", "exact"],
        {
            "total": INT,
            "unassigned": INT,
            "pools": {"type": "object", "additionalProperties": INT},
            "held": INT,
            "sold": INT,
            "problems": {"type": "array", "items": STR},
            "in_pools": INT,
            "exact": BOOL,
            "market_problems": {"type": "array", "items": STR},
        },
    ),
}

ERRORS = {
    400: "Bad input: malformed JSON, a wrong field, a bad query parameter",
    401: "Not signed in, wrong credentials or no operator credential",
    402: "The card was declined",
    403: "Not yours, or operator endpoints disabled",
    404: "No such resource",
    409: "Wrong state, locked, or a stale version",
    408: "The request body did not arrive in time",
    413: "The request body is too large",
    415: "State changes need Content-Type: application/json (CSRF)",
    429: "Too many requests (sign-ins, sign-ups, password checks): see Retry-After",
}

# What the edge adds to every state change (CSRF and slow-body checks, ticketing/csrf.py),
# and to the routes that need a signed-in account or hash a password.
STATE_CHANGE_ERRORS = (403, 408, 415)
ROUTE_ERRORS = {
    ("/api/v1/accounts", "post"): (429,),
    ("/api/v1/session", "post"): (429,),
    ("/api/v1/events/{id}/waitlist", "post"): (401,),
    ("/api/v1/listings/{id}/buy", "post"): (401,),
}


def _with_edge_errors(paths: dict[str, Any]) -> dict[str, Any]:
    for path, methods in paths.items():
        for method, op in methods.items():
            codes = ROUTE_ERRORS.get((path, method), ())
            if method in ("post", "patch", "delete"):
                codes = (*codes, *STATE_CHANGE_ERRORS)
            for code in codes:
                op["responses"].setdefault(
                    str(code),
                    {"description": ERRORS[code], "content": {JSON: {"schema": _ref("Error")}}},
                )
            op["responses"] = dict(sorted(op["responses"].items()))
    return paths


def _op(
    summary: str,
    ok: tuple[int, str],
    errors: tuple[int, ...],
    *,
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
    operator: bool = False,
) -> dict[str, Any]:
    status, schema = ok
    responses: dict[str, Any] = {
        str(status): {"description": summary, "content": {JSON: {"schema": _ref(schema)}}}
    }
    for code in sorted({*errors, 400, 413} if body else {*errors, 400}):
        responses[str(code)] = {
            "description": ERRORS[code],
            "content": {JSON: {"schema": _ref("Error")}},
        }
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(body)}}}
    if operator:
        op["security"] = [{"operator": []}]
    return op


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "integer", "minimum": 0, "maximum": MAX_ID},
    }


ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
}


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This description",
                "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {}}}}
                },
            }
        },
        "/api/v1/me": {"get": _op("Who am I", (200, "Me"), ())},
        "/api/v1/accounts": {
            "post": _op("Sign up (and sign in)", (201, "Me"), (409,), body="Credentials")
        },
        "/api/v1/session": {
            "post": _op("Sign in", (200, "Me"), (401, 429), body="Credentials"),
            "delete": _op("Sign out (revokes the session)", (200, "SignedOut"), ()),
        },
        "/api/v1/events": {"get": _op("Events with availability", (200, "Events"), ())},
        "/api/v1/events/{id}": {"get": _op("One event", (200, "EventOverview"), (404,))},
        "/api/v1/events/{id}/waitlist": {
            "get": _op("My place on the waiting list", (200, "Waitlist"), (404,)),
            "post": _op("Join the waiting list", (201, "Waitlist"), (404, 409)),
            "delete": _op("Leave the waiting list", (200, "Waitlist"), (404,)),
        },
        "/api/v1/orders": {"get": _op("My orders (primary and resale)", (200, "Orders"), ())},
        "/api/v1/tickets": {"get": _op("Tickets I hold", (200, "Tickets"), ())},
        "/api/v1/listings": {
            "get": _op(
                "Resale listings",
                (200, "Listings"),
                (),
                params=[
                    _query("event", "only this event"),
                    _query("min_price", "in cents"),
                    _query("max_price", "in cents"),
                    _query("mine", "1, true or yes: only mine", {"type": "string"}),
                ],
            ),
            "post": _op(
                "List a ticket I hold for resale (signed in)",
                (201, "Listing"),
                (401, 403, 404, 409),
                body="NewListing",
            ),
        },
        "/api/v1/listings/{id}": {
            "get": _op("One listing", (200, "Listing"), (404,)),
            "patch": _op(
                "Change my listing's price", (200, "Listing"), (403, 404, 409), body="ListingChange"
            ),
            "delete": _op(
                "Withdraw my listing",
                (200, "Listing"),
                (403, 404, 409),
                params=[_query("version", "the version I last saw")],
            ),
        },
        "/api/v1/listings/{id}/buy": {
            "post": _op("Lock a listing for my checkout", (201, "Order"), (403, 404, 409))
        },
        "/api/v1/ws": {
            "get": {
                "summary": "WebSocket: offers, order and listing changes (upgrade required)",
                "responses": {
                    "101": {"description": "Switching protocols"},
                    "400": {
                        "description": "Not a WebSocket upgrade",
                        "content": {JSON: {"schema": _ref("Error")}},
                    },
                },
            }
        },
        "/api/v1/admin/events": {
            "post": _op(
                "Create an event",
                (201, "CreatedEvent"),
                (401, 403),
                body="NewEvent",
                operator=True,
            )
        },
        "/api/v1/admin/events/{id}": {
            "patch": _op(
                "Set the event's waiting room: sale start, pre-queue order, proof of work,"
                " release rate cap",
                (200, "CreatedEvent"),
                (401, 403, 404),
                body="EventSettings",
                operator=True,
            )
        },
        "/api/v1/admin/events/{id}/distribute": {
            "post": _op(
                "Split the event's unassigned tickets among the online shards",
                (200, "Distributed"),
                (401, 403, 404, 409),
                operator=True,
            )
        },
        "/api/v1/admin/status": {
            "get": _op("Events and shards", (200, "Status"), (401, 403), operator=True)
        },
        "/api/v1/admin/audit": {
            "get": _op(
                "Where every ticket is",
                (200, "Audit"),
                (401, 403),
                params=[_query("event", "only this event")],
                operator=True,
            )
        },
    }
    for kind, base in (("order", "orders"), ("resale order", "resale-orders")):
        paths[f"/api/v1/{base}/{{id}}"] = {"get": _op(f"One {kind}", (200, "Order"), (403, 404))}
        paths[f"/api/v1/{base}/{{id}}/pay"] = {
            "post": _op(f"Pay a held {kind}", (200, "Order"), (402, 403, 404, 409), body="Pay")
        }
        paths[f"/api/v1/{base}/{{id}}/cancel"] = {
            "post": _op(f"Cancel a held {kind}", (200, "Order"), (403, 404, 409))
        }
    for path, item in paths.items():
        if "{id}" in path:
            for op in item.values():
                op.setdefault("parameters", []).insert(0, ID_PARAM)
    return paths


def openapi_spec() -> dict[str, Any]:
    """A fresh copy of the description (callers may change it)."""
    return copy.deepcopy(_SPEC)


_SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "ticketing marketplace API",
        "version": "1",
        "description": "Accounts, orders, resale, waiting lists and operator endpoints."
        " Errors are {errors: [{message, field?}]}. Identity is the session cookie;"
        " operator endpoints need Authorization: Bearer <TICKETING_OPERATOR_TOKEN>.",
    },
    "servers": [{"url": "/"}],
    "paths": _with_edge_errors(_paths()),
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "operator": {"type": "http", "scheme": "bearer"},
            "session": {"type": "apiKey", "in": "cookie", "name": COOKIE_NAME},
        },
    },
}


async def handle_openapi(request: web.Request) -> web.Response:
    """``GET /api/v1/openapi.json``."""
    return web.json_response(_SPEC, headers={"Cache-Control": "no-cache"})
