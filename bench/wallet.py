"""Certified WAL transfers on a process devnet: the latency of one transfer, and transfers per
second with several wallets sending at once.

Run from the repository root (nothing else running; it starts ``--peers`` peer processes)::

    .venv/bin/python bench/wallet.py                       # 20 peers, 100 shards
    .venv/bin/python bench/wallet.py --peers 4 --shards 20 --transfers 20 --senders 2   # smoke

The devnet's layout is the one ``walrus-peer devnet`` makes (its genesis funds the devnet wallet,
``DIR/wallet.key``); the peers are real ``walrus-peer run`` processes on 127.0.0.1, started by
:class:`walrus_p2p.testing.processes.Devnet` and stopped at the end whatever happens.

1. **Latency**: the devnet wallet funds ``--senders`` accounts, one transfer after another; each
   transfer is the whole of ``walrus-peer wallet send`` minus the process start: ask every member
   for the account, collect approvals up to a quorum, certify, deliver to a quorum (and to the
   others while they answer). p50 and p95 over those transfers.
2. **Throughput**: each sender (its own light peer, as separate wallets would be) makes
   ``--transfers / --senders`` transfers one after another, all senders at once; transfers per
   second = certified transfers / wall time, with p50/p95 latency under that load.

Afterwards every peer's view of the sink account is read back (``GetAccountRequest``) to show
that they agree. Figures depend on the load: the CPU model and the load average are printed with
them. Benchmarks print; they never assert on speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import trio

from walrus_p2p.client.network import LightPeer, open_light_peer
from walrus_p2p.client.wallet import (
    FROST_PER_WAL,
    WalletOptions,
    load_wallet,
    send_transfer,
)
from walrus_p2p.core.economy_messages import GetAccountReply, GetAccountRequest
from walrus_p2p.core.identity import Identity
from walrus_p2p.devnet import WALLET_NAME
from walrus_p2p.errors import WalrusError
from walrus_p2p.node.config import load_genesis
from walrus_p2p.testing.cost import network_cost, print_cost
from walrus_p2p.testing.processes import CpuMeter, Devnet, bench_header, load_text, running_devnet

OPTIONS = WalletOptions(request_timeout=20.0, total_timeout=120.0, tail_seconds=5.0)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "no transfers"
    return (
        f"p50={statistics.median(latencies) * 1000:.0f} ms "
        f"p95={percentile(latencies, 0.95) * 1000:.0f} ms "
        f"max={max(latencies) * 1000:.0f} ms (n={len(latencies)})"
    )


async def timed_send(
    light: LightPeer, owner: Identity, recipient: bytes, amount: int, into: list[float]
) -> None:
    started = time.monotonic()
    await send_transfer(light, owner, recipient, amount, options=OPTIONS)
    into.append(time.monotonic() - started)


METER = CpuMeter()


async def run(devnet: Devnet, arguments: argparse.Namespace) -> None:
    genesis = load_genesis(devnet.genesis_path)
    funder = load_wallet(devnet.directory / WALLET_NAME)
    senders = [Identity.from_seed(os.urandom(32)) for _ in range(arguments.senders)]
    sink = Identity.from_seed(os.urandom(32)).public_key.raw
    per_sender = max(1, arguments.transfers // arguments.senders)
    sequential: list[float] = []
    async with open_light_peer(genesis) as light:
        for sender in senders:
            await timed_send(light, funder, sender.public_key.raw, 10 * FROST_PER_WAL, sequential)
    print(f"one transfer at a time (funding {len(senders)} senders): {summary(sequential)}")

    loaded: list[float] = []
    failures: list[str] = []

    async def sender_loop(owner: Identity) -> None:
        async with open_light_peer(genesis) as light:
            for _ in range(per_sender):
                try:
                    await timed_send(light, owner, sink, 1000, loaded)
                except WalrusError as error:
                    failures.append(f"{error.reason}: {error}")

    cost_before = await trio.to_thread.run_sync(network_cost, devnet, METER)
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for sender in senders:
            nursery.start_soon(sender_loop, sender)
    elapsed = time.monotonic() - started
    print(
        f"{len(senders)} senders at once: {len(loaded)} transfers certified in {elapsed:.1f} s = "
        f"{len(loaded) / elapsed:.2f} transfers/s; latency {summary(loaded)}; "
        f"failed {len(failures)} {failures[:3]}"
    )
    await trio.sleep(3.0)  # gossip batches of the last transfers
    cost_after = await trio.to_thread.run_sync(network_cost, devnet, METER)
    print_cost(cost_before, cost_after, len(loaded), "certified transfer")

    async with open_light_peer(genesis) as light:
        views: dict[int, int] = {}
        for member in light.committee.peer_ids:
            try:
                reply = await light.call(
                    member, GetAccountRequest(sink, 0), GetAccountReply, timeout=20.0
                )
            except WalrusError as error:
                print(f"  {member[:12]}: {error.reason}")
                continue
            views[reply.balance] = views.get(reply.balance, 0) + 1
    expected = 1000 * len(loaded)
    print(f"sink balance per member (FROST: members): {views}; expected {expected}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--transfers", type=int, default=200)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    arguments = parser.parse_args()
    print(bench_header("bench/wallet.py"))
    print(
        f"peers={arguments.peers} shards={arguments.shards} transfers={arguments.transfers} "
        f"senders={arguments.senders}"
    )
    with running_devnet(
        "walrus-wallet-",
        arguments.peers,
        arguments.shards,
        ready_timeout=arguments.ready_timeout,
        economy=True,
    ) as devnet:
        trio.run(run, devnet, arguments)
    print(f"load after: {load_text()}")


if __name__ == "__main__":
    main()
