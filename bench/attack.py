"""One storage peer under attack by strangers: its memory, and how it keeps serving.

Run from the repository root (nothing else running; it starts a 4-peer devnet)::

    .venv/bin/python bench/attack.py
    .venv/bin/python bench/attack.py --code /path/to/other/checkout   # the peers run that code

A ``walrus-peer devnet`` of ``--peers`` peers runs in the background; peer 1 is the target. The
attacker (this process) opens libp2p hosts of its own and, one phase after another:

* ``headers``: ``--headers`` streams that each send a frame header announcing a random size
  from 4 MiB up to the network's frame cap, one byte of body, and close (about 5 bytes each);
* ``half-open``: ``--half-open`` streams, spread over 10 identities, that each announce 16 MiB,
  send 64 KiB, and then stay open without sending more until the phase ends (``--hold`` s);
* ``flood``: ``--connections`` identities, each opening ``--streams`` streams that announce the
  largest sliver upload the peer admits and send ``--flood-mib`` MiB of it, then stay open
  until the phase ends.

Held streams start with the head of a well-formed ``StoreSliverRequest`` (the peer refuses a
frame larger than its message type allows from its first 18 bytes, so junk would be turned
away at once and prove nothing).

Before the attack and during each phase an honest light peer asks the target for a stored
blob's metadata, one request after another, and the median and 95th percentile of those
latencies are printed next to the target's resident memory (``VmRSS``, and its peak
``VmHWM``), sampled every 0.2 s, and the target's ``walrus_inbound_*`` metrics where it has
them. ``--code DIR`` runs the devnet's peers from another checkout (``PYTHONPATH``), so a run
against an older commit shows the difference on the same machine.

Figures depend on the load: the CPU model and the load average are printed with them.
Benchmarks print; they never assert on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from walrus_p2p.core import wire
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.net.framing import encode_header
from walrus_p2p.net.host import Host, HostConfig, open_host
from walrus_p2p.node.config import load_genesis
from walrus_p2p.node.protocol import max_frame_for, storage_protocol_id, wire_limits_for
from walrus_p2p.testing.processes import (
    DevnetCommand,
    cpu_model,
    http_get,
    http_put,
    load_text,
    parse_metrics,
    stop_process,
)
from walrus_p2p.types import SliverKind, blob_id_from_text

MIB = 1 << 20


def memory_of(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


class Target:
    def __init__(self, devnet: DevnetCommand, genesis: Genesis, index: int) -> None:
        peer = devnet.peers[index]
        assert peer.pid is not None, "the target peer is not running"
        self.pid = peer.pid
        self.metrics = peer.metrics
        member = genesis.committee.members[0]
        identity_text = (peer.data_dir / "identity.key").read_text()
        for candidate in genesis.committee.members:
            if candidate.peer_id in identity_text:
                member = candidate
        self.peer_id = member.peer_id
        self.addresses = list(member.addresses)
        self.protocol = storage_protocol_id(genesis)
        self.max_frame = max_frame_for(genesis)
        # The largest frame the peer admits as a sliver upload (its per-type cap).
        self.max_request = wire.max_encoded_size(wire.StoreSliverRequest, wire_limits_for(genesis))

    def inbound(self) -> dict[str, float]:
        if self.metrics is None:
            return {}
        status, body = http_get(f"http://{self.metrics}/metrics", 5.0)
        if status != 200:
            return {}
        return {
            key: value
            for key, value in parse_metrics(body.decode()).items()
            if key.startswith("walrus_inbound")
        }


async def honest_latencies(
    host: Host, target: Target, blob_id: bytes, until: Callable[[], bool], limit: int = 400
) -> list[float]:
    """Sequential GetMetadata requests to the target while ``until()`` is false; seconds each
    (a failed or timed-out request counts as 10 s)."""
    payload = wire.encode(wire.GetMetadataRequest(blob_id=blob_id))
    latencies: list[float] = []
    while not until() and len(latencies) < limit:
        started = time.perf_counter()
        try:
            await host.request(
                target.peer_id,
                target.protocol,
                payload,
                timeout=10.0,
                max_reply=target.max_frame,
            )
            latencies.append(time.perf_counter() - started)
        except Exception:
            latencies.append(10.0)
        await trio.sleep(0.05)
    return latencies


async def sample_memory(target: Target, done: trio.Event, peaks: list[float]) -> None:
    while not done.is_set():
        peaks.append(memory_of(target.pid)[0])
        with trio.move_on_after(0.2):
            await done.wait()


async def one_header(host: Host, target: Target, size: int) -> None:
    stream = await host.open_stream(target.peer_id, target.protocol)
    try:
        await stream.write(encode_header(size) + b"x")
        await stream.close()
    except Exception:
        await stream.reset()


def sliver_request_head(sliver_size: int) -> bytes:
    """The first bytes of a well-formed StoreSliverRequest carrying ``sliver_size`` bytes, up
    to the sliver's own bytes: what an attacker sends so that the peer's per-type frame cap
    (docs/network.md, "Inbound limits") admits the frame as a sliver upload."""
    request = wire.StoreSliverRequest(
        blob_id=bytes(32), pair_index=0, sliver_kind=SliverKind.PRIMARY, data=b"x"
    )
    encoded = wire.encode(request)
    # The sliver is the last field: swap the 1-byte string (head and byte) for the head of a
    # ``sliver_size``-byte string.
    return encoded[:-2] + cbor_bytes_head(sliver_size)


def cbor_bytes_head(length: int) -> bytes:
    if length < 24:
        return bytes([0x40 + length])
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if length < 1 << (8 * width):
            return bytes([0x40 + info]) + length.to_bytes(width, "big")
    raise ValueError(length)


async def held_stream(
    host: Host, target: Target, size: int, send: int, release: trio.Event, opened: list[int]
) -> None:
    """Announce a sliver upload of ``size`` bytes in all (a valid head, so that it is admitted
    and budgeted), send ``send`` bytes of it, and hold the stream open."""
    try:
        stream = await host.open_stream(target.peer_id, target.protocol)
    except Exception:
        return
    try:
        head = sliver_request_head(size - 60)
        head = sliver_request_head(size - len(head))
        await stream.write(encode_header(size) + head)
        chunk = b"\xa5" * min(send, MIB)
        sent = 0
        while sent < send:
            with trio.move_on_after(2.0):
                await stream.write(chunk[: send - sent])
            sent += len(chunk)
        opened.append(1)
        await release.wait()
    except Exception:
        pass
    finally:
        await stream.reset()


async def run_phase(
    name: str,
    honest: Host,
    target: Target,
    blob_id: bytes,
    attack: Callable[[trio.Event], Awaitable[int]],
) -> dict[str, object]:
    done = trio.Event()
    rss_samples: list[float] = []
    latencies: list[float] = []
    attackers = 0

    async def attack_then_done() -> None:
        nonlocal attackers
        try:
            attackers = await attack(done)
        finally:
            done.set()

    async def measure() -> None:
        latencies.extend(await honest_latencies(honest, target, blob_id, done.is_set))

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_memory, target, done, rss_samples)
        nursery.start_soon(attack_then_done)
        nursery.start_soon(measure)
    rss, peak = memory_of(target.pid)
    return {
        "phase": name,
        "seconds": round(time.monotonic() - started, 1),
        "attack": attackers,
        "rss_max_mib": round(max(rss_samples, default=rss), 1),
        "rss_after_mib": round(rss, 1),
        "vmhwm_mib": round(peak, 1),
        "honest_p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "honest_p95_ms": round(1000 * sorted(latencies)[int(0.95 * (len(latencies) - 1))], 1)
        if latencies
        else None,
        "honest_requests": len(latencies),
        "honest_failed": sum(1 for value in latencies if value >= 10.0),
        "inbound": target.inbound(),
    }


async def attack_main(args: argparse.Namespace, target: Target, blob_id: bytes) -> list[dict]:
    results: list[dict[str, object]] = []
    seeds = [os.urandom(32) for _ in range(max(args.connections, 10) + 1)]
    async with open_host(HostConfig(seed=seeds[0])) as honest:
        honest.add_addrs(target.peer_id, target.addresses)

        async def idle(done: trio.Event) -> int:
            await trio.sleep(args.idle_seconds)
            return 0

        results.append(await run_phase("idle", honest, target, blob_id, idle))

        async def headers(done: trio.Event) -> int:
            async with open_host(HostConfig(seed=seeds[1])) as attacker:
                attacker.add_addrs(target.peer_id, target.addresses)
                limiter = trio.CapacityLimiter(64)
                low = 4 * MIB

                async def one() -> None:
                    async with limiter:
                        size = random.randint(low, max(low, target.max_frame))
                        with trio.move_on_after(10.0):
                            await one_header(attacker, target, size)

                async with trio.open_nursery() as nursery:
                    for _ in range(args.headers):
                        await limiter.acquire()
                        limiter.release()
                        nursery.start_soon(one)
            return args.headers

        results.append(await run_phase("headers", honest, target, blob_id, headers))

        async def held(identities: int, per_identity: int, size: int, send: int) -> int:
            release = trio.Event()
            opened: list[int] = []
            async with trio.open_nursery() as outer:
                hosts: list[Host] = []
                for index in range(identities):
                    host = await outer.start(_serve_host, seeds[1 + index], release)
                    host.add_addrs(target.peer_id, target.addresses)
                    hosts.append(host)
                async with trio.open_nursery() as nursery:
                    for host in hosts:
                        for _ in range(per_identity):
                            nursery.start_soon(
                                held_stream, host, target, size, send, release, opened
                            )
                    await trio.sleep(args.hold)
                    release.set()
            return len(opened)

        async def half_open(done: trio.Event) -> int:
            per = max(1, args.half_open // 10)
            return await held(10, per, 16 * MIB, 64 * 1024)

        results.append(await run_phase("half-open", honest, target, blob_id, half_open))

        async def flood(done: trio.Event) -> int:
            return await held(
                args.connections, args.streams, target.max_request, int(args.flood_mib * MIB)
            )

        results.append(await run_phase("flood", honest, target, blob_id, flood))

        async def after(done: trio.Event) -> int:
            await trio.sleep(args.idle_seconds)
            return 0

        results.append(await run_phase("after", honest, target, blob_id, after))
    return results


async def _serve_host(
    seed: bytes,
    release: trio.Event,
    *,
    task_status: trio.TaskStatus[Host] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with open_host(HostConfig(seed=seed)) as host:
        task_status.started(host)
        await release.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--headers", type=int, default=10_000)
    parser.add_argument("--half-open", type=int, default=1_000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--flood-mib", type=float, default=1.0)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds held streams stay open")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--code", default=None, help="a checkout whose walrus_p2p the peers run")
    parser.add_argument("--directory", default=None)
    args = parser.parse_args()

    directory = Path(args.directory or tempfile.mkdtemp(prefix="walrus-attack-"))
    directory.mkdir(parents=True, exist_ok=True)
    if args.code:
        # ``python -m`` puts the working directory first on sys.path: run the devnet from there.
        code = Path(args.code).resolve()
        os.environ["PYTHONPATH"] = str(code)
        os.chdir(code)
    devnet = DevnetCommand(directory, peers=args.peers, shards=args.shards, epoch_duration=3600)
    print(f"cpu: {cpu_model()}  load: {load_text()}")
    print(f"peers run: {args.code or 'this checkout'}  directory: {directory}")
    devnet.start()
    try:
        devnet.wait_ready(240.0)
        devnet.discover()
        genesis = load_genesis(directory / "net" / "genesis.toml")
        status, body = http_put(devnet.url("/v1/blobs?epochs=5"), os.urandom(10_000), 120.0)
        if status != 200:
            print(f"store failed: {status} {body[:200]!r}")
            return 1
        reply = json.loads(body)
        info = reply.get("newlyCreated") or reply.get("alreadyCertified") or {}
        text = (info.get("blobObject") or {}).get("blobId") or info.get("blobId")
        blob_id = bytes(blob_id_from_text(text))
        target = Target(devnet, genesis, 1)
        print(f"target: peer 1 pid={target.pid} frame cap={target.max_frame / MIB:.1f} MiB")
        results = trio.run(attack_main, args, target, blob_id)
    finally:
        if devnet.process is not None:
            stop_process(devnet.process)
    header = (
        f"{'phase':<10} {'attack':>7} {'secs':>6} {'rss max':>8} {'rss after':>9} "
        f"{'VmHWM':>7} {'p50 ms':>8} {'p95 ms':>8} {'asked':>6} {'failed':>6}"
    )
    print(header)
    for row in results:
        print(
            f"{row['phase']:<10} {row['attack']:>7} {row['seconds']:>6} {row['rss_max_mib']:>8} "
            f"{row['rss_after_mib']:>9} {row['vmhwm_mib']:>7} {row['honest_p50_ms']!s:>8} "
            f"{row['honest_p95_ms']!s:>8} {row['honest_requests']:>6} {row['honest_failed']:>6}"
        )
    for row in results:
        if row["inbound"]:
            print(f"{row['phase']}: {json.dumps(row['inbound'], sort_keys=True)}")
    print(f"load after: {load_text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
