"""Settings from TOML files, TICKETING_* variables and flags; every flag has help text."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ticketing.cli import ROLES, build_parser
from ticketing.config import from_file, resolve
from ticketing.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def parse(argv: list[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    return resolve(parser, ROLES[args.command], argv, args, environ or {})


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    conf = tmp_path / "shard.toml"
    conf.write_text('name = "shard-7"\ntls-port = 9001\nhttps_port = 9101\nuvloop = true\n')
    args = parse(["shard", "--config", str(conf)])
    assert (args.name, args.tls_port, args.https_port, args.uvloop) == ("shard-7", 9001, 9101, True)
    env = {"TICKETING_TLS_PORT": "9002", "TICKETING_UVLOOP": "false"}
    args = parse(["shard", "--config", str(conf)], env)
    assert (args.tls_port, args.uvloop) == (9002, False)
    args = parse(["shard", "--config", str(conf), "--tls-port", "9003"], env)
    assert (args.name, args.tls_port) == ("shard-7", 9003)


def test_lists_and_floats(tmp_path: Path) -> None:
    conf = tmp_path / "main.toml"
    conf.write_text('shard = ["127.0.0.1:1:2"]\nhold-seconds = 60\nlog-format = "json"\n')
    args = parse(["main", "--config", str(conf)])
    assert args.shard == ["127.0.0.1:1:2"] and args.hold_seconds == 60.0
    assert args.log_format == "json"


@pytest.mark.parametrize(
    "text, message",
    [
        ("tls-prot = 9001\n", "unknown key 'tls-prot'"),
        ('tls-port = "9001"\n', "tls-port must be a whole number"),
        ("uvloop = 1\n", "uvloop must be true or false"),
        ('log-format = "xml"\n', "log-format must be one of text, json"),
        ("hold-seconds = true\n", None),  # not a shard key: unknown
        ("name = \n", "not valid TOML"),
    ],
)
def test_bad_files_are_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError) as err:
        build_parser()
        from_file(conf, ROLES["shard"])
    assert str(conf) in str(err.value)
    assert (message or "unknown key 'hold-seconds'") in str(err.value)


def test_bad_environment_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="TICKETING_HTTPS_PORT: https-port must be a whole"):
        parse(["shard", "--name", "s"], {"TICKETING_HTTPS_PORT": "many"})


def test_every_example_is_valid_for_its_role() -> None:
    build_parser()
    for role in ("shard", "front", "main", "cluster"):
        values = from_file(EXAMPLES / f"{role}.toml", ROLES[role])
        assert values, role
    assert from_file(EXAMPLES / "shard.toml", ROLES["shard"])["name"] == "shard-1"
    assert from_file(EXAMPLES / "front.toml", ROLES["front"])["main"] == ["127.0.0.1:9000"]
    # Every role's example is tested (a new role needs one).
    assert {p.stem for p in EXAMPLES.glob("*.toml")} == {"shard", "front", "main", "cluster"}


def test_every_flag_has_help_text() -> None:
    missing = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, f"{path} {name}")
            elif a.option_strings and not a.help:
                missing.append(f"{path} {a.option_strings[-1]}")

    walk(build_parser(), "ticketing")
    assert missing == []
    assert {"shard", "main", "redirect", "cluster"} <= set(ROLES)
