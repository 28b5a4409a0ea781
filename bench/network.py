"""Store/read throughput, small-read latency, peer memory and repair traffic on real processes.

Run from the repository root (the machine should be otherwise quiet; the load average is
printed with every figure)::

    .venv/bin/python bench/network.py                         # 20 peers, n = 20, 1/16/100 MiB
    .venv/bin/python bench/network.py --shards 100            # the same 20 peers, n = 100
    .venv/bin/python bench/network.py --tahoe-csv /tmp/tahoe/grid.XXXX/results.csv

What it does: makes a devnet directory (``walrus_p2p.devnet.prepare``: keys, configs, genesis),
starts one ``walrus-peer run`` process per peer on 127.0.0.1 (each with a Prometheus port),
waits until every peer answers, and drives the network from this process through the client
library (``open_client``; the encode and decode run here, as in ``walrus-peer store``/``read``
minus the interpreter start-up):

1. throughput: for each size, ``--reps`` fresh random blobs are stored and read back (checked
   byte for byte); medians of the wall times. A store is timed twice: until *certified* (when
   ``store`` returns) and until *placed* (when its tail to the last peers has ended too, as when
   a ``walrus-peer store`` process exits; Tahoe's ``put`` at happy = 20 likewise returns once
   every share is placed). The read follows *placed* (after ``--settle`` seconds);
2. small reads: one 1 KiB blob read ``--small-reads`` times in a row; p50/p95 latency;
3. memory: peak RSS (VmHWM in /proc) of every peer process after 1 and 2;
4. repair: one peer is SIGKILLed, a blob is stored while it is down, the peer restarts, and the
   bench waits until the peer holds its slivers again (catch-up, then blob sync from recovery
   symbols); the bytes it received for that come from its own /metrics
   (``walrus_recovery_bytes_received_total``) against the ideal ``pairs * (kp + ks) * S``.

With ``--tahoe-csv`` (the ``results.csv`` of a 20-node Tahoe-LAFS grid benchmark,
``tahoe_grid_bench.sh``, a script that is not part of this repository, run with
``FORCE_FOOLSCAP=true CONFIGS=7:20:20 SIZES="1 16 100"``; the CSV survives its teardown) it
prints the Tahoe-LAFS medians and the ratio next to ours. Tahoe's times are wall
times of the ``tahoe put``/``get`` CLI, which include 0.5-1 s of interpreter start-up; ours are
library calls. MB here = MiB, as there. Every process this bench starts is killed (process
group) when it ends, whatever happens. Benchmarks print; they never assert on speed.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import random
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from walrus_p2p.client.network import open_light_peer
from walrus_p2p.client.service import WalrusClient, open_client
from walrus_p2p.core import wire
from walrus_p2p.core.encoding import EncodingConfig, shard_to_pair
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.devnet import DevnetOptions, peer_dir, prepare
from walrus_p2p.node.config import ensure_identity, load_identity
from walrus_p2p.testing.processes import PeerProcess, free_tcp_port, wait_until_answering
from walrus_p2p.types import BlobId, PeerId

MIB = 1024 * 1024
KIB = 1024
READY_TIMEOUT = 300.0
OPERATION_TIMEOUT = 600.0
REPAIR_TIMEOUT = 300.0
_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([^ ]+)$")


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


async def wait_for_quiet(max_load: float, timeout: float) -> None:
    """Wait (bounded) until the 1-minute load average is at most ``max_load``; the client's
    connections stay served meanwhile."""
    deadline = time.monotonic() + timeout
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        await trio.sleep(5.0)
    quiet = os.getloadavg()[0] <= max_load
    print(f"load average {load()} ({'quiet' if quiet else 'NOT quiet: figures are skewed'})")


def proc_status(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status, in bytes (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics_of(port: int) -> dict[str, float]:
    reply = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10.0)
    reply.raise_for_status()
    values: dict[str, float] = {}
    for line in reply.text.splitlines():
        match = _METRIC.match(line.strip())
        if match:
            values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return values


@dataclass
class Peer:
    index: int
    peer_id: PeerId
    shards: tuple[int, ...]
    metrics_port: int
    process: PeerProcess


@dataclass
class Bench:
    directory: Path
    genesis: Genesis
    peers: list[Peer] = field(default_factory=list)

    def start(self, peer: Peer) -> None:
        environment = {"WALRUS_FAULT_INJECTION": ""}
        peer.process.start(environment)

    def kill_all(self) -> None:
        for peer in self.peers:
            if peer.process.process is not None:
                with suppress(Exception):
                    peer.process.kill()  # SIGKILL to its process group, then reaped


@contextmanager
def running_network(directory: Path, peers: int, shards: int) -> Iterator[Bench]:
    genesis = prepare(
        DevnetOptions(directory=directory, peers=peers, shards=shards, capacity_bytes=20 << 30)
    )
    bench = Bench(directory, genesis)
    for index in range(1, peers + 1):
        data_dir = peer_dir(directory, index)
        peer_id = PeerId(load_identity(data_dir).peer_id)
        port = free_tcp_port()
        process = PeerProcess(data_dir, ("--metrics", f"127.0.0.1:{port}"))
        bench.peers.append(
            Peer(index, peer_id, genesis.committee.shards_of(peer_id), port, process)
        )
    try:
        for peer in bench.peers:
            bench.start(peer)
        yield bench
    finally:
        bench.kill_all()


async def wait_all_answering(bench: Bench, peers: list[Peer]) -> float:
    started = time.monotonic()
    async with (
        open_light_peer(bench.genesis, verify_chain=False) as light,
        trio.open_nursery() as nursery,
    ):

        async def wait_one(peer: Peer) -> None:
            await wait_until_answering(
                light, peer.peer_id, timeout=READY_TIMEOUT, process=peer.process
            )

        for peer in peers:
            nursery.start_soon(wait_one, peer)
    return time.monotonic() - started


def median(values: list[float]) -> float:
    return statistics.median(values)


async def throughput(
    client: WalrusClient, sizes: list[int], reps: int, settle: float = 0.0
) -> dict[int, tuple[float, float, float]]:
    """size MiB -> (median seconds until certified, until placed, read seconds).

    Each store runs in a client whose background nursery is its own, so that both moments are
    seen: *certified* is when ``store`` returns (a quorum of shards confirmed and the
    certificate is out); *placed* is when the store's tail (the uploads to the peers that had
    not confirmed by then, at most ``StoreOptions.tail_seconds``) has ended too: when a
    ``walrus-peer store`` process exits, and what Tahoe's ``put`` with happy = 20 waits for.
    The read starts ``settle`` seconds after *placed*."""
    results: dict[int, tuple[float, float, float]] = {}
    for size_mib in sizes:
        certified_times: list[float] = []
        placed_times: list[float] = []
        reads: list[float] = []
        for rep in range(reps):
            data = random.randbytes(size_mib * MIB)
            with trio.fail_after(OPERATION_TIMEOUT):
                started = time.perf_counter()
                async with trio.open_nursery() as tails:
                    storing = WalrusClient(
                        client.light,
                        client.owner,
                        store_options=client.store_options,
                        background=tails,
                    )
                    outcome = await storing.store(data, epochs=1, permanent=False)
                    certified = time.perf_counter() - started
                placed = time.perf_counter() - started
                await trio.sleep(settle)
                started = time.perf_counter()
                back = await client.read(outcome.blob_id)
                read = time.perf_counter() - started
            if back != data:
                raise SystemExit(f"{size_mib} MiB blob read back DIFFERENT")
            del back, data
            certified_times.append(certified)
            placed_times.append(placed)
            reads.append(read)
            print(
                f"  {size_mib:>4} MiB rep {rep + 1}: store certified {certified:6.2f}s "
                f"({size_mib / certified:6.1f} MB/s), placed {placed:6.2f}s "
                f"({size_mib / placed:6.1f} MB/s)  read {read:6.2f}s "
                f"({size_mib / read:6.1f} MB/s)  identical  [load {os.getloadavg()[0]:.2f}]",
                flush=True,
            )
        results[size_mib] = (median(certified_times), median(placed_times), median(reads))
    return results


async def small_reads(client: WalrusClient, count: int) -> tuple[float, float, float]:
    data = random.randbytes(KIB)
    outcome = await client.store(data, epochs=1, permanent=False)
    await client.read(outcome.blob_id)  # warm connections
    latencies = []
    for _ in range(count):
        with trio.fail_after(60):
            started = time.perf_counter()
            back = await client.read(outcome.blob_id)
            latencies.append(time.perf_counter() - started)
        if back != data:
            raise SystemExit("1 KiB blob read back DIFFERENT")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49], cuts[94], max(latencies)


async def repair(
    bench: Bench, client: WalrusClient, size_mib: int
) -> tuple[int, int, int, float, int]:
    """(pairs, received bytes, ideal bytes, seconds from restart to synced, blob bytes)."""
    victim = bench.peers[len(bench.peers) // 2]
    victim.process.kill()
    data = random.randbytes(size_mib * MIB)
    with trio.fail_after(OPERATION_TIMEOUT):
        outcome = await client.store(data, epochs=1, permanent=False)
    blob_id: BlobId = outcome.blob_id
    n_shards = bench.genesis.n_shards
    pairs = sorted(shard_to_pair(blob_id, shard, n_shards) for shard in victim.shards)
    started = time.monotonic()
    bench.start(victim)
    await wait_all_answering(bench, [victim])
    async with open_light_peer(bench.genesis, verify_chain=False) as light:
        with trio.fail_after(REPAIR_TIMEOUT):
            while True:
                with suppress(Exception):
                    status = await light.call(
                        victim.peer_id,
                        wire.BlobStatusRequest(blob_id=blob_id),
                        wire.BlobStatusReply,
                        timeout=10.0,
                    )
                    if status.has_metadata and set(pairs) <= set(status.stored_pair_indices):
                        break
                await trio.sleep(0.5)
    seconds = time.monotonic() - started
    received = int(metrics_of(victim.metrics_port).get("walrus_recovery_bytes_received_total", 0))
    config = EncodingConfig.for_shards(n_shards)
    ideal = len(pairs) * (config.kp + config.ks) * config.symbol_size(len(data))
    return len(pairs), received, ideal, seconds, len(data)


def tahoe_medians(path: Path) -> tuple[str, dict[int, tuple[float, float]]]:
    """config, size MiB -> (median put seconds, median get seconds) from the script's CSV."""
    rows = list(csv.DictReader(path.open()))
    by: dict[tuple[str, int, str], list[float]] = {}
    for row in rows:
        if row["phase"] in ("put", "get"):
            key = (row["config"], int(row["size_mb"]), row["phase"])
            by.setdefault(key, []).append(float(row["seconds"]))
    configs = sorted({config for config, _, _ in by})
    config = "7-of-20" if "7-of-20" in configs else configs[-1]
    sizes = sorted({size for c, size, _ in by if c == config})
    return config, {
        size: (median(by[(config, size, "put")]), median(by[(config, size, "get")]))
        for size in sizes
    }


async def run(arguments: argparse.Namespace, directory: Path) -> None:
    print(f"load average at start: {load()}; {os.cpu_count()} cores")
    with running_network(directory, arguments.peers, arguments.shards) as bench:
        started = time.monotonic()
        await wait_all_answering(bench, bench.peers)
        print(
            f"{arguments.peers} peer processes, n = {arguments.shards}: all answering "
            f"{time.monotonic() - started:.1f}s after launch (load {load()})",
            flush=True,
        )
        # Let start-up work (DHT joins, catch-up rounds) settle before measuring.
        await trio.sleep(5.0)
        owner, _ = ensure_identity(directory / "client")
        async with open_client(bench.genesis, owner) as client:
            await wait_for_quiet(arguments.max_load, arguments.wait_quiet)
            load_before = os.getloadavg()
            cpu_before = sum(cpu_seconds(peer.process.pid) for peer in bench.peers)
            results = await throughput(client, arguments.sizes, arguments.reps, arguments.settle)
            p50, p95, worst = await small_reads(client, arguments.small_reads)
            load_after = os.getloadavg()
            cpu_used = sum(cpu_seconds(peer.process.pid) for peer in bench.peers) - cpu_before
            peaks = sorted(proc_status(peer.process.pid, "VmHWM") for peer in bench.peers)
            repairs = []
            for size_mib in arguments.repair_sizes:
                repairs.append((size_mib, await repair(bench, client, size_mib)))

    config = EncodingConfig.for_shards(arguments.shards)
    expansion = config.encoded_length(100 * MIB) / (100 * MIB)
    print(
        f"\n== walrus-p2p: {arguments.peers} peer processes, n = {arguments.shards} "
        f"(kp = {config.kp}, ks = {config.ks}, stored {expansion:.2f}x) on {os.cpu_count()} cores"
    )
    print(
        f"load average before / after the throughput runs: "
        f"{' '.join(f'{x:.2f}' for x in load_before)} / {' '.join(f'{x:.2f}' for x in load_after)}"
    )
    tahoe: dict[int, tuple[float, float]] = {}
    tahoe_config = ""
    if arguments.tahoe_csv:
        tahoe_config, tahoe = tahoe_medians(Path(arguments.tahoe_csv))
    header = f"{'size':>8} {'certified':>10} {'placed s':>8} {'MB/s':>7} {'read s':>8} {'MB/s':>7}"
    if tahoe:
        header += (
            f" | tahoe {tahoe_config}: {'put MB/s':>8} {'get MB/s':>8} "
            f"| ratio placed/put (certified/put) read/get"
        )
    print(header)
    print("-" * len(header))
    for size_mib, (certified, placed, read) in results.items():
        line = (
            f"{size_mib:>4} MiB {size_mib / certified:6.1f}MB/s {placed:8.2f} "
            f"{size_mib / placed:7.1f} {read:8.2f} {size_mib / read:7.1f}"
        )
        if size_mib in tahoe:
            put, get = tahoe[size_mib]
            line += (
                f" | {'':>{len(tahoe_config) + 7}} {size_mib / put:8.1f} {size_mib / get:8.1f} | "
                f"{put / placed:14.2f}x ({put / certified:.2f}x) {get / read:8.2f}x"
            )
        print(line)
    print(
        f"1 KiB reads ({arguments.small_reads}): p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
        f"max {worst * 1000:.1f} ms"
    )
    print(
        f"peak RSS per peer (VmHWM) min/median/max: {peaks[0] / MIB:.0f} / "
        f"{statistics.median(peaks) / MIB:.0f} / {peaks[-1] / MIB:.0f} MiB; "
        f"peers' CPU during throughput + small reads: {cpu_used:.0f} s"
    )
    for size_mib, (pairs, received, ideal, seconds, length) in repairs:
        print(
            f"repair of one peer's slivers of a {size_mib} MiB blob ({pairs} pair(s)): received "
            f"{received:,} B ({received / length:.3f} of the blob; ideal {ideal:,} B, "
            f"{received / ideal:.2f}x ideal), synced {seconds:.1f}s after restart"
        )


def main() -> None:
    # The light peer's libp2p warnings (dials to peers still starting, ...) would bury the
    # figures; errors still show.
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 100], help="MiB")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds between a store's end (placed) and the read of the blob (default: none)",
    )
    parser.add_argument("--small-reads", type=int, default=50)
    parser.add_argument("--repair-sizes", type=int, nargs="*", default=[16], help="MiB")
    parser.add_argument("--max-load", type=float, default=2.5)
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, help="seconds to wait for the load to drop"
    )
    parser.add_argument("--tahoe-csv", default=None, help="results.csv of tahoe_grid_bench.sh")
    parser.add_argument("--directory", default=None, help="kept if given; else a temp dir")
    arguments = parser.parse_args()
    if arguments.directory:
        directory = Path(arguments.directory)
        trio.run(run, arguments, directory)
        return
    directory = Path(tempfile.mkdtemp(prefix="walrus-bench-"))
    try:
        trio.run(run, arguments, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
