"""The OpenAPI 3.1 description of ``/api/v1`` and the front door, served at
``/api/v1/openapi.json``.

Written by hand next to the routes (``api.py``; the front door's JSON answers:
``front/server.py``, the waiting room's ``front/queue.py``) and kept true by
tests: every aiohttp route under ``/api/v1`` and every JSON route of the front door
is described and nothing described is missing (``tests/test_openapi.py``), and
schemathesis fuzzes a live cluster against it (no 5xx, every answer's status,
content type and body as described).
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

# The front door's answers (``Accept: application/json``; browsers get pages).
MESSAGES = {"type": "array", "items": _obj(["message"], {"message": STR})}
DOOR_SCHEMAS: dict[str, Any] = {
    "Redirect": _obj(
        ["status", "location"],
        {"status": {"const": "redirect"}, "location": STR, "event": _ref("Event")},
        description="302: to a shard's page, with an admission token and a place token",
    ),
    "Queued": _obj(
        ["status", "queue", "location", "poll", "event"],
        {
            "status": {"enum": ["queued", "released", "sold_out"]},
            "queue": {"type": "string", "description": "the signed queue ticket (keep it)"},
            "location": {"type": "string", "description": "this entry's page (a reload)"},
            "poll": {"type": "string", "description": "the long-poll for this entry"},
            "event": EVENT_REF,
            "prequeue": BOOL,
            "position": {
                "type": ["integer", "null"],
                "description": "1: next; counts every front's line; null in a pre-queue",
            },
            "waiting": {"type": "integer", "description": "visitors in line, every front"},
            "eta_s": {"type": "number", "description": "visitors ahead / release rate"},
            "release_rate": {"type": "number", "description": "visitors let on per second"},
            "paused": {
                "type": "boolean",
                "description": "main is away (a standby takes over): nobody moves, places stay",
            },
            "next_poll_s": {"type": "number", "description": "0: poll now (held open)"},
            "starts_in_s": NUM,
            "sale_starts_at": NUM,
            "redirect": {
                "type": "string",
                "description": "released: the shard's page with an admission, to go to at once",
            },
        },
    ),
    "Challenge": _obj(
        ["status", "challenge", "bits", "location", "event"],
        {
            "status": {"const": "challenge"},
            "challenge": STR,
            "bits": INT,
            "location": {"type": "string", "description": "append the solution"},
            "event": EVENT_REF,
            "errors": MESSAGES,
        },
        description="proof of work: SHA-256(challenge ':' solution) starts with bits zeros",
    ),
    "Refused": _obj(
        ["status", "errors", "location"],
        {"status": {"const": "refused"}, "errors": MESSAGES, "location": STR},
        description="a queue ticket of another visitor, forged, or of a revoked front",
    ),
    "Wait": _obj(
        ["status", "retry_after", "location"],
        {
            "status": {"enum": ["wait", "unavailable"]},
            "retry_after": NUM,
            "location": {"type": "string", "description": "retry here (keeps the place)"},
            "place": STR,
            "event": _ref("Event"),
        },
    ),
    "SoldOut": _obj(["status"], {"status": {"const": "sold_out"}, "event": _ref("Event")}),
    "RateLimited": _obj(
        ["status", "errors"], {"status": {"const": "rate_limited"}, "errors": MESSAGES}
    ),
    "NoEvent": _obj(["status"], {"status": {"const": "no_event"}, "errors": MESSAGES}),
    "Health": _obj(["status"], {"status": {"enum": ["up", "down"]}}),
}


def _door_answer(
    description: str, *schemas: str, page: bool = False, plain: bool = False
) -> dict[str, Any]:
    """``page``: browsers get an HTML page instead; ``plain``: aiohttp's own text 404
    (an id the route's pattern does not take)."""
    schema = _ref(schemas[0]) if len(schemas) == 1 else {"oneOf": [_ref(s) for s in schemas]}
    content: dict[str, Any] = {JSON: {"schema": schema}}
    if page:
        content["text/html"] = {"schema": {"type": "string"}}
    if plain:
        content["text/plain"] = {"schema": {"type": "string"}}
    return {"description": description, "content": content}


def _door_paths() -> dict[str, Any]:
    """The front door: admission, the waiting room's long-poll, health."""
    params = [
        _query("queue", "a queue ticket: this entry again", STR),
        _query("place", "a place token: the first arrival kept", STR),
        _query("pow", "a proof-of-work challenge", STR),
        _query("solution", "its solution", STR),
    ]
    answers = {
        "200": _door_answer(
            "In line (or released), a challenge, wait, or sold out",
            *("Queued", "Challenge", "Wait", "SoldOut"),
            page=True,
        ),
        "302": _door_answer("Go to the shard", "Redirect"),
        "403": _door_answer("Refused, or a wrong solution", "Refused", "Challenge", page=True),
        "404": _door_answer("No such event", "NoEvent", page=True, plain=True),
        "429": _door_answer("Too many admissions or entries", "RateLimited", page=True),
        "503": _door_answer("No shard online", "Wait", page=True),
    }
    event_id = {
        "name": "event_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
    }
    summary = "Admission: a shard (302), a place in the waiting room, or why not"
    return {
        "/": {
            "get": {
                "summary": summary + " (the latest event)",
                "parameters": params,
                "responses": answers,
            }
        },
        "/events/{event_id}": {
            "get": {"summary": summary, "parameters": [event_id, *params], "responses": answers}
        },
        "/events/{event_id}/queue": {
            "get": {
                "summary": "The waiting room's long-poll: answered when released, sold out,"
                " or later with the new position (next_poll_s: when to come back)",
                "parameters": [event_id, _query("queue", "the queue ticket", STR)],
                "responses": {
                    "200": _door_answer("This entry now", "Queued"),
                    "403": _door_answer("Not this visitor's ticket", "Refused"),
                    "404": _door_answer("No such event", "NoEvent", plain=True),
                },
            }
        },
        "/health": {
            "get": {
                "summary": "Up (some shard routable) or down",
                "responses": {
                    "200": _door_answer("Up", "Health"),
                    "503": _door_answer("Down", "Health"),
                },
            }
        },
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
        "title": "ticketing marketplace API and front door",
        "version": "1",
        "description": "Accounts, orders, resale, waiting lists and operator endpoints; the"
        " front door's admission and waiting room (JSON with Accept: application/json)."
        " Errors are {errors: [{message, field?}]}. Identity is the session cookie;"
        " operator endpoints need Authorization: Bearer <TICKETING_OPERATOR_TOKEN>.",
    },
    "servers": [{"url": "/"}],
    "paths": {**_with_edge_errors(_paths()), **_door_paths()},
    "components": {
        "schemas": {**SCHEMAS, **DOOR_SCHEMAS},
        "securitySchemes": {
            "operator": {"type": "http", "scheme": "bearer"},
            "session": {"type": "apiKey", "in": "cookie", "name": COOKIE_NAME},
        },
    },
}


async def handle_openapi(request: web.Request) -> web.Response:
    """``GET /api/v1/openapi.json``."""
    return web.json_response(_SPEC, headers={"Cache-Control": "no-cache"})
