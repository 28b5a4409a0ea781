"""Storage challenges, the pure part (docs/challenges.md): challenged blobs, shared symbols,
the response digest, the one pass over a store, PASS, certificates, sampling, the payout."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from economy_helpers import committee_of, identities

from walrus_p2p.cli import build_parser
from walrus_p2p.core import challenges, wire
from walrus_p2p.core.challenge_messages import AvailabilityCertificate
from walrus_p2p.core.challenge_payout import certified_members, certified_payout
from walrus_p2p.core.committee import Committee
from walrus_p2p.core.economy import split_payout
from walrus_p2p.core.encoding import EncodingConfig, expanded_matrix, pair_secondary_index
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.metadata import EncodedBlobWithMetadata, encode_blob
from walrus_p2p.core.records import Signature
from walrus_p2p.errors import VerificationError
from walrus_p2p.node.challenges import PassResult, Ticket, challenge_pass
from walrus_p2p.storage import DiskStore, open_store
from walrus_p2p.types import BlobId, Epoch, PeerId, SliverKind

NETWORK = bytes(range(32))
N = 10


def _blob(seed: int, size: int = 3000) -> tuple[bytes, EncodedBlobWithMetadata]:
    data = bytes((seed * 31 + i * 7) % 251 for i in range(size))
    return data, encode_blob(data, EncodingConfig.for_shards(N))


def _held(encoded: EncodedBlobWithMetadata, pairs: list[int]) -> challenges.HeldBlob:
    slivers = {
        pair: (
            bytes(encoded.encoded.primary_sliver(pair)),
            bytes(encoded.encoded.secondary_sliver(pair_secondary_index(pair, N))),
        )
        for pair in pairs
    }
    metadata = encoded.metadata
    return challenges.expand_held(encoded.blob_id, metadata.config, metadata.symbol_size, slivers)


# -- what is challenged -------------------------------------------------------------------


def test_challenged_blobs_are_certified_before_and_stored_in_the_epoch() -> None:
    check = challenges.is_challenged
    assert check(3, certified_epoch=2, end_epoch=10, invalid=False)
    assert not check(3, certified_epoch=3, end_epoch=10, invalid=False)  # certified this epoch
    assert not check(3, certified_epoch=None, end_epoch=10, invalid=False)  # not certified
    assert not check(3, certified_epoch=1, end_epoch=3, invalid=False)  # expired
    assert not check(3, certified_epoch=1, end_epoch=None, invalid=False)  # deleted
    assert not check(3, certified_epoch=1, end_epoch=10, invalid=True)  # invalid


def test_stable_shards_are_held_in_both_epochs() -> None:
    members = identities(4, 61)
    before = committee_of(members, [1, 1, 1, 1], 8, 1)
    after = committee_of(members[:3], [1, 1, 1], 8, 2)
    after = Committee.create(Epoch(2), after.members, 8, previous=before)
    first = members[0].peer_id
    stable = challenges.stable_shards(before, after, first)
    assert set(stable) == set(before.shards_of(first)) & set(after.shards_of(first))
    assert set(stable) < set(after.shards_of(first))  # it gained a shard of the one who left
    assert challenges.stable_shards(None, after, first) == ()
    assert challenges.stable_shards(before, after, members[3].peer_id) == ()


# -- shared symbols and the digest --------------------------------------------------------


def test_shared_symbols_are_the_intersections_of_the_expanded_matrix() -> None:
    data, encoded = _blob(1)
    matrix = expanded_matrix(EncodingConfig.for_shards(N), data)
    challenged, challenger = [1, 6], [3, 8]
    from_challenged = list(
        challenges.shared_symbols(
            challenged, challenger, _held(encoded, challenged), held_by_challenger=False
        )
    )
    from_challenger = list(
        challenges.shared_symbols(
            challenged, challenger, _held(encoded, challenger), held_by_challenger=True
        )
    )
    expected = []
    for p in challenged:
        for q in challenger:
            expected += [matrix[p, N - 1 - q], matrix[q, N - 1 - p]]
    assert [bytes(s) for s in from_challenged] == [bytes(s) for s in expected]
    assert [bytes(s) for s in from_challenger] == [bytes(s) for s in expected]


def test_response_key_binds_every_input() -> None:
    base = dict(
        network_id=NETWORK,
        epoch=4,
        challenger=PeerId("12D3KooWchallenger"),
        challenged=PeerId("12D3KooWchallenged"),
        nonce=b"\x01" * 32,
        blob_ids=(b"\x02" * 32,),
    )
    key = challenges.response_key(**base)  # type: ignore[arg-type]
    for name, value in [
        ("network_id", b"\x09" * 32),
        ("epoch", 5),
        ("challenger", PeerId("12D3KooWchallenged")),
        ("challenged", PeerId("12D3KooWchallenger")),
        ("nonce", b"\x03" * 32),
        ("blob_ids", (b"\x02" * 32, b"\x04" * 32)),
    ]:
        assert challenges.response_key(**{**base, name: value}) != key  # type: ignore[arg-type]


def test_digest_differs_when_one_symbol_differs() -> None:
    _, encoded = _blob(2)
    held = _held(encoded, [2])
    key = b"\x05" * 32

    def digest(blob: challenges.HeldBlob) -> bytes:
        hasher = challenges.ResponseHasher(key)
        hasher.add_blob(
            encoded.blob_id, challenges.shared_symbols([2], [7], blob, held_by_challenger=False)
        )
        return hasher.digest()

    damaged_row = held.rows[2].copy()
    damaged_row[N - 1 - 7, 0] ^= 1
    damaged = dataclasses.replace(held, rows={2: damaged_row})
    assert digest(held) == digest(_held(encoded, [2]))
    assert digest(held) != digest(damaged)
    missing = challenges.ResponseHasher(key)
    missing.add_missing(encoded.blob_id)
    assert missing.digest() != digest(held)


# -- one pass over a store ----------------------------------------------------------------


def _store_with(
    path: Path, blobs: list[EncodedBlobWithMetadata], shards: tuple[int, ...]
) -> DiskStore:
    store = open_store(path, capacity_bytes=1 << 28, fsync=False)
    for encoded in blobs:
        blob_id = encoded.blob_id
        store.put_metadata(blob_id, wire.encode(wire.GetMetadataReply(metadata=encoded.metadata)))
        for pair in challenges.challenged_pairs(blob_id, shards, N):
            store.put_sliver(
                blob_id, pair, SliverKind.PRIMARY, encoded.encoded.primary_sliver(pair)
            )
            secondary = encoded.encoded.secondary_sliver(pair_secondary_index(pair, N))
            store.put_sliver(blob_id, pair, SliverKind.SECONDARY, secondary)
    return store


def test_one_pass_each_side_agrees_and_a_deleted_sliver_fails(tmp_path: Path) -> None:
    blobs = [_blob(seed)[1] for seed in range(3)]
    ids = tuple(sorted(bytes(encoded.blob_id) for encoded in blobs))
    alice, bob = PeerId("alice"), PeerId("bob")
    shards = {alice: (0, 4, 7), bob: (1, 5)}
    stores = {name: _store_with(tmp_path / name, blobs, shards[name]) for name in shards}
    nonce_of_bob = os.urandom(32)  # bob challenges alice

    def run(
        name: PeerId, received: dict[PeerId, Ticket], given: dict[PeerId, Ticket]
    ) -> PassResult:
        return challenge_pass(
            stores[name],
            network_id=NETWORK,
            epoch=3,
            me=name,
            n_shards=N,
            mine=shards[name],
            received=received,
            given=given,
            stable_of=shards,
        )

    try:
        answer = run(alice, {bob: (nonce_of_bob, ids)}, {})
        check = run(bob, {}, {alice: (nonce_of_bob, ids)})
        assert answer.responses[bob] == check.expected[alice]
        assert answer.figures.blobs == 3
        pair = challenges.challenged_pairs(BlobId(ids[1]), shards[alice], N)[0]
        stores[alice].delete_sliver(BlobId(ids[1]), pair, SliverKind.SECONDARY)
        cheat = run(alice, {bob: (nonce_of_bob, ids)}, {})
        assert cheat.responses[bob] != check.expected[alice]
        # A challenger that lost a listed blob itself cannot judge.
        stores[bob].delete_sliver(
            BlobId(ids[0]),
            challenges.challenged_pairs(BlobId(ids[0]), shards[bob], N)[0],
            SliverKind.PRIMARY,
        )
        assert alice in run(bob, {}, {alice: (nonce_of_bob, ids)}).unverifiable
    finally:
        for store in stores.values():
            store.close()


# -- PASS and certificates ----------------------------------------------------------------


def _certificate(
    members: list[Identity], committee: Committee, member: Identity, signers: list[Identity]
) -> AvailabilityCertificate:
    epoch = int(committee.epoch)
    passes = {
        signer.peer_id: challenges.sign_pass(signer, NETWORK, epoch, member.peer_id)
        for signer in signers
    }
    return challenges.make_certificate(NETWORK, epoch, member.peer_id, passes)


def test_certificate_needs_a_quorum_of_valid_passes() -> None:
    members = identities(4, 62)
    committee = committee_of(members, [1, 1, 1, 1], 8, 5)

    def lookup(epoch: Epoch) -> Committee | None:
        return committee if epoch == 5 else None

    good = _certificate(members, committee, members[0], members[:3])
    assert challenges.verify_availability_certificate(good, NETWORK, lookup) == 6
    assert wire.decode(wire.encode(good), AvailabilityCertificate) == good

    short = _certificate(members, committee, members[0], members[:2])
    with pytest.raises(VerificationError, match="not enough"):
        challenges.verify_availability_certificate(short, NETWORK, lookup)

    forged_signature = Signature(members[2].peer_id, b"\x00" * 64)
    forged = dataclasses.replace(good, passes=tuple(sorted([*short.passes, forged_signature])))
    with pytest.raises(VerificationError, match="bad signature"):
        challenges.verify_availability_certificate(forged, NETWORK, lookup)

    other_member = dataclasses.replace(good, member=members[1].peer_id)
    with pytest.raises(VerificationError, match="bad signature"):
        challenges.verify_availability_certificate(other_member, NETWORK, lookup)

    wrong_epoch = dataclasses.replace(good, epoch=Epoch(6))
    with pytest.raises(VerificationError, match="no committee"):
        challenges.verify_availability_certificate(wrong_epoch, NETWORK, lookup)

    with pytest.raises(VerificationError, match="another network"):
        challenges.verify_availability_certificate(good, b"\x07" * 32, lookup)

    outsider = identities(1, 63)[0]
    stranger = _certificate(members, committee, outsider, members[:3])
    with pytest.raises(VerificationError, match="not a member"):
        challenges.verify_availability_certificate(stranger, NETWORK, lookup)

    assert challenges.is_valid_pass(
        committee,
        members[1].peer_id,
        challenges.sign_pass(members[1], NETWORK, 5, members[0].peer_id),
        network_id=NETWORK,
        member=members[0].peer_id,
    )
    assert not challenges.is_valid_pass(
        committee,
        outsider.peer_id,
        challenges.sign_pass(outsider, NETWORK, 5, members[0].peer_id),
        network_id=NETWORK,
        member=members[0].peer_id,
    )


# -- sampling and detection ---------------------------------------------------------------


def test_sample_is_all_when_it_fits_and_a_seeded_subset_otherwise() -> None:
    ids = [bytes([i]) * 32 for i in range(50)]
    assert challenges.sample_blob_ids(reversed(ids), 64, b"s") == tuple(ids)
    first = challenges.sample_blob_ids(ids, 10, b"seed one")
    assert len(first) == 10 and list(first) == sorted(first) and set(first) <= set(ids)
    assert challenges.sample_blob_ids(ids, 10, b"seed one") == first
    assert challenges.sample_blob_ids(ids, 10, b"seed two") != first


def test_detection_probability() -> None:
    assert challenges.miss_probability(1000, 0, 64) == 1.0
    assert challenges.miss_probability(1000, 1000, 1) == 0.0
    assert challenges.miss_probability(100, 1, 10) == pytest.approx(0.9)
    # Dropping 10 % of 100 000 blobs, one challenger sampling 4096: missed with < 1e-180.
    assert challenges.miss_probability(100_000, 10_000, 4096) < 1e-180
    assert challenges.pass_probability(0.5, 4, 4) == pytest.approx(1 / 16)
    assert challenges.pass_probability(0.5, 4, 0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        challenges.miss_probability(10, 11, 1)


# -- the payout ---------------------------------------------------------------------------


def test_payout_burns_the_shares_of_uncertified_members() -> None:
    members = identities(4, 64)
    committee = committee_of(members, [1, 1, 1, 1], 8, 5)
    ids = [member.peer_id for member in members]
    stakes = {ids[1]: {b"s" * 32: 500}, ids[2]: {b"t" * 32: 100}}
    commissions = {ids[1]: 1000}
    plain = split_payout(10_000, committee, commissions=commissions, stakes=stakes)
    result = certified_payout(
        10_000, committee, {ids[0], ids[3]}, commissions=commissions, stakes=stakes
    )
    assert result.split.total == 10_000
    assert result.unpaid == tuple(sorted([ids[1], ids[2]]))
    assert ids[1] not in result.split.member_rewards
    assert b"s" * 32 not in result.split.staker_rewards
    assert b"t" * 32 not in result.split.staker_rewards
    assert result.split.member_rewards[ids[0]] == plain.member_rewards[ids[0]]
    withheld = plain.member_rewards[ids[1]] + plain.staker_rewards[b"s" * 32]
    withheld += plain.staker_rewards[b"t" * 32]
    assert result.withheld == withheld
    assert result.split.burned == plain.burned + withheld
    everyone = certified_payout(10_000, committee, set(ids), commissions={}, stakes={})
    assert everyone.unpaid == () and everyone.withheld == 0


def test_certified_members_of_an_epoch() -> None:
    members = identities(4, 65)
    committee = committee_of(members, [1, 1, 1, 1], 8, 5)
    certificate = _certificate(members, committee, members[0], members[:3])
    later = dataclasses.replace(certificate, epoch=Epoch(6))
    assert certified_members([certificate, later], 5) == {members[0].peer_id}


def test_the_challenges_command_parses_its_options() -> None:
    parser = build_parser()
    arguments = parser.parse_args(["challenges", "--epoch", "3", "--json"])
    assert arguments.epoch == 3 and arguments.json
    assert parser.parse_args(["challenges"]).epoch is None
    with pytest.raises(SystemExit):
        parser.parse_args(["challenges", "--epoch", "-1"])
