"""A small in-process network with a WAL economy, for the economy's node tests (shared blobs,
storage resources, slashing): four storage peers, 8 shards, no healing, and the waits they
share. Every wait has a deadline."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from walrus_p2p.client.wallet import WalletOptions
from walrus_p2p.core.genesis import Allocation, EconomyGenesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.node.economy import EconomyOptions
from walrus_p2p.node.epochs import EpochOptions
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.testing.epochs import FAST_TIMEOUTS
from walrus_p2p.testing.network import NetworkOptions, TestNetwork, open_network

WAL = 10**9
STORAGE_PRICE = 100_000
WRITE_PRICE = 20_000
WALLET_OPTIONS = WalletOptions(
    request_timeout=5.0, total_timeout=20.0, attempts=2, tail_seconds=1.0
)


@asynccontextmanager
async def economy_network(
    name: str, funded: list[Identity], *, epoch_seconds: int, **overrides: Any
) -> AsyncIterator[TestNetwork]:
    """Four peers; each of ``funded`` holds 1000 WAL in the genesis. ``overrides`` replace
    fields of the :class:`NetworkOptions` (faults, challenges, economy options, ...)."""
    options = NetworkOptions(
        n_shards=8,
        network=name,
        epochs=EpochOptions(timeouts=FAST_TIMEOUTS),
        epoch_seconds=epoch_seconds,
        start_in=1.0,
        healing=HealingOptions(enabled=False),
        inline_limit=0,
        request_timeout=20.0,
        economy=EconomyGenesis(
            allocations=tuple(Allocation(who.public_key.raw, 1000 * WAL) for who in funded),
            storage_price=STORAGE_PRICE,
            write_price=WRITE_PRICE,
        ),
        economy_options=EconomyOptions(gap_interval=1.0, request_timeout=5.0),
    )
    options = dataclasses.replace(options, **overrides)
    async with open_network(4, options) as network:
        yield network


async def eventually(condition: Callable[[], bool], what: str, timeout: float) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.2)
    assert condition(), f"not reached within {timeout} s: {what}"


def ledgers_agree(network: TestNetwork) -> bool:
    return len({repr(p.running.economy.ledger.snapshot()) for p in network.running()}) == 1
