"""The operator's credential: where it is configured and how a request proves it.

One bearer token guards the admin API, ``/metrics`` on every port and the events
CLI: ``TICKETING_OPERATOR_TOKEN``, or the contents of the file named by
``TICKETING_OPERATOR_TOKEN_FILE`` (16+ characters). With neither set, operator
endpoints are disabled (403) rather than open.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from .errors import ConfigError

OPERATOR_ENV = "TICKETING_OPERATOR_TOKEN"
OPERATOR_FILE_ENV = "TICKETING_OPERATOR_TOKEN_FILE"
MIN_OPERATOR_TOKEN = 16


def operator_token_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """The configured operator credential, or None (operator endpoints disabled)."""
    token = environ.get(OPERATOR_ENV) or None
    path = environ.get(OPERATOR_FILE_ENV)
    if token is None and path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError(f"cannot read {OPERATOR_FILE_ENV}={path}: {exc}") from exc
    if token is not None and len(token) < MIN_OPERATOR_TOKEN:
        raise ConfigError(f"the operator token must be at least {MIN_OPERATOR_TOKEN} characters")
    return token


def authorized(header: str | None, token: str | None) -> bool:
    """True when ``Authorization: Bearer <token>`` matches (constant time); False if unset."""
    if not token or not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
