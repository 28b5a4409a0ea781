"""Quilts against one blob per file on a process devnet: the time and network-wide cost of
storing the same small files both ways, and of reading one file from the quilt against reading
the whole quilt (docs/quilts.md, "Figures").

Run from the repository root (nothing else running; it starts ``--peers`` peer processes)::

    .venv/bin/python bench/quilts.py                           # 20 peers, 100 shards, 100 x 4 KiB
    .venv/bin/python bench/quilts.py --peers 4 --shards 8 --files 10   # smoke

Through the library (``WalrusClient``: what the commands, the agent and the gateway run, without
process start-up): ``--files`` random files of ``--size`` bytes are stored as one quilt
(``store_quilt``), then the same number of other random files one by one (``store``); then
``--reads`` times one file of the quilt is read by its patch id (``read_patch``) and the whole
quilt is read (``read``). For each: wall time, and messages, bytes and peer CPU network-wide
(every peer's counters and this process's). Storage used is the encoded size the network keeps.
Figures depend on the load: the CPU model and the load average are printed with them.
Benchmarks print; they never assert on speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import trio

from walrus_p2p.client.quilt import QuiltFile, read_patch, store_quilt
from walrus_p2p.client.service import open_client
from walrus_p2p.core.encoding import EncodingConfig
from walrus_p2p.devnet import CLIENT_KEY_DIR
from walrus_p2p.node.config import ensure_identity, load_genesis
from walrus_p2p.testing.cost import CostSample, network_cost, print_cost
from walrus_p2p.testing.processes import CpuMeter, Devnet, bench_header, load_text, running_devnet

METER = CpuMeter()
SETTLE_SECONDS = 4.0
"""Longer than a records gossip batch (2 s): the cost of a store includes its announcement."""


async def sample(devnet: Devnet) -> CostSample:
    return await trio.to_thread.run_sync(network_cost, devnet, METER)


async def run(devnet: Devnet, arguments: argparse.Namespace) -> None:
    genesis = load_genesis(devnet.genesis_path)
    owner, _ = ensure_identity(devnet.directory / CLIENT_KEY_DIR)
    config = EncodingConfig.for_shards(genesis.n_shards)
    count, size = arguments.files, arguments.size
    async with open_client(genesis, owner) as client:
        await client.store(os.urandom(1024), epochs=1, permanent=False)  # warm-up

        files = [QuiltFile(f"file-{index:04d}.bin", os.urandom(size)) for index in range(count)]
        before = await sample(devnet)
        started = time.perf_counter()
        stored = await store_quilt(client, files, epochs=1, permanent=False)
        quilt_seconds = time.perf_counter() - started
        await trio.sleep(SETTLE_SECONDS)
        after = await sample(devnet)
        quilt_bytes = sum(entry.length for entry in stored.patches)
        print(
            f"store-quilt of {count} x {size} B: {quilt_seconds:.2f} s; the network keeps "
            f"{config.encoded_length(quilt_bytes) / 2**20:.1f} MiB encoded"
        )
        print_cost(before, after, 1, "quilt store")

        before = await sample(devnet)
        started = time.perf_counter()
        for _ in range(count):
            await client.store(os.urandom(size), epochs=1, permanent=False)
        single_seconds = time.perf_counter() - started
        await trio.sleep(SETTLE_SECONDS)
        after = await sample(devnet)
        print(
            f"{count} stores of {size} B one by one: {single_seconds:.2f} s "
            f"({single_seconds / quilt_seconds:.1f}x the quilt); the network keeps "
            f"{count * config.encoded_length(size) / 2**20:.1f} MiB encoded"
        )
        print_cost(before, after, 1, f"{count} single stores")

        patch_id = stored.patches[count // 2].patch_id(stored.quilt_id)
        one: list[float] = []
        before = await sample(devnet)
        for _ in range(arguments.reads):
            started = time.perf_counter()
            patch = await read_patch(client, patch_id)
            one.append(time.perf_counter() - started)
            assert patch.data == files[count // 2].data
        after = await sample(devnet)
        print(f"read one file of the quilt by patch id: p50 {statistics.median(one) * 1000:.0f} ms")
        print_cost(before, after, arguments.reads, "file read")

        whole: list[float] = []
        before = await sample(devnet)
        for _ in range(arguments.reads):
            started = time.perf_counter()
            await client.read(stored.quilt_id)
            whole.append(time.perf_counter() - started)
        after = await sample(devnet)
        print(f"read the whole quilt: p50 {statistics.median(whole) * 1000:.0f} ms")
        print_cost(before, after, arguments.reads, "whole-quilt read")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--size", type=int, default=4096, metavar="BYTES")
    parser.add_argument("--reads", type=int, default=10)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    arguments = parser.parse_args()
    print(bench_header("bench/quilts.py"))
    print(
        f"peers={arguments.peers} shards={arguments.shards} files={arguments.files} "
        f"size={arguments.size} reads={arguments.reads}"
    )
    with running_devnet(
        "walrus-quilts-",
        arguments.peers,
        arguments.shards,
        ready_timeout=arguments.ready_timeout,
    ) as devnet:
        trio.run(run, devnet, arguments)
    print(f"load after: {load_text()}")


if __name__ == "__main__":
    main()
