"""A store survives a storage peer that fails part-way through its slivers.

The client uploads each peer's slivers in a nursery; under trio's strict exception groups one
failed sliver arrives as a group. The store must count that peer as failed and finish on the
quorum of the others, not fail as a whole (seen in the docker testnet under load: a stream to
one peer timed out and the gateway answered 500).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import trio

from walrus_p2p.client.service import WalrusClient
from walrus_p2p.core import wire
from walrus_p2p.core.committee import is_quorum
from walrus_p2p.errors import StorageError
from walrus_p2p.node.protocol import ProtocolRefusal
from walrus_p2p.testing.network import TestNetwork


async def test_store_succeeds_when_one_peer_fails_a_sliver(
    network: TestNetwork, client: WalrusClient
) -> None:
    committee = network.genesis.committee
    n_shards = network.genesis.n_shards
    faulty = min(network.peers, key=lambda peer: len(committee.shards_of(peer.peer_id)))
    others = n_shards - len(committee.shards_of(faulty.peer_id))
    assert is_quorum(others, n_shards), "the other peers must hold a write quorum"
    calls = 0

    async def failing_store_sliver(
        request: wire.StoreSliverRequest, remote: str
    ) -> wire.StoreSliverReply:
        nonlocal calls
        calls += 1
        raise StorageError("injected fault: disk full")

    faulty.service.router.replace(wire.StoreSliverRequest, failing_store_sliver)
    data = secrets.token_bytes(50_003)
    with trio.fail_after(45):
        outcome = await client.store(data, epochs=2, permanent=False)
    assert calls >= 1, "the faulty peer was asked for slivers"
    with trio.fail_after(30):
        assert await client.read(outcome.blob_id) == data


def fail_first_call(
    network: TestNetwork,
    request_type: type[wire.Message],
    fault: Callable[[], Exception],
) -> set[str]:
    """Every peer's handler of ``request_type`` raises ``fault()`` on its first call, then
    serves; returns the set of peers that raised (filled as it happens)."""
    failed: set[str] = set()
    for peer in network.peers:
        service = peer.service
        original = service.router.handler(request_type)

        async def first_fails(
            request: wire.Message,
            remote: str,
            peer_id: str = peer.peer_id,
            original: Any = original,
        ) -> Any:
            if peer_id not in failed:
                failed.add(peer_id)
                raise fault()
            return await original(request, remote)

        service.router.replace(request_type, first_fails)
    return failed


async def test_store_retries_peers_that_failed_before_the_quorum(
    network: TestNetwork, client: WalrusClient
) -> None:
    # Every peer fails its first sliver (a restart, a busy disk): no quorum without a second
    # attempt at the same peers, which the store makes while the quorum is missing.
    failed = fail_first_call(
        network,
        wire.StoreSliverRequest,
        lambda: StorageError("injected fault: first write fails"),
    )
    data = secrets.token_bytes(30_011)
    with trio.fail_after(60):
        outcome = await client.store(data, epochs=2, permanent=False)
    assert failed == {peer.peer_id for peer in network.peers}
    with trio.fail_after(30):
        assert await client.read(outcome.blob_id) == data


async def test_store_retries_a_peer_that_is_behind_on_the_epoch(
    network: TestNetwork, client: WalrusClient
) -> None:
    # Every peer answers its first confirmation request WRONG_EPOCH, as a peer that restarted
    # and has not caught up the epoch chain yet does, while the network has not moved: the
    # store asks that peer for the chain, finds no newer epoch, and tries the peer again
    # instead of starting over or failing (docs/protocol.md, "Store").
    epoch = client.light.epoch
    refused = fail_first_call(
        network,
        wire.GetConfirmationRequest,
        lambda: ProtocolRefusal("WRONG_EPOCH", "confirmations are signed for epoch -1 only"),
    )
    data = secrets.token_bytes(20_011)
    with trio.fail_after(60):
        outcome = await client.store(data, epochs=2, permanent=False)
    assert refused == {peer.peer_id for peer in network.peers}
    assert client.light.epoch == epoch
    with trio.fail_after(30):
        assert await client.read(outcome.blob_id) == data
