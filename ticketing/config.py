"""Settings for every role from a TOML file, the environment and flags, in that order.

``ticketing shard --config shard.toml`` reads top-level keys named like the role's
flags (``tls-port = 9001`` or ``tls_port = 9001``); ``TICKETING_TLS_PORT=9002``
overrides the file, and ``--tls-port 9003`` overrides both. The role's argparse
parser is the one schema: a key that is not one of its flags is refused, and so is
a value of the wrong type or outside its choices, with a message naming the key
and where it came from. Examples: ``examples/*.toml``.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "TICKETING_"
# Dests that are not settings.
NOT_SETTINGS = {"help", "config", "fn", "command", "action"}
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def settings(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The role's settings: ``{dest: action}`` for every flag but help and --config."""
    return {
        a.dest: a
        for a in parser._actions  # argparse has no public list of a parser's actions
        if a.dest not in NOT_SETTINGS and a.option_strings
    }


def _flag(action: argparse.Action) -> str:
    return action.option_strings[-1].lstrip("-")


def _convert(action: argparse.Action, value: Any, where: str, from_text: bool) -> Any:
    """Check (TOML) or parse (environment text) one value against its flag."""
    name = _flag(action)
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if from_text and isinstance(value, str) and value.lower() in TRUE | FALSE:
            return value.lower() in TRUE
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {name} must be true or false, not {value!r}")
    if isinstance(action, argparse._AppendAction):
        items = value.split(",") if from_text and isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(f"{where}: {name} must be a list, not {value!r}")
        return [_scalar(action, v, where, name, from_text) for v in items]
    if isinstance(action, argparse._CountAction):
        return _scalar(action, value, where, name, from_text, int)
    return _scalar(action, value, where, name, from_text)


def _scalar(
    action: argparse.Action,
    value: Any,
    where: str,
    name: str,
    from_text: bool,
    kind: Any = None,
) -> Any:
    kind = kind or action.type or str
    if from_text:
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: {name} must be {_kind_name(kind)}, not {value!r}"
            ) from None
    elif kind is int and (type(value) is not int):
        raise ConfigError(f"{where}: {name} must be a whole number, not {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {name} must be a number, not {value!r}")
        value = float(value)
    elif kind is str and not isinstance(value, str):
        raise ConfigError(f"{where}: {name} must be a string, not {value!r}")
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where}: {name} must be one of {choices}, not {value!r}")
    return value


def _kind_name(kind: Any) -> str:
    return {int: "a whole number", float: "a number"}.get(kind, "a string")


def from_file(path: str | os.PathLike[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The settings a TOML file gives, checked against the role's flags."""
    where = f"config file {path}"
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    known = settings(parser)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        dest = key.replace("-", "_")
        action = known.get(dest)
        if action is None:
            names = ", ".join(sorted(_flag(a) for a in known.values()))
            raise ConfigError(f"{where}: unknown key {key!r} for `{parser.prog}` (known: {names})")
        out[dest] = _convert(action, value, where, from_text=False)
    return out


def from_env(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from ``TICKETING_<FLAG>`` variables (``--tls-port`` -> TICKETING_TLS_PORT)."""
    out: dict[str, Any] = {}
    for dest, action in settings(parser).items():
        var = ENV_PREFIX + dest.upper()
        if var in environ:
            out[dest] = _convert(action, environ[var], f"environment {var}", from_text=True)
    return out


def resolve(
    root: argparse.ArgumentParser,
    role: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    args: argparse.Namespace,
    environ: Mapping[str, str] = os.environ,
) -> argparse.Namespace:
    """Re-parse ``argv`` with file and environment values as the role's defaults."""
    values = from_file(args.config, role) if getattr(args, "config", None) else {}
    values.update(from_env(role, environ))
    if not values:
        return args
    role.set_defaults(**values)
    return root.parse_args(argv)


def add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML file of this role's settings (keys named like the flags; "
        f"{ENV_PREFIX}<FLAG> variables and flags override it)",
    )
