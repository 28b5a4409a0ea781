"""System-log records: signatures, shard-weight quorums, the epoch chain and the blob merge."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walrus_p2p.core import records, wire
from walrus_p2p.core.committee import Committee, Member
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.records import (
    BlobCertificate,
    BlobInvalid,
    BlobRecord,
    BlobState,
    Candidacy,
    EpochCertificate,
    EpochRecord,
    EpochValue,
    Signature,
    VoteBody,
    VoteKind,
)
from walrus_p2p.errors import VerificationError
from walrus_p2p.types import BlobId, Epoch

NETWORK = bytes(range(32))
OTHER_NETWORK = bytes(range(1, 33))
BLOB = BlobId(bytes([7]) * 32)


def make_identities(count: int, salt: int = 0) -> list[Identity]:
    return [Identity.from_seed(bytes([salt, index + 1]) * 16) for index in range(count)]


def make_committee(epoch: int, identities: Sequence[Identity], shards: Sequence[int]) -> Committee:
    """A committee whose i-th identity holds ``shards[i]`` shards (weight = shard count)."""
    members = [
        Member(ident.peer_id, ident.public_key.raw, count, (f"/ip4/10.0.0.{i}/tcp/4001",))
        for i, (ident, count) in enumerate(zip(identities, shards, strict=True))
    ]
    shard_map = [
        ident.peer_id for ident, count in zip(identities, shards, strict=True) for _ in range(count)
    ]
    return Committee(epoch=Epoch(epoch), members=tuple(members), shard_map=tuple(shard_map))


def certificate_by(
    signers: Sequence[Identity], epoch: int, blob_id: bytes = BLOB, permanent: bool = False
) -> BlobCertificate:
    confirmations = [
        records.confirmation_signature(
            records.sign_confirmation(
                signer, network_id=NETWORK, epoch=epoch, blob_id=blob_id, permanent=permanent
            )
        )
        for signer in signers
    ]
    return BlobCertificate(NETWORK, BlobId(blob_id), Epoch(epoch), permanent, tuple(confirmations))


def invalid_by(signers: Sequence[Identity], epoch: int) -> BlobInvalid:
    attestations = tuple(
        records.sign_invalid_blob(signer, network_id=NETWORK, epoch=epoch, blob_id=BLOB)
        for signer in signers
    )
    return BlobInvalid(NETWORK, BLOB, Epoch(epoch), attestations)


def certify(
    value: EpochValue, signers: Sequence[Identity], round_: int = 0, signed_round: int | None = None
) -> EpochRecord:
    """An epoch record whose certificate holds precommits of ``signers``."""
    body = VoteBody(
        VoteKind.PRECOMMIT,
        value.network_id,
        value.epoch,
        round_ if signed_round is None else signed_round,
        value.value_id(),
    )
    precommits = tuple(
        Signature(signer.peer_id, signer.sign(records.PRECOMMIT_CONTEXT, wire.signing_bytes(body)))
        for signer in signers
    )
    return EpochRecord(value, EpochCertificate(round_, precommits))


# Five peers with 3, 3, 2, 1, 1 of n = 10 shards: quorum needs 7 shards, validity 4.
PEERS = make_identities(5)
A, B, C, D, E = PEERS
COMMITTEE = make_committee(1, PEERS, [3, 3, 2, 1, 1])
OWNER, OTHER_OWNER = make_identities(2, salt=9)


def lookup(epoch: Epoch) -> Committee | None:
    return replace_epoch(COMMITTEE, epoch) if epoch in (1, 2) else None


def replace_epoch(committee: Committee, epoch: int) -> Committee:
    return Committee(epoch=Epoch(epoch), members=committee.members, shard_map=committee.shard_map)


# --------------------------------------------------------------------------------------------
# Quorum arithmetic at shard-weight boundaries


@pytest.mark.parametrize(
    ("signers", "accepted"),
    [
        ([A, B], False),  # 6 shards, 2 of 5 peers
        ([C, D, E], False),  # 4 shards, 3 of 5 peers: a majority of peers is not a quorum
        ([A, B, D], True),  # 7 shards: 3 * 7 >= 2 * 10 + 1
        ([A, C, D, E], True),  # 7 shards
        ([B, C, D], False),  # 6 shards
        (PEERS, True),
    ],
)
def test_certificate_quorum_counts_shards_not_peers(
    signers: list[Identity], accepted: bool
) -> None:
    certificate = certificate_by(signers, 1)
    if accepted:
        certificate.verify(NETWORK, COMMITTEE)
    else:
        with pytest.raises(VerificationError, match="not enough"):
            certificate.verify(NETWORK, COMMITTEE)


@pytest.mark.parametrize(
    ("signers", "accepted"),
    [([C, D], False), ([D, E], False), ([A], False), ([A, D], True), ([C, D, E], True)],
)
def test_invalid_blob_needs_validity_weight(signers: list[Identity], accepted: bool) -> None:
    record = invalid_by(signers, 1)  # validity: 3w >= n + 1, so w >= 4 of 10
    if accepted:
        record.verify(NETWORK, COMMITTEE)
    else:
        with pytest.raises(VerificationError, match="not enough"):
            record.verify(NETWORK, COMMITTEE)


@pytest.mark.parametrize("n", [4, 5, 6, 7, 10, 13, 16])
def test_quorum_boundary_for_each_n(n: int) -> None:
    """One shard per peer: exactly ceil((2n+1)/3) signers certify, one fewer do not."""
    peers = make_identities(n, salt=3)
    committee = make_committee(1, peers, [1] * n)
    need = -(-(2 * n + 1) // 3)
    certificate_by(peers[:need], 1).verify(NETWORK, committee)
    with pytest.raises(VerificationError):
        certificate_by(peers[: need - 1], 1).verify(NETWORK, committee)
    validity = -(-(n + 1) // 3)
    invalid_by(peers[:validity], 1).verify(NETWORK, committee)
    with pytest.raises(VerificationError):
        invalid_by(peers[: validity - 1], 1).verify(NETWORK, committee)


def test_repeated_signer_cannot_inflate_weight() -> None:
    certificate = certificate_by([A, B], 1)
    padded = BlobCertificate(
        NETWORK, BLOB, Epoch(1), False, (*certificate.confirmations, certificate.confirmations[0])
    )
    with pytest.raises(VerificationError, match="twice"):
        padded.verify(NETWORK, COMMITTEE)


# --------------------------------------------------------------------------------------------
# Forged and wrongly signed records


def test_certificate_rejects_outsider_wrong_blob_and_wrong_epoch() -> None:
    outsider = make_identities(1, salt=5)[0]
    with pytest.raises(VerificationError, match="bad signature"):
        certificate_by([A, B, outsider], 1).verify(NETWORK, COMMITTEE)
    # A's confirmation of another blob pasted into this certificate.
    good = certificate_by([A, B, D], 1)
    other = certificate_by([A], 1, blob_id=bytes(32))
    pasted = BlobCertificate(
        NETWORK, BLOB, Epoch(1), False, (other.confirmations[0], *good.confirmations[1:])
    )
    with pytest.raises(VerificationError, match="bad signature"):
        pasted.verify(NETWORK, COMMITTEE)
    # Permanence is signed: a deletable certificate cannot be relabelled permanent.
    with pytest.raises(VerificationError):
        replace(good, permanent=True).verify(NETWORK, COMMITTEE)
    with pytest.raises(VerificationError, match="wrong committee"):
        good.verify(NETWORK, replace_epoch(COMMITTEE, 2))
    with pytest.raises(VerificationError, match="another network"):
        good.verify(OTHER_NETWORK, COMMITTEE)


def test_owner_records_reject_forgery_and_tampering() -> None:
    register = records.sign_register(
        OWNER,
        network_id=NETWORK,
        blob_id=BLOB,
        size=100,
        start_epoch=1,
        end_epoch=5,
        deletable=True,
    )
    register.verify(NETWORK)
    # Tampered field.
    tampered = replace(register, body=replace(register.body, end_epoch=Epoch(50)))
    with pytest.raises(VerificationError):
        tampered.verify(NETWORK)
    # Someone else signs a record naming OWNER as the owner.
    forged_body = replace(register.body, size=200)
    forged = replace(
        register,
        body=forged_body,
        signature=OTHER_OWNER.sign(records.BLOB_REGISTER_CONTEXT, wire.signing_bytes(forged_body)),
    )
    with pytest.raises(VerificationError):
        forged.verify(NETWORK)
    # A signature for one purpose does not verify as another (same owner, extend context).
    cross = replace(
        register,
        signature=OWNER.sign(records.BLOB_EXTEND_CONTEXT, wire.signing_bytes(register.body)),
    )
    with pytest.raises(VerificationError):
        cross.verify(NETWORK)
    with pytest.raises(VerificationError, match="another network"):
        register.verify(OTHER_NETWORK)
    delete = records.sign_delete(OWNER, network_id=NETWORK, blob_id=BLOB, start_epoch=1)
    delete.verify(NETWORK)
    with pytest.raises(VerificationError):
        replace(delete, body=replace(delete.body, owner=OTHER_OWNER.public_key.raw)).verify(NETWORK)


def test_with_verified_rejects_and_keeps_state() -> None:
    state = BlobState.empty(BLOB)
    bad = certificate_by([A, B], 1)
    with pytest.raises(VerificationError):
        state.with_verified(bad, NETWORK, lookup)
    unknown_epoch = certificate_by([A, B, D], 7)
    with pytest.raises(VerificationError, match="no committee"):
        state.with_verified(unknown_epoch, NETWORK, lookup)
    good = state.with_verified(certificate_by([A, B, D], 1), NETWORK, lookup)
    assert good.certified_epoch == 1
    assert state.certified_epoch is None


def test_candidacy_signed_by_candidate() -> None:
    candidacy = Candidacy.create(
        A, network_id=NETWORK, epoch=3, addresses=["/ip4/1.2.3.4/tcp/1"], weight=5, capacity=10**9
    )
    candidacy.verify(NETWORK)
    assert candidacy.peer_id == A.peer_id
    assert candidacy.member().weight == 5
    forged = replace(candidacy, body=replace(candidacy.body, public_key=B.public_key.raw))
    with pytest.raises(VerificationError):
        forged.verify(NETWORK)
    later = Candidacy.create(A, network_id=NETWORK, epoch=4, addresses=[], weight=1, capacity=1)
    assert records.newer_candidacy(candidacy, later) is later
    assert records.newer_candidacy(later, candidacy) is later


# --------------------------------------------------------------------------------------------
# Epoch chain


GENESIS = make_committee(0, PEERS, [3, 3, 2, 1, 1])
NEXT_PEERS = make_identities(4, salt=1)


def build_chain() -> list[EpochRecord]:
    """Epoch 1: a new committee (certified by genesis); 2 and 3 rotate back and forth."""
    committees = [
        GENESIS,
        make_committee(1, NEXT_PEERS, [4, 3, 2, 1]),
        make_committee(2, PEERS, [2, 2, 2, 2, 2]),
        make_committee(3, NEXT_PEERS, [1, 3, 3, 3]),
    ]
    signer_sets = [[A, B, D], NEXT_PEERS[:2], PEERS[1:], NEXT_PEERS[1:]]
    chain = []
    for epoch in (1, 2, 3):
        value = EpochValue.from_committee(NETWORK, committees[epoch], 1_000 + 100 * epoch)
        chain.append(certify(value, signer_sets[epoch - 1], round_=epoch % 2))
    return chain


def test_chain_verifies_to_latest_committee() -> None:
    chain = build_chain()
    latest = records.verify_epoch_chain(GENESIS, chain, NETWORK)
    assert latest.epoch == 3
    assert latest == chain[-1].committee
    assert records.verify_epoch_chain(GENESIS, [], NETWORK) == GENESIS


def test_chain_rejects_tampered_forged_or_reordered_records() -> None:
    chain = build_chain()
    value = chain[1].value
    moved = replace(
        value,
        members=(replace(value.members[0], addresses=("/ip4/6.6.6.6/tcp/1",)), *value.members[1:]),
    )
    tampered = [chain[0], replace(chain[1], value=moved), chain[2]]
    with pytest.raises(VerificationError, match="bad signature"):
        records.verify_epoch_chain(GENESIS, tampered, NETWORK)
    # The shard map changed: more shards for the second member.
    owners = (1, *value.shard_owners[1:])
    with pytest.raises(VerificationError):
        records.verify_epoch_chain(
            GENESIS,
            [chain[0], replace(chain[1], value=replace(value, shard_owners=owners))],
            NETWORK,
        )
    # Signed by the committee it creates instead of the one before it.
    forged = certify(chain[0].value, NEXT_PEERS)
    with pytest.raises(VerificationError):
        records.verify_epoch_chain(GENESIS, [forged, *chain[1:]], NETWORK)
    # Precommits of round 0 presented as a round-1 certificate.
    wrong_round = certify(chain[0].value, [A, B, D], round_=1, signed_round=0)
    with pytest.raises(VerificationError):
        records.verify_epoch_chain(GENESIS, [wrong_round], NETWORK)
    with pytest.raises(VerificationError, match="does not follow"):
        records.verify_epoch_chain(GENESIS, [chain[1]], NETWORK)
    with pytest.raises(VerificationError, match="does not follow"):
        records.verify_epoch_chain(GENESIS, [chain[0], chain[2], chain[1]], NETWORK)
    with pytest.raises(VerificationError, match="another network"):
        records.verify_epoch_chain(GENESIS, chain, OTHER_NETWORK)
    with pytest.raises(VerificationError, match="start later"):
        records.verify_epoch_chain(GENESIS, chain, NETWORK, genesis_time=1_100)
    records.verify_epoch_chain(GENESIS, chain, NETWORK, genesis_time=1_099)


def test_epoch_value_rejects_unsorted_members() -> None:
    value = build_chain()[0].value
    swapped = replace(value, members=tuple(reversed(value.members)))
    with pytest.raises(VerificationError, match="sorted"):
        _ = swapped.committee


def test_records_round_trip_on_the_wire() -> None:
    chain = build_chain()
    register = records.sign_register(
        OWNER,
        network_id=NETWORK,
        blob_id=BLOB,
        size=1,
        start_epoch=0,
        end_epoch=1,
        deletable=False,
    )
    candidacy = Candidacy.create(A, network_id=NETWORK, epoch=1, addresses=[], weight=1, capacity=2)
    for item in [*chain, register, certificate_by(PEERS, 1), invalid_by([A, D], 1), candidacy]:
        data = wire.encode(item)
        assert wire.decode(data, type(item)) == item
    decoded = wire.decode(wire.encode(chain[0]), EpochRecord)
    decoded.verify(GENESIS, NETWORK)


# --------------------------------------------------------------------------------------------
# The merge: idempotent and independent of arrival order


def blob_records() -> list[BlobRecord]:
    def register(owner: Identity, start: int, end: int, deletable: bool) -> BlobRecord:
        return records.sign_register(
            owner,
            network_id=NETWORK,
            blob_id=BLOB,
            size=1000,
            start_epoch=start,
            end_epoch=end,
            deletable=deletable,
        )

    def extend(owner: Identity, start: int, end: int) -> BlobRecord:
        return records.sign_extend(
            owner, network_id=NETWORK, blob_id=BLOB, start_epoch=start, end_epoch=end
        )

    return [
        register(OWNER, 1, 5, True),  # 0
        register(OTHER_OWNER, 1, 4, False),  # 1: permanent, cannot be deleted
        extend(OWNER, 1, 9),  # 2
        extend(OWNER, 1, 7),  # 3: a smaller extend arriving later changes nothing
        records.sign_delete(OWNER, network_id=NETWORK, blob_id=BLOB, start_epoch=1),  # 4
        records.sign_delete(OTHER_OWNER, network_id=NETWORK, blob_id=BLOB, start_epoch=1),  # 5
        certificate_by([A, B, D], 2),  # 6
        certificate_by([A, C, D, E], 1),  # 7: earliest deletable certificate
        certificate_by([A, B, C], 1),  # 8: same epoch: ties broken by encoding
        certificate_by([B, C, D, E], 2, permanent=True),  # 9
        extend(OTHER_OWNER, 1, 6),  # 10
        invalid_by([A, D], 2),  # 11
        invalid_by([C, D, E], 1),  # 12
    ]


ALL = blob_records()


def merged(items: Sequence[BlobRecord]) -> BlobState:
    return records.merge_records(BLOB, items)


def test_all_records_verify() -> None:
    for item in ALL:
        records.verify_blob_record(item, NETWORK, lookup)


def test_merge_result_is_the_expected_state() -> None:
    without_invalid = merged(ALL[:11])
    assert without_invalid.status(current_epoch=3) == "certified"
    # OWNER's registration is deleted; OTHER_OWNER's permanent one ignores its delete.
    assert without_invalid.end_epoch == 6
    assert without_invalid.is_permanent
    assert without_invalid.certified_epoch == 1
    assert without_invalid.deletable_certificate is not None
    assert without_invalid.deletable_certificate.epoch == 1
    assert without_invalid.status(current_epoch=6) == "expired"
    only_deletable = merged([ALL[0], ALL[2], ALL[4]])
    assert only_deletable.status(current_epoch=3) == "deleted"
    assert merged([ALL[0], ALL[2]]).end_epoch == 9
    assert merged([ALL[2]]).status(current_epoch=0) == "unknown"  # an extend alone is nothing
    full = merged(ALL)
    assert full.status(current_epoch=3) == "invalid"
    assert full.invalid == ALL[12]
    assert not full.is_stored_in(2)


def test_merge_in_every_order_of_six_records() -> None:
    chosen = [ALL[i] for i in (0, 2, 3, 4, 7, 8)]
    reference = merged(chosen)
    for order in itertools.permutations(chosen):
        assert merged(order) == reference


def test_extend_by_someone_else_does_not_extend() -> None:
    foreign = records.sign_extend(
        OTHER_OWNER, network_id=NETWORK, blob_id=BLOB, start_epoch=1, end_epoch=99
    )
    assert merged([ALL[0], foreign]).end_epoch == 5


@settings(max_examples=60, deadline=None)
@given(st.permutations(ALL), st.lists(st.sampled_from(ALL), max_size=8))
def test_merge_any_order_with_duplicates(order: list[BlobRecord], extra: list[BlobRecord]) -> None:
    reference = merged(ALL)
    assert merged(order) == reference
    assert merged([*order, *extra]) == reference  # duplicates change nothing


subsets = st.lists(st.sampled_from(ALL), max_size=6)


@settings(max_examples=60, deadline=None)
@given(subsets, subsets, subsets)
def test_join_is_a_semilattice(
    first: list[BlobRecord], second: list[BlobRecord], third: list[BlobRecord]
) -> None:
    x, y, z = merged(first), merged(second), merged(third)
    assert x.join(x) == x
    assert x.join(y) == y.join(x)
    assert x.join(y).join(z) == x.join(y.join(z))
    assert x.join(y) == merged([*first, *second])


# Golden digests (blake3 of the wire encoding): the encodings and signed bytes of these records
# are part of the protocol. If one changes on purpose, every peer must change with it.
GOLDEN = {
    "epoch_record": "81e9d644bad43c5369ec3302070ba198bc8a62707c4d47ffbcbe05311f5846bb",
    "register": "4d9400fb64013f07cdac1292fda6e8f7cdbbc5019af034ab2df510303c859dcf",
    "certificate": "f86f09ddbc3356d959c5c9eacd87e098ae064ba18c01b4769c8da1b40cb64f8e",
    "invalid": "66c51044a522c1f084766bfba0bf7548ff5dd7d8b436ae5eff8fa4337d027c76",
    "candidacy": "e74dab90bc2f38f899012f19a23b2c8bc66ed834fd747e01fa391faa03d05726",
}


def test_golden_record_encodings() -> None:
    items: dict[str, wire.Message] = {
        "epoch_record": build_chain()[0],
        "register": records.sign_register(
            OWNER,
            network_id=NETWORK,
            blob_id=BLOB,
            size=1000,
            start_epoch=1,
            end_epoch=5,
            deletable=True,
        ),
        "certificate": certificate_by([A, B, D], 1),
        "invalid": invalid_by([A, D], 1),
        "candidacy": Candidacy.create(
            A,
            network_id=NETWORK,
            epoch=3,
            addresses=["/ip4/1.2.3.4/tcp/1"],
            weight=5,
            capacity=10**9,
        ),
    }
    digests = {name: blake3.blake3(wire.encode(item)).hexdigest() for name, item in items.items()}
    assert digests == GOLDEN


@pytest.mark.parametrize("end_epoch", [2**63, 11_707_992_513_525_541_956, 2**64 - 1])
def test_owner_records_beyond_the_storable_epochs_are_refused(end_epoch: int) -> None:
    """Fuzzing regression (docs/testing.md, "Fuzzing"): a self-signed register record ending at
    the epoch the fuzzer sent (11707992513525541956) verified, was merged and announced, and the
    store's refusal of the epoch stopped every peer that merged it from gossip."""
    register = records.sign_register(
        OWNER,
        network_id=NETWORK,
        blob_id=BLOB,
        size=1,
        start_epoch=0,
        end_epoch=end_epoch,
        deletable=True,
    )
    register.verify(NETWORK)  # the signature alone is fine
    with pytest.raises(VerificationError, match="beyond epoch"):
        records.verify_blob_record(register, NETWORK, lambda epoch: None)
    extend = records.sign_extend(
        OWNER, network_id=NETWORK, blob_id=BLOB, start_epoch=end_epoch, end_epoch=end_epoch
    )
    with pytest.raises(VerificationError, match="beyond epoch"):
        records.verify_blob_record(extend, NETWORK, lambda epoch: None)
    ordinary = records.sign_register(
        OWNER,
        network_id=NETWORK,
        blob_id=BLOB,
        size=1,
        start_epoch=0,
        end_epoch=2**63 - 1,
        deletable=True,
    )
    records.verify_blob_record(ordinary, NETWORK, lambda epoch: None)
