"""Bytes moved and time taken to rebuild one peer's slivers, for blobs of 1, 16 and 100 MB.

Run from the repository root::

    .venv/bin/python bench/repair.py                 # 20 peers, n = 20, 1/16/100 MB
    .venv/bin/python bench/repair.py --sizes 1 16    # smaller run
    .venv/bin/python bench/repair.py --peers 10 --shards 10

In-process: all peers are real libp2p hosts on 127.0.0.1 in one trio run (20 processes on a
shared 2-core machine would mostly measure start-up and scheduling). For each size the bench
stores one blob on every peer (the test writer of ``walrus_p2p.testing.healing_grid``), then
makes one peer lose everything of that blob (metadata and slivers; its records stay) and times
blob sync rebuilding it from the other peers' recovery symbols: fetch and verify the metadata,
request, verify and decode ``kp + ks`` symbols per owned sliver pair, store both slivers.

Columns: the blob size; the bytes the rebuilding peer received (symbols with their Merkle
proofs and framing, plus the metadata); the ideal ``(kp + ks) * S`` per owned pair; received as
a fraction of the blob; wall seconds of the rebuild. A whole-blob download would be ~1.0 of the
blob; this peer's share of the stored encoding is ``pairs * (kp + ks) * S``.

The machine is shared: the load average is printed with the figures. Benchmarks print; they
never assert on speed.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import trio

from walrus_p2p.client.network import open_light_peer
from walrus_p2p.node.protocol import owned_pairs
from walrus_p2p.testing.healing_grid import (
    FAST_HEALING,
    honest_encoding,
    open_healing_grid,
    owner_identity,
    write_blob,
)
from walrus_p2p.testing.network import seed_for

MB = 1_000_000


async def run(peers: int, shards: int, sizes: list[int]) -> None:
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    async with open_healing_grid(peers, shards, network="repair-bench") as grid:
        light_seed = seed_for(grid.genesis.network, "bench-light")
        async with open_light_peer(grid.genesis, seed=light_seed) as light:
            print(
                f"{peers} peers, n = {shards}, in-process; "
                "rebuild = one peer's slivers of one blob\n"
            )
            header = (
                f"{'blob':>8} {'pairs':>5} {'received':>12} {'ideal':>12} "
                f"{'recv/blob':>9} {'seconds':>8}"
            )
            print(header)
            print("-" * len(header))
            for size_mb in sizes:
                size = size_mb * MB
                data = random.Random(size_mb).randbytes(size)
                encoded = await trio.to_thread.run_sync(honest_encoding, data, shards)
                del data
                with trio.fail_after(600):
                    written = await write_blob(light, owner_identity(grid), encoded, timeout=300.0)
                del encoded
                blob_id = written.blob_id
                victim = grid.peers[random.Random(size_mb).randrange(peers)]
                store = victim.store
                assert store is not None
                pairs = owned_pairs(grid.genesis.committee, victim.peer_id, blob_id)
                await trio.to_thread.run_sync(store.delete_blob, blob_id)
                healing = victim.healing
                before = healing.metrics.received_total
                started = time.perf_counter()
                with trio.fail_after(600):
                    healing.sync.notice(blob_id, delay=0.0)
                    await healing.sync.wait_idle()
                elapsed = time.perf_counter() - started
                received = healing.metrics.received_total - before
                held = await trio.to_thread.run_sync(store.list_slivers, blob_id)
                if len(held) != 2 * len(pairs):
                    print(f"{size_mb:>5} MB rebuild incomplete: {len(held)} of {2 * len(pairs)}")
                    continue
                config = written.metadata.config
                ideal = len(pairs) * (config.kp + config.ks) * written.metadata.symbol_size
                print(
                    f"{size_mb:>5} MB {len(pairs):>5} {received:>12,} {ideal:>12,} "
                    f"{received / size:>9.3f} {elapsed:>8.2f}"
                )
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        "healing options: extra_fraction="
        f"{FAST_HEALING.extra_fraction} hedge_delay={FAST_HEALING.hedge_delay}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 100], help="MB")
    arguments = parser.parse_args()
    trio.run(run, arguments.peers, arguments.shards, arguments.sizes)


if __name__ == "__main__":
    main()
