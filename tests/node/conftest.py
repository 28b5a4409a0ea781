"""Persona fixtures for the in-process storage peer tests (ddht style).

``network`` is four storage peers of a 10-shard network in this trio run; ``alice``, ``bob``,
``carol`` and ``dave`` are its peers; ``light`` is a light peer talking to them and ``client``
a full client (store/read) owned by ``network.owner``. Entering the fixtures does no network
I/O, so they carry no deadline of their own (a cancel scope must not straddle the nurseries
they open); every test puts ``trio.fail_after`` around its own awaits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from walrus_p2p.client.network import LightPeer
from walrus_p2p.client.service import WalrusClient
from walrus_p2p.testing.network import (
    TestNetwork,
    TestPeer,
    open_test_client,
    open_test_light_peer,
    open_test_network,
)

PEERS = 4
SHARDS = 10


@pytest.fixture
async def network() -> AsyncIterator[TestNetwork]:
    async with open_test_network(PEERS, SHARDS) as running:
        yield running


@pytest.fixture
def alice(network: TestNetwork) -> TestPeer:
    return network.peers[0]


@pytest.fixture
def bob(network: TestNetwork) -> TestPeer:
    return network.peers[1]


@pytest.fixture
def carol(network: TestNetwork) -> TestPeer:
    return network.peers[2]


@pytest.fixture
def dave(network: TestNetwork) -> TestPeer:
    return network.peers[3]


@pytest.fixture
async def light(network: TestNetwork) -> AsyncIterator[LightPeer]:
    async with open_test_light_peer(network) as peer:
        yield peer


@pytest.fixture
async def client(network: TestNetwork) -> AsyncIterator[WalrusClient]:
    async with open_test_client(network) as opened:
        yield opened
