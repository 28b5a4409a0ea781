"""The epoch-change preset of the in-process network builder: short epochs, fast consensus.

Who uses it: ``tests/node/test_epochs.py`` and ``tests/node/test_migration.py``
(:func:`open_epoch_network`), the unit tests of the epoch rules (:func:`epoch_genesis`). The
network itself is built by :func:`walrus_p2p.testing.network.open_network`; here only the
options differ: the genesis starts a second from now with epochs of a few seconds, and the
peers run the epoch service with short consensus timeouts. Peers stop (``stop``), start again
on the same store and port (``start``) and join from outside the committee (``join``) as in
any network of the builder.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from walrus_p2p.core.consensus import TimeoutPolicy
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.node.epochs import EpochOptions
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.testing.network import (
    NetworkOptions,
    TestNetwork,
    TestPeer,
    make_genesis,
    open_network,
)

FAST_TIMEOUTS = TimeoutPolicy(propose=1.5, prevote=0.7, precommit=0.7, increment=0.5)

EpochPeer = TestPeer
EpochTestNetwork = TestNetwork


def epoch_genesis(
    identities: list[Identity],
    addresses: list[str],
    *,
    network: str,
    n_shards: int,
    epoch_seconds: int,
    start_in: float = 1.0,
    weights: list[int] | None = None,
    max_shards_per_peer: int | None = None,
) -> Genesis:
    """A genesis whose epoch 0 starts ``start_in`` seconds from now and lasts ``epoch_seconds``."""
    return make_genesis(
        identities,
        addresses,
        network=network,
        n_shards=n_shards,
        weights=weights,
        genesis_time=int(time.time() + start_in),
        epoch_seconds=epoch_seconds,
        max_shards_per_peer=max_shards_per_peer,
    )


@asynccontextmanager
async def open_epoch_network(
    peers: int = 4,
    n_shards: int = 8,
    *,
    epoch_seconds: int = 6,
    network: str = "epochs-inproc",
    options: EpochOptions | None = None,
    weights: list[int] | None = None,
    max_shards_per_peer: int | None = None,
    start: bool = True,
    healing: HealingOptions | None = None,
) -> AsyncIterator[TestNetwork]:
    """Genesis peers ``peer0``.. of a network whose epoch 1 starts ``epoch_seconds`` from now."""
    settings = NetworkOptions(
        n_shards=n_shards,
        network=network,
        epochs=options or EpochOptions(timeouts=FAST_TIMEOUTS),
        epoch_seconds=epoch_seconds,
        start_in=1.0,
        healing=healing or HealingOptions(),
        weights=weights,
        max_shards_per_peer=max_shards_per_peer,
        request_timeout=20.0,
    )
    async with open_network(peers, settings, start=start) as running:
        yield running


__all__ = [
    "FAST_TIMEOUTS",
    "EpochPeer",
    "EpochTestNetwork",
    "epoch_genesis",
    "open_epoch_network",
]
