"""The main<->shard link over real sockets and real mutual TLS (the project's own keys)."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.helpers import eventually
from ticketing import ClientServer, MainServer, PeerRejected, TicketingError
from ticketing.tls import Credentials, client_context

pytestmark = pytest.mark.timeout(30)

ShardFactory = Callable[..., Awaitable[ClientServer]]
MainFactory = Callable[..., Awaitable[MainServer]]


@pytest.fixture
async def make_shard(keys: Path, tmp_path: Path) -> AsyncIterator[ShardFactory]:
    made: list[ClientServer] = []

    async def factory(
        name: str = "shard-1", *, certs: str | None = None, **opts: Any
    ) -> ClientServer:
        shard = ClientServer(name, data_dir=tmp_path / f"shard{len(made)}", **opts)
        if certs is None:
            shard.set_certificate_path(keys)
        else:  # present another node's certificate
            shard.set_options(
                key=keys / f"{certs}.key", cert=keys / f"{certs}.crt", ca=keys / "ca.crt"
            )
        made.append(shard)
        await shard.create_client_server(0)
        return shard

    yield factory
    for shard in made:
        await shard.close()


@pytest.fixture
async def make_main(keys: Path, tmp_path: Path) -> AsyncIterator[MainFactory]:
    made: list[MainServer] = []

    async def factory(
        name: str = "main", *, cert_dir: Path | None = None, **opts: Any
    ) -> MainServer:
        main = MainServer(name, data_dir=tmp_path / f"main{len(made)}", **opts)
        d = cert_dir or keys
        main.set_options(key=d / f"{name}.key", cert=d / f"{name}.crt", ca=keys / "ca.crt")
        made.append(main)
        await main.start()
        return main

    yield factory
    for main in made:
        await main.close()


async def link(main: MainServer, shard: ClientServer) -> str:
    assert shard.tls_port
    return await main.connect_client_server("127.0.0.1", shard.tls_port, 0)


def logged(caplog: pytest.LogCaptureFixture, logger: str, text: str) -> bool:
    return any(r.name == logger and text in r.getMessage() for r in caplog.records)


# -- links that work -----------------------------------------------------------------


async def test_mutual_tls_link_works_both_ways(
    make_main: MainFactory, make_shard: ShardFactory
) -> None:
    shard = await make_shard("shard-1")
    main = await make_main()
    assert await link(main, shard) == "shard-1"
    sl = main.shards["shard-1"]
    assert sl.online and sl.link is not None and sl.epoch == 1
    assert sl.link.peer.role == "shard" and sl.link.peer.name == "shard-1"
    assert shard.link is not None and shard.link.peer.name == "main"
    assert shard.epoch == 1 and shard.status()["linked"] is True
    # The channel really is TLS 1.3 with a client certificate.
    ssl_object = shard.link.writer.get_extra_info("ssl_object")
    assert ssl_object.version() == "TLSv1.3"
    assert ssl_object.getpeercert()["subject"]
    assert await main.call("shard-1", "ping") == {}


# -- refusals ---------------------------------------------------------------------------


async def test_main_with_a_foreign_certificate_is_refused_by_the_shard(
    make_main: MainFactory,
    make_shard: ShardFactory,
    foreign_keys: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    shard = await make_shard("shard-1")
    # Trusts the real CA (so it accepts the shard) but presents a foreign-CA cert.
    main = await make_main(cert_dir=foreign_keys)
    with pytest.raises((TicketingError, OSError)):  # LinkClosed: the shard hung up
        await link(main, shard)
    await eventually(lambda: logged(caplog, "ticketing.shard", "refused link"), 5)
    assert shard.link is None and shard.epoch == 0
    assert main.shards == {}
    assert main.online_shards() == []


async def test_shard_with_a_foreign_ca_is_refused_by_main(
    make_main: MainFactory, foreign_keys: Path, tmp_path: Path
) -> None:
    shard = ClientServer("shard-1", data_dir=tmp_path / "foreign-shard")
    shard.set_certificate_path(foreign_keys)
    async with shard:
        await shard.create_client_server(0)
        main = await make_main()
        with pytest.raises(ssl.SSLCertVerificationError):
            await link(main, shard)
        assert main.shards == {} and shard.link is None


async def test_client_without_a_certificate_is_refused(
    make_shard: ShardFactory, keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    shard = await make_shard("shard-1")
    ctx = ssl.create_default_context(cafile=str(keys / "ca.crt"))  # no client cert
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", shard.tls_port, ssl=ctx, server_hostname="127.0.0.1"
        )
    except (ssl.SSLError, ConnectionError):
        pass  # refused during the handshake
    else:
        # TLS 1.3: the server checks the client's (missing) certificate after the
        # client has finished, so the refusal shows on the first read.
        writer.write(b'{"id":1,"cmd":"hello","args":{}}\n')
        try:
            data = await asyncio.wait_for(reader.read(1000), 5)
        except (ssl.SSLError, ConnectionError):
            data = b""
        assert data == b""
        writer.close()
    await eventually(lambda: logged(caplog, "ticketing.shard", "refused link"), 5)
    assert shard.link is None


async def test_shard_certificate_presented_as_main_is_refused(
    make_main: MainFactory, make_shard: ShardFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    shard = await make_shard("shard-1")
    impostor = await make_main("shard-2")  # a MainServer holding shard-2's certificate
    with pytest.raises(TicketingError):
        await link(impostor, shard)
    await eventually(
        lambda: logged(caplog, "ticketing.shard", "has role 'shard', expected 'main'"), 5
    )
    assert shard.link is None and shard.epoch == 0
    assert impostor.shards == {}

    # The shard still serves the real main afterwards.
    main = await make_main()
    assert await link(main, shard) == "shard-1"


async def test_main_certificate_presented_as_shard_is_refused(
    make_main: MainFactory, make_shard: ShardFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    impostor = await make_shard("main")  # a ClientServer named "main" with main.crt/main.key
    main = await make_main()
    with pytest.raises(PeerRejected, match="role 'main', expected 'shard'"):
        await link(main, impostor)
    assert logged(caplog, "ticketing.main", "refused shard at")
    assert main.shards == {} and main.online_shards() == []
    assert impostor.link is None


async def test_wrong_shard_name_in_certificate_is_refused(
    make_main: MainFactory, make_shard: ShardFactory
) -> None:
    # A node named shard-3 presenting shard-1's certificate: its hello says "shard-3",
    # the certificate says "shard-1", and main believes neither.
    shard = await make_shard("shard-3", certs="shard-1")
    main = await make_main()
    with pytest.raises(PeerRejected, match="does not match"):
        await link(main, shard)
    assert main.shards == {}


async def test_second_main_is_refused_and_the_first_keeps_working(
    make_main: MainFactory, make_shard: ShardFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    shard = await make_shard("shard-1")
    first = await make_main()
    await link(first, shard)
    first_link = shard.link
    second = await make_main()
    with pytest.raises(PeerRejected, match="already has a main"):
        await link(second, shard)
    assert logged(caplog, "ticketing.shard", "refused a second main link")
    assert second.shards == {}
    assert shard.link is first_link and first_link is not None
    assert not first_link.closed.is_set()
    assert await first.call("shard-1", "status") == shard.status()
    assert first.shards["shard-1"].online


# -- a raw client holding the main certificate ----------------------------------------------


class RawMain:
    """A hand-driven TLS client with main's certificate: writes any bytes it likes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, keys: Path, port: int) -> RawMain:
        ctx = client_context(Credentials.from_directory(keys, "main"))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1", limit=1 << 20
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> dict[str, Any]:
        """Write bytes, return the next line the shard answers."""
        self.writer.write(data)
        await self.writer.drain()
        line = await asyncio.wait_for(self.reader.readline(), 5)
        assert line.endswith(b"\n"), line
        return json.loads(line)

    async def hello(self, rid: int, term: int = 1) -> dict[str, Any]:
        key = Ed25519PrivateKey.generate().public_key()
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        args = {"version": 1, "node": "main", "role": "main", "term": term, "token_key": raw.hex()}
        return await self.send(
            json.dumps({"id": rid, "cmd": "hello", "args": args}).encode() + b"\n"
        )

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


def code(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    return reply["error"]["code"]


async def test_raw_client_gets_error_replies_and_the_shard_keeps_serving(
    make_shard: ShardFactory, make_main: MainFactory, keys: Path
) -> None:
    shard = await make_shard("shard-1", max_line=4096)
    assert shard.tls_port
    raw = await RawMain.connect(keys, shard.tls_port)
    try:
        # Before the hello: malformed lines get error replies, requests hello_required.
        assert code(await raw.send(b"not json\n")) == "bad_json"
        assert code(await raw.send(b"\xff\xfe\n")) == "bad_encoding"
        assert code(await raw.send(b"[1,2]\n")) == "bad_message"
        assert code(await raw.send(b'{"id":"x","cmd":"ping"}\n')) == "bad_request"
        reply = await raw.send(b'{"id":1,"cmd":"ping"}\n')
        assert code(reply) == "hello_required" and reply["id"] == 1
        assert code(await raw.send(b"x" * 10_000 + b"\n")) == "line_too_long"
        assert shard.link is None  # no hello yet: the one-main slot is still free

        # A real main can link meanwhile; the raw client's late hello is then refused.
        main = await make_main()
        await link(main, shard)
        main_link = shard.link
        reply = await raw.hello(2)  # the same term as the live main's: one main at a time
        assert code(reply) == "already_connected" and reply["id"] == 2
        assert shard.link is main_link
        assert await main.call("shard-1", "ping") == {}
    finally:
        await raw.close()

    # Once main is gone, a raw main-certified client may say hello and then misbehave.
    await main.close()
    await shard.changes.wait_for(lambda: shard.link is None, 5)
    raw = await RawMain.connect(keys, shard.tls_port)
    try:
        reply = await raw.hello(1)
        assert reply["ok"] is True and reply["result"]["node"] == "shard-1"
        assert reply["result"]["role"] == "shard"
        assert shard.link is not None and shard.link.peer.name == "main"
        assert code(await raw.send(b"{{{\n")) == "bad_json"
        assert code(await raw.send(b"y" * 5000 + b"\n")) == "line_too_long"
        assert code(await raw.send(b'{"id":2,"cmd":"nope"}\n')) == "unknown_command"
        assert code(await raw.send(b'{"id":3,"cmd":"sync","args":{}}\n')) == "bad_args"
        assert code(await raw.send(b'{"id":4,"cmd":"hello","args":{}}\n')) == "bad_request"
        bad_assign = {"epoch": shard.epoch, "event": 1, "ranges": "x", "info": {}}
        line = json.dumps({"id": 5, "cmd": "assign", "args": bad_assign}).encode() + b"\n"
        assert code(await raw.send(line)) == "bad_args"
        assert shard.dispenser.pools == {}  # nothing changed
        reply = await raw.send(b'{"id":6,"cmd":"status"}\n')
        assert reply == {"id": 6, "ok": True, "result": shard.status()}
        assert shard.link.bad_inputs >= 3
    finally:
        await raw.close()

    # The shard survived all of it: a new main links and gets answers.
    await shard.changes.wait_for(lambda: shard.link is None, 5)
    main2 = await make_main()
    assert await link(main2, shard) == "shard-1"
    assert await main2.call("shard-1", "ping") == {}
