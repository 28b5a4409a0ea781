"""Blob attributes on a process devnet: latency of a set and a get, and the network-wide cost of
one set (docs/attributes.md, "Cost").

Run from the repository root (nothing else running; it starts ``--peers`` peer processes)::

    .venv/bin/python bench/attributes.py                       # 20 peers, 100 shards
    .venv/bin/python bench/attributes.py --peers 4 --shards 8 --updates 5   # smoke

One 1 KiB blob is stored, then ``--updates`` attribute sets are made one after another through
the library (``WalrusClient.update_attributes``: what ``walrus-peer set-blob-attribute``, the
agent and the gateway's process run, without process start-up), each changing two values, and
each followed by a read of the attributes (``blob_attributes``). Printed: p50/p95 latency of
both, then messages and bytes by kind, transport bytes and peer CPU per set, network-wide
(every peer's counters and this process's), after the gossip batches of the last set; then the
same counters over an equally long idle period, which is what the network spends anyway
(subtract it). Finally
every member is asked for the blob's records, to show they all hold the last set and only it.
Figures depend on the load: the CPU model and the load average are printed with them.
Benchmarks print; they never assert on speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import trio

from walrus_p2p.client.results import StoredBlob
from walrus_p2p.client.service import open_client
from walrus_p2p.core import records
from walrus_p2p.core.blob_messages import (
    GetBlobRecordsReply,
    GetBlobRecordsRequest,
    decode_records,
)
from walrus_p2p.devnet import CLIENT_KEY_DIR
from walrus_p2p.errors import WalrusError
from walrus_p2p.node.config import ensure_identity, load_genesis
from walrus_p2p.testing.cost import network_cost, print_cost
from walrus_p2p.testing.processes import CpuMeter, Devnet, bench_header, load_text, running_devnet

METER = CpuMeter()
GOSSIP_SETTLE_SECONDS = 4.0
"""Longer than a records gossip batch (2 s) and its relays."""


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (
        f"p50 {statistics.median(values) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms (n={len(values)})"
    )


async def run(devnet: Devnet, arguments: argparse.Namespace) -> None:
    genesis = load_genesis(devnet.genesis_path)
    owner, _ = ensure_identity(devnet.directory / CLIENT_KEY_DIR)
    sets: list[float] = []
    gets: list[float] = []
    async with open_client(genesis, owner) as client:
        outcome = await client.store(os.urandom(1024), epochs=2, permanent=False)
        assert isinstance(outcome, StoredBlob)
        blob_id = outcome.blob_id
        await client.update_attributes(blob_id, set_pairs={"content-type": "text/plain"})
        await trio.sleep(GOSSIP_SETTLE_SECONDS)
        before = await trio.to_thread.run_sync(network_cost, devnet, METER)
        started_all = time.perf_counter()
        for update in range(arguments.updates):
            started = time.perf_counter()
            await client.update_attributes(
                blob_id, set_pairs={"app-version": str(update), "content-language": "en"}
            )
            sets.append(time.perf_counter() - started)
            started = time.perf_counter()
            state = await client.blob_attributes(blob_id)
            gets.append(time.perf_counter() - started)
            if state.effective_attributes.get("app-version") != str(update):
                print(f"  read after set {update} saw {state.effective_attributes}")
        await trio.sleep(GOSSIP_SETTLE_SECONDS)
        after = await trio.to_thread.run_sync(network_cost, devnet, METER)
        window = time.perf_counter() - started_all
        # The same time with nothing asked: what the idle network (heartbeats, candidacies,
        # health) costs anyway, to subtract from the figures above.
        await trio.sleep(window)
        idle = await trio.to_thread.run_sync(network_cost, devnet, METER)
        print(f"set-blob-attribute: {summary(sets)}")
        print(f"get-blob-attribute: {summary(gets)}")
        print_cost(before, after, arguments.updates, "attribute set")
        print(f"the idle network over the same {window:.1f} s, per attribute set's share:")
        print_cost(after, idle, arguments.updates, "attribute set")

        kept: dict[str, int] = {}
        for member in client.light.committee.peer_ids:
            try:
                reply = await client.light.call(
                    member, GetBlobRecordsRequest(blob_id=blob_id), GetBlobRecordsReply, timeout=10
                )
            except WalrusError as error:
                kept[error.reason] = kept.get(error.reason, 0) + 1
                continue
            attributes = [
                record
                for record in decode_records(reply.records, blob_id)
                if isinstance(record, records.BlobAttribute)
            ]
            versions = ",".join(str(record.body.version) for record in attributes) or "none"
            kept[versions] = kept.get(versions, 0) + 1
        print(
            f"attribute record versions kept per member (versions: members): {kept}; "
            f"expected {arguments.updates} (one record)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    arguments = parser.parse_args()
    print(bench_header("bench/attributes.py"))
    print(f"peers={arguments.peers} shards={arguments.shards} updates={arguments.updates}")
    with running_devnet(
        "walrus-attributes-",
        arguments.peers,
        arguments.shards,
        ready_timeout=arguments.ready_timeout,
    ) as devnet:
        trio.run(run, devnet, arguments)
    print(f"load after: {load_text()}")


if __name__ == "__main__":
    main()
