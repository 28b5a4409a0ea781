"""Where the time of a small store goes, step by step, on a process devnet.

Run from the repository root (nothing else running; it starts ``--peers`` peer processes)::

    .venv/bin/python bench/store_phases.py                       # 20 peers, 100 shards, 1 KiB
    .venv/bin/python bench/store_phases.py --size 1048576 --stores 10

``--stores`` blobs of ``--size`` random bytes are stored one after another through the library
(``WalrusClient.store``: what ``walrus-peer store``, the agent and the gateway run, without
HTTP or process start-up), and each ``StoredBlob.phases`` is collected: ``encode`` (erasure
coding and metadata, in a worker thread), ``state`` (asking members whether the blob is already
known), ``pay`` (with an economy), ``upload`` (records, metadata and slivers, until the
confirmations hold a quorum of shards) and ``certify`` (the certificate to a quorum). Printed:
p50/p95 of each step and of the whole store, with the CPU model and the load. Benchmarks print;
they never assert on speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import trio

from walrus_p2p.client.results import StoredBlob
from walrus_p2p.client.service import open_client
from walrus_p2p.devnet import CLIENT_KEY_DIR
from walrus_p2p.node.config import ensure_identity, load_genesis
from walrus_p2p.testing.processes import Devnet, bench_header, load_text, running_devnet


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


async def run(devnet: Devnet, arguments: argparse.Namespace) -> None:
    genesis = load_genesis(devnet.genesis_path)
    owner, _ = ensure_identity(devnet.directory / CLIENT_KEY_DIR)
    phases: dict[str, list[float]] = {}
    totals: list[float] = []
    async with open_client(genesis, owner) as client:
        await client.store(os.urandom(arguments.size), epochs=2, permanent=False)  # warm-up
        for _ in range(arguments.stores):
            started = time.perf_counter()
            outcome = await client.store(os.urandom(arguments.size), epochs=2, permanent=False)
            totals.append(time.perf_counter() - started)
            assert isinstance(outcome, StoredBlob)
            for name, seconds in outcome.phases:
                phases.setdefault(name, []).append(seconds)
    for name, values in [*phases.items(), ("whole store", totals)]:
        print(
            f"  {name:<12} p50 {statistics.median(values) * 1000:7.1f} ms   "
            f"p95 {p95(values) * 1000:7.1f} ms   (n={len(values)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--stores", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024, metavar="BYTES")
    parser.add_argument("--economy", action="store_true", help="a genesis with an economy")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    arguments = parser.parse_args()
    print(bench_header("bench/store_phases.py"))
    print(
        f"peers={arguments.peers} shards={arguments.shards} stores={arguments.stores} "
        f"size={arguments.size} economy={arguments.economy}"
    )
    with running_devnet(
        "walrus-phases-",
        arguments.peers,
        arguments.shards,
        ready_timeout=arguments.ready_timeout,
        economy=arguments.economy,
    ) as devnet:
        trio.run(run, devnet, arguments)
    print(f"load after: {load_text()}")


if __name__ == "__main__":
    main()
