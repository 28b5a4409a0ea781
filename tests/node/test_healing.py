"""Self-healing of storage peers (docs/healing.md): blob sync, catch-up after data loss,
scrub and repair, invalid blobs, garbage collection. In-process peers on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import math
import random
import sqlite3

import trio

from walrus_p2p.client.network import open_light_peer
from walrus_p2p.core import records, wire
from walrus_p2p.core.encoding import SliverType
from walrus_p2p.core.metadata import Metadata, verify_sliver
from walrus_p2p.errors import RemoteError
from walrus_p2p.node.protocol import owned_pairs
from walrus_p2p.storage import DiskStore
from walrus_p2p.testing.healing_grid import (
    GridPeer,
    HealingGrid,
    holder_of_pair,
    honest_encoding,
    inconsistent_encoding,
    open_healing_grid,
    owner_identity,
    push_to_all,
    write_blob,
)
from walrus_p2p.testing.network import seed_for
from walrus_p2p.types import BlobId, PeerId, SliverKind

PEERS = 4
SHARDS = 10
STEP = 60.0
"""Deadline for one healing step on a loaded 2-core machine."""


def blob_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def held_slivers(slot: GridPeer, blob_id: BlobId) -> set[tuple[int, SliverKind]]:
    assert slot.store is not None
    return set(slot.store.list_slivers(blob_id))


def required(grid: HealingGrid, slot: GridPeer, blob_id: BlobId) -> set[tuple[int, SliverKind]]:
    return {
        (pair, kind)
        for pair in owned_pairs(grid.genesis.committee, slot.peer_id, blob_id)
        for kind in (SliverKind.PRIMARY, SliverKind.SECONDARY)
    }


def check_slivers_verify(
    slot: GridPeer, blob_id: BlobId, metadata: Metadata, grid: HealingGrid, shards: int = SHARDS
) -> None:
    assert slot.store is not None
    for pair, kind in required(grid, slot, blob_id):
        data = slot.store.get_sliver(blob_id, pair, kind)
        index = pair if kind is SliverKind.PRIMARY else shards - 1 - pair
        sliver_type = SliverType.PRIMARY if kind is SliverKind.PRIMARY else SliverType.SECONDARY
        verify_sliver(metadata, sliver_type, index, data)


async def test_peer_skipped_by_the_writer_syncs_after_the_certificate() -> None:
    async with open_healing_grid(PEERS, SHARDS) as grid:
        light_seed = seed_for(grid.genesis.network, "light")
        async with open_light_peer(grid.genesis, seed=light_seed) as light:
            skipped = grid.peers[1]
            encoded = honest_encoding(blob_bytes(300_000, 1), SHARDS)
            with trio.fail_after(STEP):
                written = await write_blob(
                    light, owner_identity(grid), encoded, skip=[skipped.peer_id]
                )
            need = required(grid, skipped, written.blob_id)
            assert need and not held_slivers(skipped, written.blob_id)
            with trio.fail_after(STEP):
                await skipped.healing.sync.wait_idle()
            assert held_slivers(skipped, written.blob_id) == need
            check_slivers_verify(skipped, written.blob_id, written.metadata, grid)
            # Now it can confirm like any other peer.
            reply = await light.call(
                skipped.peer_id,
                wire.GetConfirmationRequest(blob_id=written.blob_id, epoch=0, permanent=False),
                wire.GetConfirmationReply,
                timeout=STEP,
            )
            assert reply.confirmation.confirmation.blob_id == written.blob_id
            assert skipped.healing.metrics.recovery_bytes_of(written.blob_id) > 0


async def test_sync_skips_a_helper_that_sends_bad_symbols() -> None:
    # n = 7, one shard per peer: ks = 5 of the 6 other peers must help, so one liar is survivable.
    async with open_healing_grid(7, 7) as grid:
        light_seed = seed_for(grid.genesis.network, "light")
        async with open_light_peer(grid.genesis, seed=light_seed) as light:
            victim, liar = grid.peers[0], grid.peers[1]
            honest_handler = liar.running.router.handler(wire.GetRecoverySymbolsRequest)

            async def lying_handler(
                request: wire.GetRecoverySymbolsRequest, remote: PeerId
            ) -> wire.GetRecoverySymbolsReply:
                reply = await honest_handler(request, remote)
                flipped = tuple(
                    dataclasses.replace(
                        item, symbol=bytes([item.symbol[0] ^ 0xFF]) + item.symbol[1:]
                    )
                    for item in reply.symbols
                )
                return wire.GetRecoverySymbolsReply(symbols=flipped)

            liar.running.router.replace(wire.GetRecoverySymbolsRequest, lying_handler)
            registry = victim.running.metrics.registry

            def bad_symbols() -> float:
                return registry.get_sample_value("walrus_recovery_bad_symbols_total") or 0.0

            # Helpers are picked at random: write blobs until the liar was asked (bounded).
            for seed in range(6):
                encoded = honest_encoding(blob_bytes(150_000, 51 + seed), 7)
                with trio.fail_after(STEP):
                    written = await write_blob(
                        light, owner_identity(grid), encoded, skip=[victim.peer_id]
                    )
                    await victim.healing.sync.wait_idle()
                assert held_slivers(victim, written.blob_id) == required(
                    grid, victim, written.blob_id
                )
                check_slivers_verify(victim, written.blob_id, written.metadata, grid, shards=7)
                if bad_symbols() >= 1:
                    break
            assert bad_symbols() >= 1


async def test_peer_down_during_a_write_catches_up_records_and_slivers_on_restart() -> None:
    async with open_healing_grid(PEERS, SHARDS) as grid:
        light_seed = seed_for(grid.genesis.network, "light")
        async with open_light_peer(grid.genesis, seed=light_seed) as light:
            sleeper = grid.peers[3]
            await grid.stop(3)
            with trio.fail_after(STEP):
                written = await write_blob(
                    light,
                    owner_identity(grid),
                    honest_encoding(blob_bytes(250_000, 41), SHARDS),
                    skip=[sleeper.peer_id],
                    timeout=5.0,
                )
            await grid.start(3)
            with trio.fail_after(STEP):
                await sleeper.healing.caught_up.wait()
                await sleeper.healing.sync.wait_idle()
            state = await sleeper.running.records.blob_state(written.blob_id)
            assert state.certificate is not None
            assert held_slivers(sleeper, written.blob_id) == required(
                grid, sleeper, written.blob_id
            )
            check_slivers_verify(sleeper, written.blob_id, written.metadata, grid)
            assert sleeper.healing.catch_up.rounds_done >= 1


def traffic_bound(grid: HealingGrid, slot: GridPeer, written: list[tuple[BlobId, Metadata]]) -> int:
    """1.2 x (kp + ks) x S per owned sliver pair, plus Merkle paths, reply framing and the
    metadata of each blob: the most a peer may download to rebuild its slivers."""
    total = 0
    for blob_id, metadata in written:
        config = metadata.config
        pairs = len(owned_pairs(grid.genesis.committee, slot.peer_id, blob_id))
        symbols = 1.2 * (config.kp + config.ks)
        path = 32 * math.ceil(math.log2(config.n)) + 64  # proof + CBOR/message overhead
        total += int(pairs * symbols * (metadata.symbol_size + path))
        total += 64 * config.n + 256  # one metadata reply
    return total


async def test_peer_that_lost_its_disk_rebuilds_every_sliver_from_symbols() -> None:
    sizes = [200_000, 1_000_000, 3_000_000]
    # One shard per peer, so a peer's share of the encoding ((kp+ks)·S = 11/28 of the blob)
    # is well below the blob: downloading whole blobs or slivers would break the bound.
    async with open_healing_grid(SHARDS, SHARDS) as grid:
        light_seed = seed_for(grid.genesis.network, "light")
        async with open_light_peer(grid.genesis, seed=light_seed) as light:
            written = []
            for seed, size in enumerate(sizes):
                encoded = honest_encoding(blob_bytes(size, seed), SHARDS)
                with trio.fail_after(STEP):
                    result = await write_blob(light, owner_identity(grid), encoded)
                written.append((result.blob_id, result.metadata))
            victim = grid.peers[2]
            before = {blob_id: held_slivers(victim, blob_id) for blob_id, _ in written}
            assert all(before[blob_id] == required(grid, victim, blob_id) for blob_id, _ in written)

            await grid.stop(2, wipe=True)
            assert not victim.store_dir.exists()
            await grid.start(2)
            with trio.fail_after(STEP):
                await victim.healing.caught_up.wait()
                await victim.healing.sync.wait_idle()

            for blob_id, metadata in written:
                assert held_slivers(victim, blob_id) == before[blob_id]
                check_slivers_verify(victim, blob_id, metadata, grid)
                assert victim.store is not None and victim.store.has_metadata(blob_id)
            received = victim.healing.metrics.received_total
            bound = traffic_bound(grid, victim, written)
            whole_blobs = sum(sizes)
            print(f"recovery bytes={received} bound={bound} blobs={whole_blobs}")
            assert 0 < received <= bound < whole_blobs
            # Per blob too, and far below the whole blob for the large ones.
            for blob_id, metadata in written:
                assert victim.healing.metrics.recovery_bytes_of(blob_id) <= traffic_bound(
                    grid, victim, [(blob_id, metadata)]
                )


def sliver_file(store: DiskStore, blob_id: BlobId, pair: int, kind: SliverKind) -> str:
    """The file holding one sliver (test-only peek into the store's index)."""
    connection = sqlite3.connect(store.path / "store.sqlite3")
    try:
        row = connection.execute(
            "SELECT file_name FROM slivers WHERE blob_id = ? AND pair_index = ? AND kind = ?",
            (bytes(blob_id), pair, kind.value),
        ).fetchone()
    finally:
        connection.close()
    assert row is not None and row[0] is not None
    return str(row[0])


async def test_scrub_repairs_a_corrupt_file_and_a_sliver_that_contradicts_its_hash() -> None:
    # inline_limit=0: every sliver gets its own file, so a bit can be flipped on disk.
    async with open_healing_grid(PEERS, SHARDS, inline_limit=0) as grid:
        light_seed = seed_for(grid.genesis.network, "light")
        async with open_light_peer(grid.genesis, seed=light_seed) as light:
            encoded = honest_encoding(blob_bytes(500_000, 9), SHARDS)
            with trio.fail_after(STEP):
                written = await write_blob(light, owner_identity(grid), encoded)
            blob_id = written.blob_id
            victim = grid.peers[0]
            store = victim.store
            assert isinstance(store, DiskStore)
            (first, second, *_) = sorted(
                required(grid, victim, blob_id), key=lambda item: (item[0], item[1].value)
            )
            good_first = store.get_sliver(blob_id, *first)
            good_second = store.get_sliver(blob_id, *second)
            # 1. A flipped bit in a sliver file (the store's checksum catches it).
            path = store._file_path(sliver_file(store, blob_id, *first))
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x01
            path.write_bytes(bytes(data))
            # 2. A sliver rewritten with wrong bytes (checksum fine, the metadata catches it).
            wrong = bytearray(good_second)
            wrong[0] ^= 0xFF
            store.put_sliver(blob_id, second[0], second[1], bytes(wrong))

            with trio.fail_after(STEP):
                checked, damaged = await victim.healing.maintenance.scrub()
                await victim.healing.sync.wait_idle()
            assert checked == len(required(grid, victim, blob_id))
            assert damaged == 2
            assert store.get_sliver(blob_id, *first) == good_first
            assert store.get_sliver(blob_id, *second) == good_second
            assert store.is_durable(blob_id, required(grid, victim, blob_id), verify=True)
            with trio.fail_after(STEP):
                assert await victim.healing.maintenance.scrub() == (checked, 0)


def holds_anything(slot: GridPeer, blob_id: BlobId) -> bool:
    assert slot.store is not None
    return slot.store.has_metadata(blob_id) or bool(slot.store.list_slivers(blob_id))


async def test_deleted_and_expired_blobs_disappear_from_disk() -> None:
    async with open_healing_grid(PEERS, SHARDS) as grid:
        light_seed = seed_for(grid.genesis.network, "light")
        owner = owner_identity(grid)
        async with open_light_peer(grid.genesis, seed=light_seed) as light:
            with trio.fail_after(STEP):
                doomed = await write_blob(
                    light, owner, honest_encoding(blob_bytes(100_000, 21), SHARDS), epochs=5
                )
                short = await write_blob(
                    light, owner, honest_encoding(blob_bytes(100_000, 22), SHARDS), epochs=1
                )
                kept = await write_blob(
                    light, owner, honest_encoding(blob_bytes(100_000, 23), SHARDS), epochs=5
                )
            for slot in grid.peers:
                assert all(holds_anything(slot, w.blob_id) for w in (doomed, short, kept))

            # Delete: the owner's delete record reaches every peer, which drops the data at once.
            delete = records.sign_delete(
                owner, network_id=grid.genesis.network_id, blob_id=doomed.blob_id, start_epoch=0
            )
            with trio.fail_after(STEP):
                assert await push_to_all(light, doomed.blob_id, [delete]) == PEERS
                for slot in grid.peers:
                    await slot.healing.maintenance.collect_garbage()
            for slot in grid.peers:
                assert not holds_anything(slot, doomed.blob_id)
                assert holds_anything(slot, short.blob_id) and holds_anything(slot, kept.blob_id)

            # Expiry: epochs are static here, so the pass is told the epoch (1 = short's end).
            with trio.fail_after(STEP):
                for slot in grid.peers:
                    assert await slot.healing.maintenance.collect_garbage(epoch=1) == 1
            for slot in grid.peers:
                assert not holds_anything(slot, short.blob_id)
                assert holds_anything(slot, kept.blob_id)
                assert slot.store is not None
                assert slot.store.is_durable(
                    kept.blob_id, required(grid, slot, kept.blob_id), verify=True
                )
            # The records stay: a reader learns "deleted", not "unknown".
            with trio.fail_after(STEP):
                status = await light.call(
                    grid.peers[0].peer_id,
                    wire.BlobStatusRequest(blob_id=doomed.blob_id),
                    wire.BlobStatusReply,
                    timeout=STEP,
                )
            assert status.known and not status.has_metadata


async def test_inconsistent_blob_is_proven_attested_and_marked_invalid_everywhere() -> None:
    async with open_healing_grid(PEERS, SHARDS) as grid:
        light_seed = seed_for(grid.genesis.network, "light")
        async with open_light_peer(grid.genesis, seed=light_seed) as light:
            data = blob_bytes(120_000, 31)
            liar_pair = SHARDS - 1  # a parity row (>= kp)
            encoded = inconsistent_encoding(data, SHARDS, liar_pair)
            # The peer holding the tampered row is skipped, so it must rebuild that row from
            # the (honest) secondary slivers of the others, which contradicts the commitment.
            victim = holder_of_pair(grid, encoded.blob_id, liar_pair)
            with trio.fail_after(STEP):
                written = await write_blob(
                    light, owner_identity(grid), encoded, skip=[victim.peer_id]
                )
                await victim.healing.sync.wait_idle()
            blob_id = written.blob_id
            for slot in grid.peers:
                state = await slot.running.records.blob_state(blob_id)
                assert state.is_invalid, f"peer {slot.index} did not learn the blob is invalid"
                assert state.invalid is not None
                state.invalid.verify(grid.genesis.network_id, grid.genesis.committee)
            # Every peer dropped the slivers (the listener's drop runs in the background).
            with trio.fail_after(STEP):
                for slot in grid.peers:
                    await slot.healing.maintenance.collect_garbage()
                    assert not held_slivers(slot, blob_id)
            # Reads are told the blob is invalid.
            other = next(slot for slot in grid.peers if slot is not victim)
            pair = sorted(owned_pairs(grid.genesis.committee, other.peer_id, blob_id))[0]
            with trio.fail_after(STEP):
                try:
                    await light.call(
                        other.peer_id,
                        wire.GetSliverRequest(
                            blob_id=blob_id, pair_index=pair, sliver_kind=SliverKind.PRIMARY
                        ),
                        wire.GetSliverReply,
                        timeout=STEP,
                    )
                except RemoteError as error:
                    assert error.reason == "BLOB_INVALID"
                else:
                    raise AssertionError("an invalid blob's sliver was served")
            registry = victim.running.metrics.registry
            assert registry.get_sample_value("walrus_blobs_marked_invalid_total") == 1
