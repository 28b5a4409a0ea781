"""Paid stores on a process devnet: what paying adds to the latency of a store.

Run from the repository root (nothing else running; it starts ``--peers`` peer processes)::

    .venv/bin/python bench/paid_store.py                           # 20 peers, 100 shards
    .venv/bin/python bench/paid_store.py --peers 4 --shards 20 --stores 10   # smoke

The devnet's layout is the one ``walrus-peer devnet`` makes: its genesis has an ``[economy]``
table, so storage peers want every registration paid (docs/economics.md, "Paid storage"), and it
funds the gateway's account (``DIR/client``), which pays here. ``--stores`` blobs of ``--size``
random bytes are stored one after another through the library (``WalrusClient.store``, what
``walrus-peer store`` and the gateway run), each for ``--epochs`` epochs.

For each store the payment step (``Payer.pay_for_blob``: the account view, the purchase and the
attachment approved, certified and delivered to a quorum) is timed inside the store; that step is
what a paid store adds over an unpaid one (the rest of the flow is the same; a peer's payment
check is a ledger lookup). Printed: p50/p95 of the payment step and of the whole store, and every
member's view of the payer's balance afterwards against the sum of the reported costs. Figures
depend on the load: the CPU model and the load average are printed with them. Benchmarks print;
they never assert on speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import trio

from walrus_p2p.client.payment import Payer, Payment
from walrus_p2p.client.results import StoredBlob
from walrus_p2p.client.service import open_client
from walrus_p2p.core.economy_messages import GetAccountReply, GetAccountRequest
from walrus_p2p.devnet import CLIENT_KEY_DIR
from walrus_p2p.errors import WalrusError
from walrus_p2p.node.config import load_genesis, load_identity
from walrus_p2p.testing.processes import Devnet, bench_header, load_text, running_devnet


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "none"
    return (
        f"p50={statistics.median(latencies) * 1000:.0f} ms "
        f"p95={percentile(latencies, 0.95) * 1000:.0f} ms "
        f"max={max(latencies) * 1000:.0f} ms (n={len(latencies)})"
    )


class TimedPayer(Payer):
    """A payer that records how long each payment took."""

    timings: list[float]

    async def pay_for_blob(
        self, *, blob_id: bytes, size: int, deletable: bool, start_epoch: int, end_epoch: int
    ) -> Payment:
        started = time.monotonic()
        try:
            return await super().pay_for_blob(
                blob_id=blob_id,
                size=size,
                deletable=deletable,
                start_epoch=start_epoch,
                end_epoch=end_epoch,
            )
        finally:
            self.timings.append(time.monotonic() - started)


async def run(devnet: Devnet, arguments: argparse.Namespace) -> None:
    genesis = load_genesis(devnet.genesis_path)
    owner = load_identity(devnet.directory / CLIENT_KEY_DIR)
    stores: list[float] = []
    costs = 0
    failures: list[str] = []
    async with open_client(genesis, owner) as client:
        payer = TimedPayer(client.light, owner, background=client.background)
        payer.timings = []
        client.payer = payer
        for _ in range(arguments.stores):
            data = os.urandom(arguments.size)
            started = time.monotonic()
            try:
                outcome = await client.store(data, epochs=arguments.epochs, permanent=False)
            except WalrusError as error:
                failures.append(f"{error.reason}: {error}")
                continue
            stores.append(time.monotonic() - started)
            if isinstance(outcome, StoredBlob):
                costs += outcome.cost
        print(f"payment step (added latency): {summary(payer.timings)}")
        print(f"whole paid store of {arguments.size} B: {summary(stores)}")
        print(f"failed {len(failures)} {failures[:3]}; paid {costs} FROST in all")
        await trio.sleep(3.0)
        views: dict[int, int] = {}
        for member in client.light.committee.peer_ids:
            try:
                reply = await client.light.call(
                    member,
                    GetAccountRequest(owner.public_key.raw, 0),
                    GetAccountReply,
                    timeout=20.0,
                )
            except WalrusError as error:
                print(f"  {member[:12]}: {error.reason}")
                continue
            views[reply.balance] = views.get(reply.balance, 0) + 1
    funded = next(
        item.amount
        for item in genesis.economy_or_default.allocations
        if item.account == owner.public_key.raw
    )
    print(f"payer balance per member (FROST: members): {views}; expected {funded - costs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--stores", type=int, default=50)
    parser.add_argument("--size", type=int, default=64 * 1024, metavar="BYTES")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    arguments = parser.parse_args()
    print(bench_header("bench/paid_store.py"))
    print(
        f"peers={arguments.peers} shards={arguments.shards} stores={arguments.stores} "
        f"size={arguments.size} epochs={arguments.epochs}"
    )
    with running_devnet(
        "walrus-paid-",
        arguments.peers,
        arguments.shards,
        ready_timeout=arguments.ready_timeout,
        economy=True,
    ) as devnet:
        trio.run(run, devnet, arguments)
    print(f"load after: {load_text()}")


if __name__ == "__main__":
    main()
