"""Golden vectors for the wire format: one or more fixed messages per registered type.

``tests/vectors/wire.json`` holds their canonical CBOR in hex; ``tests/unit/test_wire.py`` checks
that encoding the samples below still gives exactly those bytes, so any change to the format shows
up as a failing test. After an intended format change, regenerate the file with::

    .venv/bin/python -m walrus_p2p.testing.wire_vectors tests/vectors/wire.json

and say in the changelog why every peer has to upgrade.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from walrus_p2p.core import (
    blob_messages,
    challenge_messages,
    consensus,
    economy_messages,
    epochs,
    health,
    migration,
    records,
    wire,
)
from walrus_p2p.core.metadata import Metadata, SliverPairMetadata
from walrus_p2p.types import BlobId, Epoch, PeerId, SliverKind

FORMAT = "walrus-p2p wire vectors 1"


def _filled(length: int, start: int) -> bytes:
    """Recognisable, non-constant bytes: start, start+1, ... modulo 256."""
    return bytes((start + i) % 256 for i in range(length))


def sample_messages() -> dict[str, wire.Message]:
    """Fixed messages covering every registered type (and the optional/edge forms)."""
    blob_id = BlobId(_filled(32, 0xB0))
    network_id = _filled(32, 0x4E)
    metadata = Metadata(
        encoding_type=1,
        unencoded_length=1_000_000,
        hashes=tuple(
            SliverPairMetadata(primary_hash=_filled(32, 16 * i), secondary_hash=_filled(32, 7 * i))
            for i in range(4)
        ),
    )
    confirmation = wire.StorageConfirmation(
        network_id=network_id,
        epoch=7,
        blob_id=blob_id,
        permanent=True,
        public_key=_filled(32, 0xA0),
    )
    signed = wire.SignedStorageConfirmation(confirmation=confirmation, signature=_filled(64, 0x51))
    return {
        "ErrorReply": wire.ErrorReply(reason="SLIVER_NOT_FOUND", message="no sliver 3 of blob"),
        "StorageConfirmation": confirmation,
        "SignedStorageConfirmation": signed,
        "StoreMetadataRequest": wire.StoreMetadataRequest(blob_id=blob_id, metadata=metadata),
        "StoreMetadataReply": wire.StoreMetadataReply(),
        "StoreSliverRequest": wire.StoreSliverRequest(
            blob_id=blob_id, pair_index=3, sliver_kind=SliverKind.SECONDARY, data=_filled(40, 1)
        ),
        "StoreSliverReply": wire.StoreSliverReply(),
        "GetMetadataRequest": wire.GetMetadataRequest(blob_id=blob_id),
        "GetMetadataReply": wire.GetMetadataReply(metadata=metadata),
        "GetSliverRequest": wire.GetSliverRequest(
            blob_id=blob_id, pair_index=255, sliver_kind=SliverKind.PRIMARY
        ),
        "GetSliverReply": wire.GetSliverReply(data=_filled(300, 9)),
        "GetConfirmationRequest": wire.GetConfirmationRequest(
            blob_id=blob_id, epoch=2**40 + 1, permanent=True
        ),
        "GetConfirmationReply": wire.GetConfirmationReply(confirmation=signed),
        "GetRecoverySymbolRequest": wire.GetRecoverySymbolRequest(
            blob_id=blob_id, source_pair_index=17, source_kind=SliverKind.PRIMARY, target_index=200
        ),
        "GetRecoverySymbolReply": wire.GetRecoverySymbolReply(
            symbol=_filled(24, 0xEE), proof=(_filled(32, 1), _filled(32, 2), _filled(32, 3))
        ),
        "GetRecoverySymbolsRequest": wire.GetRecoverySymbolsRequest(
            blob_id=blob_id,
            source_kind=SliverKind.SECONDARY,
            source_pair_indices=(0, 17, 255),
            target_index=3,
        ),
        "GetRecoverySymbolsReply": wire.GetRecoverySymbolsReply(
            symbols=(
                wire.RecoverySymbolItem(
                    source_pair_index=17, symbol=_filled(24, 0xA0), proof=(_filled(32, 4),)
                ),
                wire.RecoverySymbolItem(
                    source_pair_index=255, symbol=_filled(24, 0xB0), proof=(_filled(32, 5),)
                ),
            )
        ),
        "BlobStatusRequest": wire.BlobStatusRequest(blob_id=blob_id),
        "BlobStatusReply": wire.BlobStatusReply(
            known=True,
            invalid=False,
            has_metadata=True,
            stored_pair_indices=(0, 5, 24, 255),
            certified_epoch=3,
            end_epoch=2**32,
        ),
        "BlobStatusReply/unknown": wire.BlobStatusReply(
            known=False,
            invalid=False,
            has_metadata=False,
            stored_pair_indices=(),
            certified_epoch=None,
            end_epoch=None,
        ),
        "PostBlobRecordsRequest": blob_messages.PostBlobRecordsRequest(
            blob_id=blob_id, records=(_filled(50, 3), _filled(20, 4))
        ),
        "PostBlobRecordsReply": blob_messages.PostBlobRecordsReply(accepted=2),
        "StoreBlobRequest": blob_messages.StoreBlobRequest(
            blob_id=blob_id,
            records=(_filled(50, 3),),
            metadata=metadata,
            slivers=(
                blob_messages.SliverItem(
                    pair_index=3, sliver_kind=SliverKind.PRIMARY, data=_filled(40, 1)
                ),
                blob_messages.SliverItem(
                    pair_index=3, sliver_kind=SliverKind.SECONDARY, data=_filled(24, 2)
                ),
            ),
            epoch=7,
            permanent=False,
        ),
        "StoreBlobReply": blob_messages.StoreBlobReply(confirmation=signed),
        "GetSliversRequest": blob_messages.GetSliversRequest(
            blob_id=blob_id, sliver_kind=SliverKind.PRIMARY, pair_indices=(0, 3, 255)
        ),
        "GetSliversReply": blob_messages.GetSliversReply(
            slivers=(
                blob_messages.SliverItem(
                    pair_index=3, sliver_kind=SliverKind.PRIMARY, data=_filled(40, 1)
                ),
            )
        ),
        "GetBlobRecordsRequest": blob_messages.GetBlobRecordsRequest(blob_id=blob_id),
        "GetBlobRecordsReply": blob_messages.GetBlobRecordsReply(records=(_filled(70, 5),)),
        "ListBlobRecordsRequest": blob_messages.ListBlobRecordsRequest(after=blob_id, limit=64),
        "ListBlobRecordsRequest/start": blob_messages.ListBlobRecordsRequest(after=None, limit=1),
        "ListBlobRecordsReply": blob_messages.ListBlobRecordsReply(
            entries=(
                blob_messages.BlobRecordsEntry(blob_id=blob_id, records=(_filled(30, 6),)),
                blob_messages.BlobRecordsEntry(
                    blob_id=BlobId(_filled(32, 0xC0)), records=(_filled(10, 7), _filled(11, 8))
                ),
            ),
            next_after=BlobId(_filled(32, 0xC0)),
        ),
        "ListBlobRecordsReply/last": blob_messages.ListBlobRecordsReply(
            entries=(), next_after=None
        ),
        "AttestInvalidBlobRequest": blob_messages.AttestInvalidBlobRequest(
            blob_id=blob_id,
            epoch=4,
            evidence=blob_messages.InconsistencyEvidence(
                target_kind=SliverKind.PRIMARY,
                target_index=2,
                symbols=tuple(
                    blob_messages.ProofSymbol(
                        source_index=index,
                        symbol=_filled(6, 0x30 + index),
                        proof=(_filled(32, index), _filled(32, index + 40)),
                    )
                    for index in range(3)
                ),
            ),
        ),
        "AttestInvalidBlobReply": blob_messages.AttestInvalidBlobReply(
            attestation=records.Signature(
                signer=PeerId("12D3KooWRBhwfeP2Y9CDkFRBAZ1pmxUadH36TKuk3KtKm5XXP8mA"),
                signature=_filled(64, 0x61),
            )
        ),
        "BlobRecordsBatch": blob_messages.BlobRecordsBatch(
            records=(_filled(30, 6), _filled(31, 7), _filled(32, 8))
        ),
        **_system_log_samples(blob_id, network_id),
    }


def _system_log_samples(blob_id: BlobId, network_id: bytes) -> dict[str, wire.Message]:
    """Records, agreement messages and epoch sync messages, with fixed (not real) signatures:
    the vectors pin the encoding, which does not check signatures."""
    peer_a = "12D3KooWBNfeuqzCyXZWYpRPAzN3RrjPXL8ed6k4WYFkEPWxP7K8"
    peer_b = "12D3KooWFebDLrcmXWK9bVaUcvfkuJeCddNTbJF6YnW8asJedi8p"
    key = _filled(32, 0x30)
    signature = _filled(64, 0x60)
    signatures = (
        records.Signature(PeerId(peer_a), signature),
        records.Signature(PeerId(peer_b), _filled(64, 0x61)),
    )
    candidacy_body = records.CandidacyBody(
        network_id, Epoch(4), key, ("/ip4/127.0.0.1/tcp/4001",), 3, 10**12
    )
    value = records.EpochValue(
        network_id=network_id,
        epoch=Epoch(5),
        start_time=1_800_000_000,
        members=(
            records.MemberEntry(PeerId(peer_a), key, 1, ("/ip4/127.0.0.1/tcp/4001",)),
            records.MemberEntry(PeerId(peer_b), _filled(32, 0x31), 2, ("/dns4/b/tcp/4002",)),
        ),
        shard_owners=(0, 1, 1, 0, 1),
        settlement=_filled(40, 0x78),
    )
    value_id = _filled(32, 0x77)
    vote_body = records.VoteBody(records.VoteKind.PRECOMMIT, network_id, Epoch(5), 2, value_id)
    proposal_body = records.ProposalBody(network_id, Epoch(5), 2, value_id, 1)
    epoch_record = records.EpochRecord(value, records.EpochCertificate(2, signatures))
    register_body = records.BlobRegisterBody(
        network_id, blob_id, key, 1_000_000, Epoch(3), Epoch(8), True
    )
    extend_body = records.BlobExtendBody(network_id, blob_id, key, Epoch(3), Epoch(12))
    delete_body = records.BlobDeleteBody(network_id, blob_id, key, Epoch(3))
    attribute_body = records.BlobAttributeBody(
        network_id,
        blob_id,
        key,
        Epoch(3),
        2,
        (
            records.AttributePair("content-type", "image/png"),
            records.AttributePair("link", '<https://example.org/>; rel="canonical"'),
        ),
    )
    return {
        "CandidacyBody": candidacy_body,
        "Candidacy": records.Candidacy(candidacy_body, signature),
        "EpochValue": value,
        "VoteBody": vote_body,
        "VoteBody/nil": records.VoteBody(records.VoteKind.PREVOTE, network_id, Epoch(5), 0, None),
        "ProposalBody": proposal_body,
        "EpochRecord": epoch_record,
        "BlobRegisterBody": register_body,
        "BlobRegister": records.BlobRegister(register_body, signature),
        "BlobExtendBody": extend_body,
        "BlobExtend": records.BlobExtend(extend_body, signature),
        "BlobDeleteBody": delete_body,
        "BlobDelete": records.BlobDelete(delete_body, signature),
        "BlobAttributeBody": attribute_body,
        "BlobAttribute": records.BlobAttribute(attribute_body, signature),
        "BlobAttributeBody/removed": records.BlobAttributeBody(
            network_id, blob_id, key, Epoch(3), 3, ()
        ),
        "BlobCertificate": records.BlobCertificate(
            network_id, blob_id, Epoch(3), False, signatures
        ),
        "InvalidBlobBody": records.InvalidBlobBody(network_id, Epoch(3), blob_id),
        "BlobInvalid": records.BlobInvalid(network_id, blob_id, Epoch(3), signatures),
        "GetEpochRecordsRequest": epochs.GetEpochRecordsRequest(from_epoch=Epoch(1), limit=16),
        "GetEpochRecordsReply": epochs.GetEpochRecordsReply(
            records=(wire.encode(epoch_record),), latest_epoch=Epoch(5)
        ),
        "Proposal": consensus.Proposal(proposal_body, value, PeerId(peer_a), signature),
        "Vote": consensus.Vote(vote_body, PeerId(peer_b), signature),
        "EpochMessagesRequest": epochs.EpochMessagesRequest(
            epoch=Epoch(4),
            round=1,
            incarnation=_filled(epochs.INCARNATION_LENGTH, 0x70),
            messages=(wire.encode(consensus.Vote(vote_body, PeerId(peer_b), signature)),),
        ),
        "EpochMessagesReply": epochs.EpochMessagesReply(
            epoch=Epoch(4), round=2, messages=(wire.encode(epoch_record),)
        ),
        **_migration_messages(network_id, blob_id, key, signature),
        **_economy_messages(network_id, blob_id, key, signatures),
        **_challenge_messages(network_id, blob_id, signatures),
        "PeerHealthRequest": health.PeerHealthRequest(epoch=Epoch(6)),
        "PeerHealthReply": health.PeerHealthReply(
            version="0.1.0",
            epoch=Epoch(6),
            uptime_seconds=86400,
            peers_connected=19,
            shards_in_place=(1, 4),
            shards_arriving=(9,),
            challenge_certified_epoch=Epoch(5),
        ),
        "PeerHealthReply/starting": health.PeerHealthReply(
            version="0.1.0",
            epoch=Epoch(0),
            uptime_seconds=0,
            peers_connected=0,
            shards_in_place=(),
            shards_arriving=(),
            challenge_certified_epoch=None,
        ),
    }


def _migration_messages(
    network_id: bytes, blob_id: BlobId, key: bytes, signature: bytes
) -> dict[str, wire.Message]:
    cursor = migration.cursor_of(blob_id, SliverKind.PRIMARY)
    pull_body = migration.PullShardBody(network_id, Epoch(6), 4, cursor, 4 * 1024 * 1024)
    in_place_body = migration.ShardsInPlaceBody(network_id, Epoch(6), key, (1, 4, 9))
    in_place = migration.ShardsInPlace(in_place_body, signature)
    return {
        "PullShardBody": pull_body,
        "PullShardBody/first": migration.PullShardBody(network_id, Epoch(6), 4, None, 65536),
        "PullShardRequest": migration.PullShardRequest(pull_body, key, signature),
        "PullShardReply": migration.PullShardReply(
            slivers=(
                migration.ShardSliver(blob_id, SliverKind.SECONDARY, _filled(24, 3)),
                migration.ShardSliver(BlobId(_filled(32, 0xC0)), SliverKind.PRIMARY, b"\x07"),
            ),
            next_after=migration.cursor_of(BlobId(_filled(32, 0xC0)), SliverKind.PRIMARY),
        ),
        "PullShardReply/last": migration.PullShardReply(slivers=(), next_after=None),
        "ShardsInPlaceBody": in_place_body,
        "ShardsInPlace": in_place,
        "GetShardsInPlaceRequest": migration.GetShardsInPlaceRequest(epoch=Epoch(6)),
        "GetShardsInPlaceReply": migration.GetShardsInPlaceReply(reports=(in_place,)),
    }


def _economy_messages(
    network_id: bytes, blob_id: BlobId, key: bytes, signatures: tuple[records.Signature, ...]
) -> dict[str, wire.Message]:
    em = economy_messages
    account, other = _filled(32, 0x90), _filled(32, 0x91)
    resource = _filled(32, 0x92)
    transfer = em.TransferBody(network_id, account, 3, Epoch(7), other, 10**9)
    signed = em.SignedOrder(wire.encode(transfer), _filled(64, 0x62))
    second = em.SignedOrder(
        wire.encode(em.TransferBody(network_id, account, 3, Epoch(7), key, 5)), _filled(64, 0x63)
    )
    certified = em.CertifiedOrder(signed, signatures, Epoch(8))
    encoded = wire.encode(certified)
    vote_body = em.ParameterVoteBody(network_id, key, Epoch(7), 100_000, 20_000, 2**40, 1500)
    return {
        "TransferBody": transfer,
        "BuyStorageBody": em.BuyStorageBody(
            network_id, account, 4, Epoch(7), 12, Epoch(8), Epoch(60), 12 * 52 * 100_000
        ),
        "ExtendStorageBody": em.ExtendStorageBody(
            network_id, account, 5, Epoch(7), resource, Epoch(70), 120_000
        ),
        "SplitStorageBody": em.SplitStorageBody(
            network_id, account, 6, Epoch(7), resource, em.SplitKind.EPOCH, 30
        ),
        "AttachBlobBody": em.AttachBlobBody(
            network_id, account, 7, Epoch(7), resource, blob_id, 5 * 2**20, True, 100_000
        ),
        "ReleaseStorageBody": em.ReleaseStorageBody(network_id, account, 8, Epoch(7), resource),
        "StakeBody": em.StakeBody(network_id, account, 9, Epoch(7), key, 2**62),
        "RequestWithdrawBody": em.RequestWithdrawBody(
            network_id, account, 10, Epoch(7), _filled(32, 0x93)
        ),
        "WithdrawBody": em.WithdrawBody(network_id, account, 11, Epoch(8), _filled(32, 0x93)),
        "ShareBlobBody": em.ShareBlobBody(network_id, account, 12, Epoch(8), resource, 5 * 10**9),
        "FundSharedBlobBody": em.FundSharedBlobBody(
            network_id, account, 13, Epoch(8), resource, 10**9
        ),
        "ExtendSharedBlobBody": em.ExtendSharedBlobBody(
            network_id, account, 14, Epoch(8), resource, 3
        ),
        "SignedOrder": signed,
        "OrderApprovalBody": em.OrderApprovalBody(network_id, Epoch(7), _filled(32, 0x94)),
        "CertifiedOrder": certified,
        "ConflictEvidence": em.ConflictEvidence(
            key, signed, _filled(64, 0x64), Epoch(7), second, _filled(64, 0x65), Epoch(7)
        ),
        "ParameterVoteBody": vote_body,
        "ParameterVote": em.ParameterVote(vote_body, _filled(64, 0x66)),
        "EpochSettlement": em.EpochSettlement(
            network_id,
            Epoch(7),
            123_456_789,
            (
                em.VoteEntry(signatures[0].signer, 100_000, 20_000, 2**40, 1500),
                em.VoteEntry(signatures[1].signer, 90_000, 25_000, 2**41, 0),
            ),
            (_filled(32, 0x10), _filled(32, 0x20)),
            (_filled(32, 0x30),),
            (signatures[1].signer,),
            (signatures[0].signer,),
            (_filled(64, 0x68), _filled(64, 0x69)),
            (Epoch(7), Epoch(3)),
            (em.SharedExtension(_filled(32, 0x40), blob_id, account, Epoch(12)),),
        ),
        "EpochSettlement/empty": em.EpochSettlement(network_id, Epoch(0), 0, (), (), (), ()),
        "ApproveOrderRequest": em.ApproveOrderRequest(signed),
        "ApproveOrderReply": em.ApproveOrderReply(Epoch(7), _filled(64, 0x67)),
        "SubmitCertificateRequest": em.SubmitCertificateRequest(certified),
        "SubmitCertificateReply": em.SubmitCertificateReply(em.SubmitOutcome.WAITING),
        "GetAccountRequest": em.GetAccountRequest(account, 10),
        "GetAccountReply": em.GetAccountReply(
            Epoch(7), 999 * 10**9, 4, _filled(32, 0x95), (encoded,), (encoded,)
        ),
        "GetAccountReply/new": em.GetAccountReply(Epoch(0), 0, 0, None, (), ()),
        "GetEconomyRequest": em.GetEconomyRequest(account),
        "GetEconomyRequest/summary": em.GetEconomyRequest(None),
        "GetEconomyReply": em.GetEconomyReply(
            epoch=Epoch(7),
            settled_epoch=Epoch(6),
            storage_price=100_000,
            write_price=20_000,
            total_stake=25 * 10**9,
            reward_fund=12,
            burned=3_000,
            pools=(em.PoolEntry(Epoch(7), 500), em.PoolEntry(Epoch(8), 499)),
            stakes=(
                em.StakeEntry(
                    _filled(32, 0x96),
                    key,
                    25 * 10**9,
                    1_234,
                    em.StakeStateCode.ACTIVE,
                    Epoch(3),
                    None,
                    None,
                ),
                em.StakeEntry(
                    _filled(32, 0x97),
                    key,
                    10**9,
                    0,
                    em.StakeStateCode.WITHDRAWABLE,
                    Epoch(2),
                    Epoch(6),
                    _filled(32, 0x98),
                ),
            ),
            resources=(
                em.ResourceEntry(resource, 5, Epoch(7), Epoch(12), None, False, False),
                em.ResourceEntry(_filled(32, 0x99), 2, Epoch(6), Epoch(9), blob_id, True, False),
            ),
        ),
        "GetEconomyReply/empty": em.GetEconomyReply(Epoch(0), None, 0, 0, 0, 0, 0, (), ()),
        "GetSharedBlobRequest": em.GetSharedBlobRequest(blob_id),
        "GetSharedBlobReply": em.GetSharedBlobReply(
            Epoch(7),
            100_000,
            (em.SharedBlobEntry(resource, blob_id, account, 5, Epoch(12), 4 * 10**9, 1),),
        ),
        "ListCertificatesRequest": em.ListCertificatesRequest(em.order_key(account, 3), 24),
        "ListCertificatesRequest/first": em.ListCertificatesRequest(None, 1),
        "ListCertificatesReply": em.ListCertificatesReply((encoded,), em.order_key(other, 0)),
        "ListCertificatesReply/last": em.ListCertificatesReply((), None),
        "GetLocksRequest": em.GetLocksRequest(Epoch(7), em.order_key(account, 3)),
        "GetLocksRequest/first": em.GetLocksRequest(Epoch(7), None),
        "GetLocksReply": em.GetLocksReply(
            Epoch(8),
            (wire.encode(signed), wire.encode(second)),
            (em.DecidedSlot(other, 2, _filled(32, 0x94)),),
            em.order_key(other, 0),
        ),
        "GetLocksReply/last": em.GetLocksReply(Epoch(8), (), (), None),
        "CertificatesBatch": em.CertificatesBatch((encoded, encoded)),
    }


def _challenge_messages(
    network_id: bytes, blob_id: BlobId, signatures: tuple[records.Signature, ...]
) -> dict[str, wire.Message]:
    cm = challenge_messages
    member = signatures[0].signer
    certificate = cm.AvailabilityCertificate(network_id, Epoch(9), member, signatures)
    return {
        "ChallengeTicketRequest": cm.ChallengeTicketRequest(Epoch(9)),
        "ChallengeTicketReply": cm.ChallengeTicketReply(
            Epoch(9), _filled(32, 0x71), (_filled(32, 0x01), bytes(blob_id))
        ),
        "ChallengeTicketReply/empty": cm.ChallengeTicketReply(Epoch(9), _filled(32, 0x72), ()),
        "ChallengeResponseRequest": cm.ChallengeResponseRequest(Epoch(9), _filled(32, 0x73)),
        "ChallengeResponseReply": cm.ChallengeResponseReply(_filled(64, 0x74)),
        "AvailabilityPassBody": cm.AvailabilityPassBody(network_id, Epoch(9), member),
        "AvailabilityCertificate": certificate,
        "PostAvailabilityCertificatesRequest": cm.PostAvailabilityCertificatesRequest(
            (certificate,)
        ),
        "PostAvailabilityCertificatesReply": cm.PostAvailabilityCertificatesReply(1),
        "GetAvailabilityCertificatesRequest": cm.GetAvailabilityCertificatesRequest(Epoch(9)),
        "GetAvailabilityCertificatesReply": cm.GetAvailabilityCertificatesReply(
            Epoch(9), (certificate,)
        ),
    }


def build_vectors() -> dict[str, object]:
    """The JSON document of ``tests/vectors/wire.json``."""
    return {
        "format": FORMAT,
        "regenerate": "python -m walrus_p2p.testing.wire_vectors tests/vectors/wire.json",
        "vectors": [
            {
                "name": name,
                "type": type(message).__name__,
                "type_id": wire.message_type_id(message),
                "hex": wire.encode(message).hex(),
            }
            for name, message in sample_messages().items()
        ],
    }


def render() -> str:
    return json.dumps(build_vectors(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        print("usage: python -m walrus_p2p.testing.wire_vectors PATH", file=sys.stderr)
        return 2
    Path(arguments[0]).write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
