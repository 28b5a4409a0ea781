"""Pure rules of shard migration (core/migration.py): signed pulls, in-place reports, ordering."""

from __future__ import annotations

import dataclasses

import pytest

from walrus_p2p.core import wire
from walrus_p2p.core.committee import Committee, Member
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.migration import (
    MAX_PULL_BYTES,
    MIN_PULL_BYTES,
    PullShardRequest,
    ShardsInPlace,
    cursor_of,
    cursor_parts,
    gained_shards,
    moved_shards,
    reading_order,
)
from walrus_p2p.errors import VerificationError, WireError
from walrus_p2p.types import BlobId, Epoch, SliverKind

NETWORK = bytes(range(32))
N_SHARDS = 12


def identities(count: int) -> list[Identity]:
    return [Identity.from_seed(bytes([index + 1]) * 32) for index in range(count)]


def member(identity: Identity) -> Member:
    return Member.from_public_key(identity.public_key.raw, 1, ["/ip4/127.0.0.1/tcp/1"])


PEERS = identities(5)
EPOCH0 = Committee.create(Epoch(0), [member(p) for p in PEERS[:4]], N_SHARDS)
EPOCH1 = Committee.create(Epoch(1), [member(p) for p in PEERS], N_SHARDS, previous=EPOCH0)
NEWCOMER = PEERS[4]


def test_moved_shards_are_exactly_those_that_changed_owner_and_minimal() -> None:
    moved = moved_shards(EPOCH0, EPOCH1)
    for shard in range(N_SHARDS):
        changed = EPOCH0.peer_of(shard) != EPOCH1.peer_of(shard)
        assert (shard in moved) == changed
        if changed:
            assert moved[shard] == EPOCH0.peer_of(shard)
    gained = gained_shards(EPOCH0, EPOCH1, NEWCOMER.peer_id)
    # The newcomer owned nothing before: everything it owns now moved to it, and (minimal
    # moves) nothing else moved.
    assert set(gained) == set(EPOCH1.shards_of(NEWCOMER.peer_id)) == set(moved)
    assert gained_shards(EPOCH0, EPOCH1, PEERS[0].peer_id) == {}


def pull(signer: Identity, shard: int, **changes: object) -> PullShardRequest:
    request = PullShardRequest.create(
        signer,
        network_id=NETWORK,
        epoch=1,
        shard=shard,
        after=None,
        max_bytes=MIN_PULL_BYTES,
    )
    return dataclasses.replace(request, **changes) if changes else request


def test_pull_by_the_new_owner_verifies() -> None:
    shard = EPOCH1.shards_of(NEWCOMER.peer_id)[0]
    request = pull(NEWCOMER, shard)
    request.verify(NETWORK, EPOCH1, NEWCOMER.peer_id)
    assert wire.decode(wire.encode(request), PullShardRequest) == request


@pytest.mark.parametrize(
    "case",
    ["other network", "other epoch", "not the owner", "sent by another", "tampered", "budget"],
)
def test_pull_is_refused_unless_signed_by_the_owner_for_that_epoch(case: str) -> None:
    shard = EPOCH1.shards_of(NEWCOMER.peer_id)[0]
    request = pull(NEWCOMER, shard)
    committee, remote, network = EPOCH1, NEWCOMER.peer_id, NETWORK
    if case == "other network":
        network = bytes(32)
    elif case == "other epoch":
        committee = EPOCH0  # the newcomer owned nothing in epoch 0
    elif case == "not the owner":
        other = next(s for s in range(N_SHARDS) if EPOCH1.peer_of(s) != NEWCOMER.peer_id)
        request = pull(NEWCOMER, other)
    elif case == "sent by another":
        remote = PEERS[0].peer_id
    elif case == "tampered":
        other = next(s for s in range(N_SHARDS) if EPOCH1.peer_of(s) != NEWCOMER.peer_id)
        request = dataclasses.replace(request, body=dataclasses.replace(request.body, shard=other))
        # Re-sign nothing: the owner of ``other`` did not sign this.
        remote = EPOCH1.peer_of(other)
        request = dataclasses.replace(
            request, public_key=dict((p.peer_id, p) for p in PEERS)[remote].public_key.raw
        )
    elif case == "budget":
        request = PullShardRequest.create(
            NEWCOMER,
            network_id=NETWORK,
            epoch=1,
            shard=shard,
            after=None,
            max_bytes=MAX_PULL_BYTES + 1,
        )
    with pytest.raises(VerificationError):
        request.verify(network, committee, remote)


def test_in_place_report_verifies_only_for_owned_shards_of_its_epoch() -> None:
    owned = EPOCH1.shards_of(NEWCOMER.peer_id)
    report = ShardsInPlace.create(NEWCOMER, network_id=NETWORK, epoch=1, shards=owned)
    report.verify(NETWORK, EPOCH1)
    assert report.peer_id == NEWCOMER.peer_id
    assert wire.decode(wire.encode(report), ShardsInPlace) == report
    with pytest.raises(VerificationError):
        report.verify(NETWORK, EPOCH0)  # another epoch (and not a member there)
    with pytest.raises(VerificationError):
        report.verify(bytes(32), EPOCH1)
    other = next(s for s in range(N_SHARDS) if EPOCH1.peer_of(s) != NEWCOMER.peer_id)
    overclaim = ShardsInPlace.create(NEWCOMER, network_id=NETWORK, epoch=1, shards=[other])
    with pytest.raises(VerificationError):
        overclaim.verify(NETWORK, EPOCH1)
    outsider = ShardsInPlace.create(
        Identity.from_seed(b"\x99" * 32), network_id=NETWORK, epoch=1, shards=[0]
    )
    with pytest.raises(VerificationError):
        outsider.verify(NETWORK, EPOCH1)
    forged = dataclasses.replace(report, signature=bytes(64))
    with pytest.raises(VerificationError):
        forged.verify(NETWORK, EPOCH1)


def test_readers_ask_the_previous_owner_first_until_the_shard_is_in_place() -> None:
    moved = moved_shards(EPOCH0, EPOCH1)
    shard = next(iter(moved))
    still = next(s for s in range(N_SHARDS) if s not in moved)
    new, old = EPOCH1.peer_of(shard), EPOCH0.peer_of(shard)
    assert reading_order(shard, EPOCH1, EPOCH0, set()) == [old, new]
    assert reading_order(shard, EPOCH1, EPOCH0, {shard}) == [new, old]
    assert reading_order(still, EPOCH1, EPOCH0, set()) == [EPOCH1.peer_of(still)]
    assert reading_order(shard, EPOCH0, None, set()) == [EPOCH0.peer_of(shard)]


def test_cursor_round_trip_and_malformed_cursors() -> None:
    blob_id = BlobId(bytes(range(100, 132)))
    for kind in SliverKind:
        assert cursor_parts(cursor_of(blob_id, kind)) == (blob_id, kind)
    assert cursor_of(blob_id, SliverKind.PRIMARY) < cursor_of(blob_id, SliverKind.SECONDARY)
    with pytest.raises(WireError):
        cursor_parts(bytes(32))
    with pytest.raises(WireError):
        cursor_parts(bytes(32) + b"\x07")
