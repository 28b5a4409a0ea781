"""Shard migration at an epoch change (issue 6 item 3, issue 4 item 6): in-process peers.

A peer that is not in the genesis committee joins; at epoch 1 it owns shards that other peers
held in epoch 0. It pulls their slivers from those previous owners (signed, paged, each sliver
verified), recovers what it cannot pull, reports its shards in place, and serves reads of the
blobs stored before it joined; the previous owners serve until that report and then drop the
moved slivers. Real libp2p hosts on 127.0.0.1 and the wall clock, under ``trio.fail_after``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from walrus_p2p import cli
from walrus_p2p.client.read import ReadOptions, fetch_metadata, fetch_slivers
from walrus_p2p.client.service import open_client
from walrus_p2p.core.committee import Committee
from walrus_p2p.core.encoding import SliverType, shard_to_pair
from walrus_p2p.core.genesis import genesis_to_toml
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.metadata import Metadata, verify_sliver
from walrus_p2p.core.migration import PullShardRequest, gained_shards
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.node.peer import StoragePeerService
from walrus_p2p.node.protocol import sliver_of_pair, type_of
from walrus_p2p.testing.epochs import EpochPeer, EpochTestNetwork, open_epoch_network
from walrus_p2p.testing.network import seed_for
from walrus_p2p.types import BlobId, PeerId, SliverKind

EPOCH_SECONDS = 15
"""Long enough that epoch 2 does not start while a test checks epoch 1's migration."""
FAST_HEALING = HealingOptions(
    sync_delay=0.5,
    hedge_delay=1.0,
    request_timeout=8.0,
    migration_retry_delay=0.3,
    migration_attempts=3,
    in_place_check_interval=0.5,
    release_grace=0.5,
)


def random_blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def store_blobs(network: EpochTestNetwork, sizes: list[int]) -> dict[BlobId, bytes]:
    genesis = network.genesis
    owner = Identity.from_seed(seed_for(genesis.network, "owner"))
    stored: dict[BlobId, bytes] = {}
    async with open_client(genesis, owner) as client:
        for index, size in enumerate(sizes):
            data = random_blob(size, index)
            result = await client.store(data, epochs=6, permanent=False)
            stored[result.blob_id] = data
    return stored


async def wait_for_shards(newcomer: EpochPeer) -> Committee:
    """The first committee that gives the newcomer shards (it announced itself in epoch 0)."""
    service = newcomer.running
    while not service.committee.shards_of(newcomer.peer_id):
        await service.epochs.changed.wait()
    return service.committee


def owned_slivers(
    committee: Committee, peer_id: PeerId, blob_id: BlobId
) -> list[tuple[int, SliverKind]]:
    return [
        (shard_to_pair(blob_id, shard, committee.n_shards), kind)
        for shard in committee.shards_of(peer_id)
        for kind in (SliverKind.PRIMARY, SliverKind.SECONDARY)
    ]


def check_holds_every_sliver(
    service: StoragePeerService, committee: Committee, blobs: dict[BlobId, bytes]
) -> None:
    """Every sliver the peer owns in ``committee`` is on its disk and verifies."""
    from walrus_p2p.core import wire

    for blob_id in blobs:
        metadata: Metadata = wire.decode(
            service.store.get_metadata(blob_id), wire.GetMetadataReply
        ).metadata
        for pair, kind in owned_slivers(committee, service.peer_id, blob_id):
            data = service.store.get_sliver(blob_id, pair, kind)
            verify_sliver(
                metadata, type_of(kind), sliver_of_pair(kind, pair, metadata.shards), data
            )


async def wait_in_place(service: StoragePeerService, epoch: int) -> None:
    healing = service.healing
    assert healing is not None
    while healing.migration.in_place_epoch != epoch:
        await trio.sleep(0.2)


def wrap_pull_handler(
    service: StoragePeerService, wrapper: Callable[[Any, PeerId], Awaitable[Any]]
) -> Callable[[Any, PeerId], Awaitable[Any]]:
    """Replace a peer's PullShardRequest handler; returns the original."""
    return service.router.replace(PullShardRequest, wrapper)


async def test_new_peer_pulls_its_shards_and_serves_older_blobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(90):
        async with open_epoch_network(
            4, 8, epoch_seconds=EPOCH_SECONDS, healing=FAST_HEALING
        ) as network:
            genesis = network.genesis
            blobs = await store_blobs(network, [150_000, 400_000, 1])
            newcomer = await network.join("newcomer")
            committee = await wait_for_shards(newcomer)
            epoch = int(committee.epoch)
            previous = newcomer.running.epochs.committee_of(epoch - 1)
            assert previous is not None
            gained = gained_shards(previous, committee, newcomer.peer_id)
            assert gained and set(gained) == set(committee.shards_of(newcomer.peer_id))
            service = newcomer.running
            healing = service.healing
            assert healing is not None

            await wait_in_place(service, epoch)
            check_holds_every_sliver(service, committee, blobs)
            # Pulled from the previous owners, not rebuilt from recovery symbols.
            pulled = healing.metrics.migration_slivers.labels(outcome="stored")._value.get()
            assert pulled == sum(len(owned_slivers(committee, newcomer.peer_id, b)) for b in blobs)
            assert all(healing.metrics.recovery_bytes_of(blob_id) == 0 for blob_id in blobs)
            assert healing.metrics.migration_received_total > 0

            # The previous owners hear the report and drop the moved slivers (after the grace).
            old_owners = [
                network_peer(network, peer_id) for peer_id in sorted(set(gained.values()))
            ]
            with trio.fail_after(20):
                while any(
                    holds_any(owner.running, blobs, gained, committee) for owner in old_owners
                ):
                    await trio.sleep(0.2)
            # ... but keep the shards they still own.
            for owner in old_owners:
                check_holds_every_sliver(owner.running, committee, blobs)

            # A reader learns the report and asks the new owner first; the old owners no longer
            # hold the slivers, so these reads are served by the newcomer alone.
            owner_identity = Identity.from_seed(seed_for(genesis.network, "owner"))
            async with open_client(genesis, owner_identity) as client:
                light = client.light
                assert light.epoch == epoch
                for blob_id, data in blobs.items():
                    metadata = await fetch_metadata(light, blob_id, timeout=10)
                    pairs = [shard_to_pair(blob_id, s, genesis.n_shards) for s in gained]
                    got = await fetch_slivers(
                        light,
                        blob_id,
                        metadata,
                        SliverType.PRIMARY,
                        indices=pairs,
                        needed=len(pairs),
                        options=ReadOptions(),
                        bad_peers=set(),
                    )
                    assert sorted(got) == sorted(pairs)
                    assert await client.read(blob_id) == data
                for shard in gained:
                    assert light.holders_of(shard)[0] == newcomer.peer_id

            # `walrus-peer info`: nothing is arriving any more.
            genesis_file = tmp_path / "genesis.toml"
            genesis_file.write_text(genesis_to_toml(genesis))
            capsys.readouterr()
            code = await trio.to_thread.run_sync(
                cli.main, ["info", "--genesis", str(genesis_file), "--json"]
            )
            assert code == 0
            info = json.loads(capsys.readouterr().out)
            assert info["epoch"] == epoch
            assert all(entry["shardsArriving"] == [] for entry in info["committee"])


def network_peer(network: EpochTestNetwork, peer_id: PeerId) -> EpochPeer:
    (peer,) = [peer for peer in network.peers if peer.peer_id == peer_id]
    return peer


def holds_any(
    service: StoragePeerService,
    blobs: dict[BlobId, bytes],
    shards: dict[int, PeerId],
    committee: Committee,
) -> bool:
    for blob_id in blobs:
        for shard in shards:
            pair = shard_to_pair(blob_id, shard, committee.n_shards)
            for kind in (SliverKind.PRIMARY, SliverKind.SECONDARY):
                if service.store.has_sliver(blob_id, pair, kind):
                    return True
    return False


async def test_old_owner_killed_mid_migration_new_owner_still_gets_every_sliver() -> None:
    # One sliver per pull page (the smallest budget, slivers larger than it): every previous
    # owner serves two pages, then holds the third until the test says so. The test kills one
    # of them there; the newcomer must rebuild the rest of that shard from recovery symbols.
    healing_options = dataclasses.replace(FAST_HEALING, migration_page_bytes=64 * 1024)
    with trio.fail_after(110):
        async with open_epoch_network(
            4, 8, epoch_seconds=EPOCH_SECONDS, healing=healing_options
        ) as network:
            blobs = await store_blobs(network, [600_000, 700_000, 500_000])
            released = trio.Event()
            pages: dict[PeerId, int] = {}
            for peer in network.running():
                service = peer.running
                original = service.router.handler(PullShardRequest)

                def make(
                    handler: Callable[[Any, PeerId], Awaitable[Any]], peer_id: PeerId
                ) -> Callable[[Any, PeerId], Awaitable[Any]]:
                    async def held(request: Any, remote: PeerId) -> Any:
                        pages[peer_id] = pages.get(peer_id, 0) + 1
                        if pages[peer_id] > 2:
                            await released.wait()
                        return await handler(request, remote)

                    return held

                wrap_pull_handler(service, make(original, peer.peer_id))

            newcomer = await network.join("newcomer")
            committee = await wait_for_shards(newcomer)
            epoch = int(committee.epoch)
            previous = newcomer.running.epochs.committee_of(epoch - 1)
            assert previous is not None
            gained = gained_shards(previous, committee, newcomer.peer_id)
            sources = sorted(set(gained.values()))
            victim_id = sources[0]
            with trio.fail_after(30):
                while pages.get(victim_id, 0) < 3:
                    await trio.sleep(0.05)
            victim = network_peer(network, victim_id)
            await network.stop(victim.name)
            released.set()

            service = newcomer.running
            healing = service.healing
            assert healing is not None
            with trio.fail_after(60):
                await wait_in_place(service, epoch)
            check_holds_every_sliver(service, committee, blobs)
            stored = healing.metrics.migration_slivers.labels(outcome="stored")._value.get()
            needed = sum(len(owned_slivers(committee, newcomer.peer_id, b)) for b in blobs)
            # Part came by pull (two pages from the victim at least), the rest by recovery.
            assert 2 <= stored < needed
            assert healing.metrics.received_total > 0
            recovered = sum(
                healing.metrics.slivers_recovered.labels(sliver_kind=kind)._value.get()
                for kind in ("primary", "secondary")
            )
            assert stored + recovered >= needed
