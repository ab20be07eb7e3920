"""The ``ticketing`` command: keys, shard, front, main, redirect, cluster, audit, event, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from .config import add_config_flag, resolve
from .drain import DEFAULT_GRACE, drain_main, drain_shard
from .errors import ConfigError
from .events_cli import add_parser as add_events
from .logs import LOG_FORMATS, setup_logging
from .process import say, stop_signal, tune_gc, wait_for_stop
from .tls import DEFAULT_HOSTS, write_cluster_keys


def _run(coro_fn: Callable[[], Coroutine[Any, Any, int]], use_uvloop: bool = False) -> int:
    if use_uvloop:
        import uvloop

        return uvloop.run(coro_fn())
    return asyncio.run(coro_fn())


# -- keys ---------------------------------------------------------------------


def cmd_keys(args: argparse.Namespace) -> int:
    names = args.shard or [f"shard-{i}" for i in range(1, args.shards + 1)]
    fronts = args.front or [f"front-{i}" for i in range(1, args.fronts + 1)]
    out = write_cluster_keys(args.dir, names, tuple(args.host or DEFAULT_HOSTS), fronts=fronts)
    print(f"wrote the cluster CA, main and {', '.join(names + fronts)} to {out}/")
    return 0


# -- front -------------------------------------------------------------------------

DEFAULT_MAIN = "127.0.0.1:9000"


def _parse_address(spec: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) as (host, port)."""
    host, _, port = spec.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--main: HOST:PORT, not {spec!r}")
    return host.strip("[]"), int(port)


def cmd_front(args: argparse.Namespace) -> int:
    from .front.node import FrontServer

    options = _front_options(args)

    async def run() -> int:
        front = FrontServer(
            args.name,
            mains=[_parse_address(spec) for spec in args.main or [DEFAULT_MAIN]],
            market_url=args.market,
            connect_timeout=args.connect_timeout,
            key_path=Path(args.data) / f"{args.name}.signing.key" if args.data else None,
            **_heartbeats(args),
            **options,
        )
        front.set_certificate_path(args.keys)
        async with front:
            bound = await front.create_server(args.port, args.host)
            stop = stop_signal()
            tune_gc()
            print("READY " + json.dumps({"port": bound}), flush=True)
            await wait_for_stop(stop)
        return 0

    return _run(run, args.uvloop)


# -- shard --------------------------------------------------------------------


def cmd_shard(args: argparse.Namespace) -> int:
    from .shard.server import ClientServer

    async def run() -> int:
        shard = ClientServer(
            args.name,
            data_dir=args.data,
            report_linger=args.report_linger,
            web_limits=_edge_limits(args),
            **_heartbeats(args),
        )
        shard.set_certificate_path(args.keys)
        async with shard:
            tls = await shard.create_client_server(args.tls_port, args.host)
            https = await shard.create_https_server(args.https_port, args.host)
            stop = stop_signal()  # before READY: a SIGTERM right after it is a clean stop
            tune_gc()
            print("READY " + json.dumps({"tls_port": tls, "https_port": https}), flush=True)
            await wait_for_stop(stop)
            await drain_shard(shard, args.drain_timeout)
        return 0

    return _run(run, args.uvloop)


# -- main (+ redirect) ------------------------------------------------------------


def _parse_shard(spec: str) -> tuple[str, int, int]:
    host, tls, https = spec.rsplit(":", 2)
    return host.strip("[]"), int(tls), int(https)


def cmd_main(args: argparse.Namespace) -> int:
    from .front.server import RedirectServer, origin_of
    from .main.server import MainServer

    async def run() -> int:
        main = MainServer(
            data_dir=args.data,
            ledger_url=args.ledger,
            hold_seconds=args.hold_seconds,
            reclaim_after=_reclaim_after(args),
            standby=args.standby,
            **_heartbeats(args),
        )
        main.set_certificate_path(args.keys)
        stop = stop_signal()  # before start(): a standby may wait there a long time
        ready: dict[str, Any] = {}
        if args.front_port is not None:
            # Fronts dial in here. Listening from the start, a standby tells them it
            # does not lead (instead of refusing the connection) until accept() below.
            ready["front_port"] = await main.serve_fronts(args.front_port, args.host, accept=False)
            say(f"front link port: {args.host}:{ready['front_port']}")
            say("LISTENING " + json.dumps(ready))  # for a cluster: its fronts dial this too
        async with main:
            say(f"leading: term {main.term}")
            assert main.ledger
            # The shards given, else every shard the ledger knows (a standby taking
            # over): those are linked without waiting on any that does not answer.
            for host, tls, https in (_parse_shard(spec) for spec in args.shard):
                say(f"linked {await main.connect_client_server(host, tls, https)}")
            if not args.shard:
                for name, up in (await main.adopt_shards()).items():
                    say(f"linked {name}" if up else f"offline {name} (retrying)")
            await _maybe_create_event(main, args)
            async with RedirectServer(main, **_front_options(args)) as redirect:
                port = await redirect.create_server(args.port, args.host)
                main.market_url = origin_of(args.host, port)  # what fronts proxy /app/ to
                if main.fronts is not None:
                    main.fronts.accept()  # leading, shards linked: fronts may route now
                tune_gc()
                say(f"redirect server: https://{args.host}:{port}/")
                say(f"marketplace: https://{args.host}:{port}/app/")
                say("READY " + json.dumps({"port": port, "term": main.term, **ready}))
                deposed = asyncio.ensure_future(main.deposed.wait())
                stopped = asyncio.ensure_future(wait_for_stop(stop))
                await asyncio.wait({deposed, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if main.deposed.is_set():  # a newer term leads: never serve beside it
                    say(f"deposed: term {main.term} is over")
                    return 3
                deposed.cancel()
                await drain_main(main, redirect, args.drain_timeout)
        return 0

    return _run(run)


async def _maybe_create_event(main: Any, args: argparse.Namespace) -> None:
    """Create the demo event on a fresh ledger (a restart keeps the existing one)."""
    if args.tickets and not await main.events():
        event = await main.init_tickets(args.event_name, args.description, args.price, args.tickets)
        say(f"event {event}: {args.tickets} tickets of {args.event_name!r}")
    if main.online_shards():
        given = await main.distribute_tickets()
        if any(given.values()):
            say(f"distributed: {given}")


# -- cluster -----------------------------------------------------------------------


def cmd_cluster(args: argparse.Namespace) -> int:
    from .cluster import LocalCluster, shard_names
    from .ledger import is_postgres

    if args.mains > 1 and not (args.ledger and is_postgres(args.ledger)):
        print("--mains 2 needs a shared ledger: --ledger postgresql://...", file=sys.stderr)
        return 2

    async def run() -> int:
        stop = stop_signal()
        cluster = LocalCluster(
            Path(args.data),
            shard_names(args.shards),
            host=args.host,
            redirect_port=args.port,
            fronts=args.fronts,
            # Standby mains: same ledger, keys and signing key; each front dials them all.
            standbys=args.mains - 1,
            standby_args=[
                *_heartbeat_flags(args),
                *("--hold-seconds", str(args.hold_seconds)),
                *("--reclaim-after", str(args.reclaim_after)),
            ],
            main_options={
                "ledger_url": args.ledger,
                "hold_seconds": args.hold_seconds,
                "reclaim_after": _reclaim_after(args),
                **_heartbeats(args),
            },
            shard_args=_heartbeat_flags(args),
        )
        async with cluster:
            assert cluster.main
            await _maybe_create_event(cluster.main, args)
            tune_gc()
            pids = {"main": os.getpid()}
            for s in cluster.standby_processes:
                pids[s.name] = s.pid
                print(f"  {s.name}: pid {s.pid}, standby (leads when main's lease runs out)")
            for p in cluster.processes:
                pids[p.name] = p.pid
                print(f"  {p.name}: pid {p.pid}, link port {p.tls_port}, https port {p.https_port}")
            for f in cluster.front_processes:
                pids[f.name] = f.pid
                print(f"  {f.name}: pid {f.pid}, https://{args.host}:{f.port}/")
            print(f"\nOpen {cluster.front_url} in a browser to get a ticket.")
            print(f"Accounts, checkout, resale, waiting list: {cluster.front_url}app/")
            print(
                f"(The certificates come from the cluster CA {cluster.keys / 'ca.crt'}:"
                " import it, or accept the warning.)"
            )
            print("Ctrl-C stops the cluster.")
            # For scripts and tests: where browsers go, and every process (to stop by PID
            # what outlives this one, e.g. after a kill -9 of this leader).
            print("READY " + json.dumps({"fronts": cluster.front_urls, "pids": pids}), flush=True)
            await wait_for_stop(stop)
            await drain_main(cluster.main, cluster.redirect, args.drain_timeout)
            audit = await cluster.main.audit()
            print(f"\nstopping; audit: {json.dumps(audit.as_dict())}")
        return 0

    return _run(run)


# -- the ledger ----------------------------------------------------------------------


def _ledger_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ledger",
        metavar="URL",
        help="where main's ledger lives: postgresql://USER@HOST/DB, or sqlite:///PATH"
        " (default: ledger.sqlite3 in --data)",
    )


def cmd_ledger_copy(args: argparse.Namespace) -> int:
    """``ticketing ledger copy --from URL --to URL``: 0 when the audits match."""
    from .ledger import open_ledger
    from .ledger.copy import CopyError, copy_ledger
    from .ledger.driver import redact

    async def run() -> int:
        source = await open_ledger(args.source)
        try:
            target = await open_ledger(args.target)
            try:
                before, after = await copy_ledger(source, target)
            finally:
                await target.close()
        except CopyError as exc:
            print(f"copy refused: {exc}", file=sys.stderr)
            return 1
        finally:
            await source.close()
        print(f"copied {redact(args.source)} -> {redact(args.target)}")
        print(json.dumps({"before": before.as_dict(), "after": after.as_dict()}))
        return 0 if after.exact else 1

    return _run(run)


def cmd_audit(args: argparse.Namespace) -> int:
    from .ledger import is_postgres, open_ledger, sqlite_path

    if not is_postgres(args.ledger) and not sqlite_path(args.ledger).exists():
        print(f"no ledger at {args.ledger}", file=sys.stderr)
        return 2

    async def run() -> int:
        ledger = await open_ledger(args.ledger)
        try:
            audit = await ledger.audit(args.event)
        finally:
            await ledger.close()
        if args.json:
            print(json.dumps(audit.as_dict()))
        else:
            print(f"total      {audit.total}\nunassigned {audit.unassigned}")
            for shard, n in sorted(audit.pools.items()):
                print(f"pool       {n}  ({shard})")
            print(f"held       {audit.held}\nsold       {audit.sold}")
            print("exact" if audit.exact else "NOT EXACT: " + "; ".join(audit.problems))
        return 0 if audit.exact else 1

    return _run(run)


# -- edge limits (front and shard browser ports) ------------------------------------------


def _edge_options(p: argparse.ArgumentParser, defaults: Any) -> None:
    g = p.add_argument_group("browser-facing limits and timeouts")
    g.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help="concurrent browser connections; beyond it a new one is closed before TLS",
    )
    g.add_argument(
        "--max-per-address",
        type=int,
        default=defaults.max_per_address,
        help="concurrent connections from one client address",
    )
    g.add_argument(
        "--handshake-timeout",
        type=float,
        default=defaults.handshake_timeout,
        help="seconds a browser has to finish its TLS handshake",
    )
    g.add_argument(
        "--header-timeout",
        type=float,
        default=defaults.header_timeout,
        help="seconds for a connection's first request headers",
    )


def _edge_limits(args: argparse.Namespace) -> Any:
    from .edge import EdgeLimits

    return EdgeLimits(
        max_connections=args.max_connections,
        max_per_address=args.max_per_address,
        handshake_timeout=args.handshake_timeout,
        header_timeout=args.header_timeout,
    )


def _rate(text: str) -> Any:
    from .ratelimit import Rate

    return None if text == "off" else Rate.parse(text)


def _front_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {"limits": _edge_limits(args), "public_origin": args.public_origin}
    for name in ("admissions_per_address", "admissions_per_visitor"):
        if getattr(args, name) is not None:  # else the RedirectServer default
            opts[name] = _rate(getattr(args, name))
    from .front.queue import QueueOptions

    per_address = args.queue_entries_per_address
    if per_address != "off" and not (per_address.isdigit() and int(per_address) > 0):
        raise SystemExit(f"--queue-entries-per-address: a count or off, not {per_address!r}")
    opts["queue"] = QueueOptions(
        enabled=args.waiting_room == "on",
        entries_per_address=None if per_address == "off" else int(per_address),
        trickle=args.queue_trickle == "on",
    )
    return opts


def _front_parser_options(p: argparse.ArgumentParser) -> None:
    from .edge import FRONT_LIMITS

    _edge_options(p, FRONT_LIMITS)
    g = p.add_argument_group(
        "admission rate limits: BURST/SECONDS (BURST per SECONDS), BURST/SECONDS/COUNT, or off"
    )
    g.add_argument("--admissions-per-address", metavar="RATE", help="default 30/60")
    g.add_argument("--admissions-per-visitor", metavar="RATE", help="default 5/50")
    g = p.add_argument_group("waiting room (front/queue.py)")
    g.add_argument(
        "--waiting-room",
        choices=["on", "off"],
        default="on",
        help="queue visitors beyond what the shards take (default on)",
    )
    g.add_argument(
        "--queue-entries-per-address",
        default="50",
        metavar="N",
        help="live queue entries per client address, or off (default 50)",
    )
    g.add_argument(
        "--queue-trickle",
        choices=["on", "off"],
        default="off",
        help="take new TLS handshakes one at a time while the line covers every ticket left"
        " (default off)",
    )
    p.add_argument(
        "--public-origin",
        help="the front's origin as browsers see it, e.g. https://tickets.example",
    )


# -- parser ----------------------------------------------------------------------------


def _failure_options(p: argparse.ArgumentParser, *, main: bool) -> None:
    from .heartbeat import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT

    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=DEFAULT_HEARTBEAT_INTERVAL,
        help="seconds of quiet before a link sends a heartbeat",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=DEFAULT_HEARTBEAT_TIMEOUT,
        help="seconds of silence after which the peer is gone",
    )
    if main:
        p.add_argument(
            "--reclaim-after",
            type=float,
            default=10.0,
            help="fence a shard unreachable this long (seconds; 0: never)",
        )


def _heartbeats(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "heartbeat_interval": args.heartbeat_interval,
        "heartbeat_timeout": args.heartbeat_timeout,
    }


def _heartbeat_flags(args: argparse.Namespace) -> list[str]:
    """The same heartbeat options for the shard processes a cluster starts."""
    return [
        f"--heartbeat-interval={args.heartbeat_interval}",
        f"--heartbeat-timeout={args.heartbeat_timeout}",
    ]


def _reclaim_after(args: argparse.Namespace) -> float | None:
    return args.reclaim_after or None


def _event_options(p: argparse.ArgumentParser, tickets: int) -> None:
    p.add_argument("--tickets", type=int, default=tickets, help="tickets of the demo event")
    p.add_argument("--event-name", default="Opening night", help="name of the demo event")
    p.add_argument("--description", default="General admission", help="its description")
    p.add_argument("--price", default="25.00", help="its price in currency units")
    p.add_argument(
        "--hold-seconds",
        type=float,
        default=900.0,
        help="how long a granted ticket is held for payment, in seconds",
    )


# Roles whose settings come from --config, TICKETING_* variables and flags.
ROLES: dict[str, argparse.ArgumentParser] = {}


def _role(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """A long-running role's parser with the flags every role shares."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    add_config_flag(p)
    p.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text", help="text lines or one JSON per line"
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="log level (default: warning, or info/debug with -v/-vv)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_GRACE,
        help="seconds to finish queued visitors after SIGTERM before exiting",
    )
    ROLES[name] = p
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticketing", description=__doc__)
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ROLES.clear()

    p = sub.add_parser("keys", help="write a cluster CA and one certificate per node")
    p.add_argument("--dir", default="keys", help="where to write them")
    p.add_argument("--shards", type=int, default=2, help="shard-1..shard-N")
    p.add_argument("--shard", action="append", help="explicit shard names (repeatable)")
    p.add_argument("--fronts", type=int, default=0, help="front-1..front-N (front processes)")
    p.add_argument("--front", action="append", help="explicit front names (repeatable)")
    p.add_argument("--host", action="append", help="host names/IPs in the certificates")
    p.set_defaults(fn=cmd_keys)

    p = _role(sub, "front", "run one front-door process (it dials main's --front-port)")
    p.add_argument("--name", default="front-1", help="this front's name, as in its certificate")
    p.add_argument("--keys", default="keys", help="directory with ca.crt and NAME.crt/.key")
    p.add_argument(
        "--main",
        action="append",
        help="a main's front link port, HOST:PORT; repeat it for every main (leader and"
        f" standbys): the front links to whichever leads (default {DEFAULT_MAIN})",
    )
    p.add_argument(
        "--market",
        help="main's own front (https://HOST:PORT) that serves /app/ and /api/v1"
        " (default: the address the leading main announces)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address browsers reach this front on")
    p.add_argument("--port", type=int, default=8443, help="HTTPS port for browsers")
    p.add_argument(
        "--data",
        help="keep this front's token key in DIR/NAME.signing.key: its queue tickets stay"
        " good across a restart (default: a fresh key per process)",
    )
    p.add_argument("--uvloop", action="store_true", help="run on uvloop (the bench extra)")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds a main has to finish TLS and the hello (the other mains are dialled"
        " meanwhile)",
    )
    _failure_options(p, main=False)
    _front_parser_options(p)
    p.set_defaults(fn=cmd_front)

    p = _role(sub, "shard", "run one shard (client server)")
    p.add_argument("--name", help="this shard's name, as in its certificate (required)")
    p.add_argument("--keys", default="keys", help="directory with ca.crt and NAME.crt/.key")
    p.add_argument("--data", default="data", help="directory for the shard's journal")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--tls-port", type=int, default=9001, help="mutual-TLS port for main")
    p.add_argument("--https-port", type=int, default=9101, help="HTTPS + WSS port for browsers")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop (the bench extra)")
    from .shard.server import DEFAULT_REPORT_LINGER

    p.add_argument(
        "--report-linger",
        type=float,
        default=DEFAULT_REPORT_LINGER,
        help="seconds a report of grants to main waits after the previous one, gathering "
        f"more (bigger batches: less CPU at main per ticket; default {DEFAULT_REPORT_LINGER})",
    )
    _failure_options(p, main=False)
    from .edge import SHARD_LIMITS

    _edge_options(p, SHARD_LIMITS)
    p.set_defaults(fn=cmd_shard)

    for name, help_text in (
        ("main", "run the main server and its redirect server"),
        ("redirect", "alias of main: the redirect server runs in main's process"),
    ):
        p = _role(sub, name, help_text)
        p.add_argument(
            "--shard", action="append", default=[], help="HOST:TLS_PORT:HTTPS_PORT (repeatable)"
        )
        p.add_argument("--keys", default="keys", help="directory with ca.crt and main.crt/.key")
        p.add_argument("--data", default="data", help="directory for the ledger and signing key")
        _ledger_option(p)
        p.add_argument(
            "--standby",
            action="store_true",
            help="wait until the leading main's lease runs out, then lead (PostgreSQL ledger)",
        )
        p.add_argument("--host", default="127.0.0.1", help="address the redirect server binds")
        p.add_argument("--port", type=int, default=8443, help="redirect server HTTPS port")
        p.add_argument(
            "--front-port", type=int, help="mutual-TLS port front processes dial (default: none)"
        )
        _event_options(p, 0)
        _failure_options(p, main=True)
        _front_parser_options(p)
        p.set_defaults(fn=cmd_main)

    p = _role(sub, "cluster", "main + redirect + N shard processes on this machine")
    p.add_argument("--shards", type=int, default=2, help="how many shard processes")
    p.add_argument(
        "--mains",
        type=int,
        default=1,
        help="1 leader + N-1 standby main processes (needs --ledger postgresql://...)",
    )
    p.add_argument("--data", default="data/cluster", help="directory for keys, ledger, journals")
    _ledger_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address every server binds")
    p.add_argument("--port", type=int, default=8443, help="redirect server HTTPS port")
    p.add_argument(
        "--fronts",
        type=int,
        default=0,
        help="front processes (0: the front runs inside main); they get ports --port+1...",
    )
    _event_options(p, 100)
    _failure_options(p, main=True)
    p.set_defaults(fn=cmd_cluster)

    p = sub.add_parser("audit", help="account for every ticket in a ledger")
    p.add_argument(
        "--ledger",
        default="data/cluster/ledger.sqlite3",
        help="the ledger: a SQLite file (sqlite:///PATH or PATH) or postgresql://...",
    )
    p.add_argument("--event", type=int, help="only this event")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_audit)

    p = sub.add_parser("ledger", help="ledger tools: copy a ledger between backends")
    ledger_sub = p.add_subparsers(dest="ledger_command", required=True)
    c = ledger_sub.add_parser("copy", help="copy every row into an empty ledger; audit both")
    c.add_argument("--from", dest="source", required=True, help="source ledger URL or path")
    c.add_argument("--to", dest="target", required=True, help="target ledger URL or path (empty)")
    c.set_defaults(fn=cmd_ledger_copy)

    add_events(sub)

    try:
        from .bench import add_parser as add_bench
    except ImportError:  # the benchmark lands separately
        pass
    else:
        add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    role = ROLES.get(args.command)
    if role is not None:
        try:
            args = resolve(parser, role, argv, args)
        except ConfigError as exc:
            role.error(str(exc))
        if args.command == "shard" and not args.name:
            role.error("a shard needs a name: --name, TICKETING_NAME or name in the config file")
    level = logging.WARNING - 10 * args.verbose
    if getattr(args, "log_level", None):
        level = getattr(logging, args.log_level.upper())
    node = getattr(args, "name", None) if args.command in ("shard", "front") else "main"
    setup_logging(
        getattr(args, "log_format", "text"), level=level, role=args.command, node=node or "-"
    )
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
