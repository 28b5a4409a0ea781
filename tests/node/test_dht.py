"""Discovery through the Kademlia DHT: 7 storage peers bootstrapping from one."""

from __future__ import annotations

import pytest
import trio

from walrus_p2p.errors import PeerUnreachableError
from walrus_p2p.net.host import peer_id_from_seed
from walrus_p2p.testing.network import (
    STEP,
    bootstrap_all,
    host_seed_for,
    open_test_host,
    open_test_hosts,
)

PEERS = 7


async def test_every_peer_finds_every_other_through_the_dht() -> None:
    async with open_test_hosts(PEERS, dht="server") as peers:
        await bootstrap_all(peers)
        for peer in peers:
            assert peer.discovery is not None
            # Connecting alone does not fill a routing table: bootstrap added and refreshed.
            assert len(peer.discovery.routing_table_peers()) >= 1
        for seeker in peers:
            assert seeker.discovery is not None
            for target in peers:
                if target is seeker:
                    continue
                with trio.fail_after(STEP):
                    addrs = await seeker.discovery.find_peer(target.host.peer_id, timeout=STEP)
                assert sorted(addrs) == sorted(target.host.listen_addrs)


async def test_light_peer_in_client_mode_finds_storage_peers_it_never_met() -> None:
    async with open_test_hosts(PEERS, dht="server", prefix="store") as peers:
        await bootstrap_all(peers)
        async with open_test_host("light", dht="client") as light:
            assert light.discovery is not None
            with trio.fail_after(STEP):
                reached = await light.discovery.bootstrap(peers[0].host.peer_addrs)
            assert reached == [peers[0].host.peer_id]
            for target in peers[1:]:
                with trio.fail_after(STEP):
                    addrs = await light.discovery.find_peer(target.host.peer_id, timeout=STEP)
                assert sorted(addrs) == sorted(target.host.listen_addrs)
            # A client-mode peer offers no kad handler and stays out of routing tables.
            with trio.fail_after(STEP):
                await peers[0].discovery.refresh(timeout=STEP)  # type: ignore[union-attr]
            for peer in peers:
                assert peer.discovery is not None
                assert light.host.peer_id not in peer.discovery.routing_table_peers()


async def test_bootstrap_failures_and_unknown_peers() -> None:
    async with open_test_hosts(2, dht="server", prefix="lonely") as (first, second):
        assert first.discovery is not None and second.discovery is not None
        ghost = peer_id_from_seed(host_seed_for("nobody"))
        with trio.fail_after(STEP):
            # Every bootstrap peer unreachable: an error, not a silent empty DHT.
            with pytest.raises(PeerUnreachableError):
                await first.discovery.bootstrap([(ghost, "/ip4/127.0.0.1/tcp/1")], timeout=5.0)
            # Our own entry in a shared bootstrap list is skipped.
            reached = await second.discovery.bootstrap(
                [*first.host.peer_addrs, *second.host.peer_addrs]
            )
            assert reached == [first.host.peer_id]
            # A peer nobody has heard of. (The ghost above is not one: `first` keeps its
            # address in its peerstore and a kad FIND_NODE answer may include it.)
            stranger = peer_id_from_seed(host_seed_for("stranger"))
            with pytest.raises(PeerUnreachableError):
                await second.discovery.find_peer(stranger, timeout=STEP)
