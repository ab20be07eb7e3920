"""The original README's example in Python: a main server and two shards in one script.

    python examples/quickstart.py

Generates throw-away cluster keys, starts two shards (link port + HTTPS port each),
links main to both, creates an event of 10 tickets, splits it and prints what each
shard holds, then the audit.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from ticketing import ClientServer, MainServer, write_cluster_keys


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        keys = write_cluster_keys(Path(tmp) / "keys", ["shard-1", "shard-2"])
        shards = []
        for name in ("shard-1", "shard-2"):
            shard = ClientServer(name, data_dir=Path(tmp) / "data")
            shard.set_certificate_path(keys)
            await shard.create_client_server(0)  # TLS port for main (0 = any free port)
            await shard.create_https_server(0)  # HTTPS/WSS port for browsers
            shards.append(shard)

        main_server = MainServer(data_dir=Path(tmp) / "data")
        main_server.set_certificate_path(keys)
        for shard in shards:
            await main_server.connect_client_server("127.0.0.1", shard.tls_port, shard.https_port)

        event_id = await main_server.init_tickets("ticket name", "ticket description", 25, 10)
        given = await main_server.distribute_tickets()
        print(f"event {event_id}: 10 tickets split as {given}")
        for shard in shards:
            pools = {e: p.ranges() for e, p in shard.dispenser.pools.items()}
            print(f"  {shard.name} holds serials {pools} (https port {shard.https_port})")
        audit = await main_server.audit()
        print(
            f"audit: total={audit.total} unassigned={audit.unassigned} pools={audit.pools} "
            f"held={audit.held} sold={audit.sold} exact={audit.exact}"
        )

        await main_server.close()
        for shard in shards:
            await shard.close()


if __name__ == "__main__":
    asyncio.run(main())
