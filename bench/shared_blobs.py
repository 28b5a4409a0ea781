"""Shared blobs on a process devnet: the cost of sharing, funding and asking for an extension,
and of the epoch change that carries the extensions out.

Run from the repository root (nothing else running; it starts ``--peers`` peer processes)::

    .venv/bin/python bench/shared_blobs.py                       # 20 peers, 100 shards, 30 s
    .venv/bin/python bench/shared_blobs.py --peers 4 --shards 8 --epoch-duration 20 --blobs 2

What it does (docs/economics.md, "Shared blobs"): starts the devnet with an economy (real
``walrus-peer run`` processes on 127.0.0.1), stores ``--blobs`` permanent blobs with
``walrus-peer store`` (paid by the devnet wallet), then in this process, one after another for
every blob: shares it (the devnet wallet, the owner), funds it (a second account the devnet
wallet paid), and asks for 2 more epochs (a third account holding no WAL). Each step is one
certified order; for each kind it prints the latency (p50/max) and the network-wide cost per
order (messages and bytes by kind, all TCP writes, peer CPU). Then it waits until the epoch
change carries the extensions out: the seconds from the last request until a light client reads
the new end from the verified chain, the size of that epoch value's settlement next to the one
before (no extensions), and the change's network-wide cost.

Figures depend on the load: the CPU model and the load average are printed with them.
Benchmarks print; they never assert on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from walrus_p2p.client.network import LightPeer, open_light_peer
from walrus_p2p.client.records import fetch_blob_state
from walrus_p2p.client.shared import send_extend_shared, send_fund_shared, send_share
from walrus_p2p.client.wallet import (
    FROST_PER_WAL,
    OrderResult,
    WalletOptions,
    load_wallet,
    send_transfer,
)
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.settlements import settlement_of
from walrus_p2p.devnet import WALLET_NAME
from walrus_p2p.node.config import load_genesis
from walrus_p2p.testing.cost import network_cost, print_cost
from walrus_p2p.testing.processes import (
    CpuMeter,
    Devnet,
    bench_header,
    cli_command,
    load_text,
    running_devnet,
)
from walrus_p2p.types import BlobId, blob_id_from_text

OPTIONS = WalletOptions(request_timeout=20.0, total_timeout=120.0, tail_seconds=5.0)
METER = CpuMeter()
EXTRA_EPOCHS = 2


def store_blobs(devnet: Devnet, count: int) -> list[BlobId]:
    environment = devnet.environment()
    found: list[BlobId] = []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(count):
            path = Path(folder) / f"blob-{index}.bin"
            path.write_bytes(os.urandom(64 * 1024))
            wallet = str(devnet.directory / WALLET_NAME)
            command = ["store", str(path), "--epochs", "4", "--permanent", "--wallet", wallet]
            result = subprocess.run(
                cli_command(*command, "--json"),
                capture_output=True,
                env=environment,
                timeout=180,
                stdin=subprocess.DEVNULL,
                check=True,
            )
            (stored,) = json.loads(result.stdout)
            blob = stored.get("newlyCreated") or stored["alreadyCertified"]
            text = blob["blobObject"]["blobId"] if "blobObject" in blob else blob["blobId"]
            found.append(blob_id_from_text(text))
    return found


async def timed(
    devnet: Devnet, what: str, steps: list[Callable[[], Awaitable[OrderResult]]]
) -> list[OrderResult]:
    before = await trio.to_thread.run_sync(network_cost, devnet, METER)
    latencies: list[float] = []
    results: list[OrderResult] = []
    for step in steps:
        started = time.monotonic()
        results.append(await step())
        latencies.append(time.monotonic() - started)
    await trio.sleep(3.0)  # gossip batches of the last orders
    after = await trio.to_thread.run_sync(network_cost, devnet, METER)
    print(
        f"{what}: p50={statistics.median(latencies) * 1000:.0f} ms "
        f"max={max(latencies) * 1000:.0f} ms (n={len(latencies)})"
    )
    print_cost(before, after, len(steps), what)
    return results


async def run(devnet: Devnet, arguments: argparse.Namespace) -> None:
    genesis = load_genesis(devnet.genesis_path)
    owner = load_wallet(devnet.directory / WALLET_NAME)
    funder = Identity.from_seed(os.urandom(32))
    asker = Identity.from_seed(os.urandom(32))
    blobs = await trio.to_thread.run_sync(store_blobs, devnet, arguments.blobs)
    print(f"stored {len(blobs)} permanent blobs of 64 KiB for 4 epochs")
    async with open_light_peer(genesis) as light:
        await send_transfer(
            light, owner, funder.public_key.raw, 100 * FROST_PER_WAL, options=OPTIONS
        )

        def share(blob: BlobId) -> Callable[[], Awaitable[OrderResult]]:
            return lambda: send_share(light, owner, blob, FROST_PER_WAL, options=OPTIONS)

        shared = await timed(devnet, "share order", [share(blob) for blob in blobs])
        ids = [result.body.resource for result in shared]  # type: ignore[union-attr]

        def fund(shared_id: bytes) -> Callable[[], Awaitable[OrderResult]]:
            return lambda: send_fund_shared(
                light, funder, shared_id, 5 * FROST_PER_WAL, options=OPTIONS
            )

        await timed(devnet, "fund order", [fund(shared_id) for shared_id in ids])

        def ask(shared_id: bytes) -> Callable[[], Awaitable[OrderResult]]:
            return lambda: send_extend_shared(
                light, asker, shared_id, EXTRA_EPOCHS, options=OPTIONS
            )

        asked = await timed(devnet, "extension request", [ask(shared_id) for shared_id in ids])
        asked_at = time.monotonic()
        epoch = int(asked[-1].body.epoch)
        ends = {}
        for blob in blobs:
            state = await fetch_blob_state(light, blob)
            assert state is not None and state.end_epoch is not None
            ends[blob] = state.end_epoch
        before = await trio.to_thread.run_sync(network_cost, devnet, METER)
        deadline = time.monotonic() + 4 * arguments.epoch_duration + 60
        done = False
        while time.monotonic() < deadline and not done:
            await trio.sleep(1.0)
            await refresh(light)
            states = [await fetch_blob_state(light, blob) for blob in blobs]
            done = all(
                s is not None and s.end_epoch == ends[b] + EXTRA_EPOCHS
                for s, b in zip(states, blobs, strict=True)
            )
        waited = time.monotonic() - asked_at
        after = await trio.to_thread.run_sync(network_cost, devnet, METER)
        extended = sum(
            len(found.shared_extensions)
            for record in light.chain
            if (found := settlement_of(record.value)) is not None
        )
        print(
            f"extensions carried out: {extended} of {len(blobs)}; every new end read from the "
            f"chain by a light client: {done}, {waited:.1f} s after the last request "
            f"(asked in epoch {epoch}, now epoch {light.epoch})"
        )
        for record in light.chain[-3:]:
            found = settlement_of(record.value)
            size = len(record.value.settlement or b"")
            count = 0 if found is None else len(found.shared_extensions)
            print(
                f"  epoch value {record.epoch}: settlement {size} bytes, {count} shared extensions"
            )
        print_cost(before, after, 1, "epoch-change window with the extensions (whole wait)")


async def refresh(light: LightPeer) -> None:
    await light.refresh_if_stale(min_interval=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--epoch-duration", type=int, default=30)
    parser.add_argument("--blobs", type=int, default=5)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    arguments = parser.parse_args()
    print(bench_header("bench/shared_blobs.py"))
    print(
        f"peers={arguments.peers} shards={arguments.shards} "
        f"epoch_duration={arguments.epoch_duration} blobs={arguments.blobs}"
    )
    with running_devnet(
        "walrus-shared-",
        arguments.peers,
        arguments.shards,
        ready_timeout=arguments.ready_timeout,
        economy=True,
        epoch_duration=arguments.epoch_duration,
    ) as devnet:
        trio.run(run, devnet, arguments)
    print(f"load after: {load_text()}")


if __name__ == "__main__":
    main()
