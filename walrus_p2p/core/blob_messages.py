"""Requests that carry signed blob records directly to the storage peers that need them.

docs/design.md §5 and §7: gossip is costly in py-libp2p, so a writer pushes a blob's register record
and its certificate straight to the committee over streams, and a reader asks any peer for a
blob's records and verifies them itself. Each record travels as its own canonical wire encoding (a
:data:`walrus_p2p.core.records.BLOB_RECORD_TYPES` message) so it can be verified, stored and
forwarded byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from walrus_p2p.core import merkle, records, wire
from walrus_p2p.core.encoding import SliverType
from walrus_p2p.core.metadata import InconsistencyProof, Metadata, RecoverySymbol
from walrus_p2p.core.wire import (
    MAX_SHARDS,
    BlobIdBytes,
    BytesSpec,
    ListSpec,
    MerkleProof,
    Message,
    PairIndex,
    SymbolData,
    record,
    record_spec,
    register,
)
from walrus_p2p.errors import WireError
from walrus_p2p.types import SliverKind

MAX_RECORD_SIZE = 64 * 1024
"""A certificate of 256 signatures is ~25 KiB; this leaves room without allowing floods."""
MAX_RECORDS_PER_MESSAGE = 64

EncodedRecords = Annotated[
    tuple[bytes, ...],
    ListSpec(BytesSpec(min_length=1, max_length=MAX_RECORD_SIZE), MAX_RECORDS_PER_MESSAGE),
]


@register(24)
@dataclass(frozen=True, slots=True)
class PostBlobRecordsRequest(Message):
    """Verified-then-merged by the receiving peer; all records must be for ``blob_id``."""

    blob_id: BlobIdBytes
    records: EncodedRecords


@register(25)
@dataclass(frozen=True, slots=True)
class PostBlobRecordsReply(Message):
    """How many records were new to the peer (0 when it already had them all)."""

    accepted: wire.U16


@register(26)
@dataclass(frozen=True, slots=True)
class GetBlobRecordsRequest(Message):
    blob_id: BlobIdBytes


@register(27)
@dataclass(frozen=True, slots=True)
class GetBlobRecordsReply(Message):
    """Every record the peer keeps for the blob; the asker verifies each one itself."""

    records: EncodedRecords


# Catch-up (docs/design.md §5: gossip carries news, not history). A peer back from downtime or data
# loss pages through every blob's records held by another peer, by blob id, and verifies each
# record itself before merging it.

MAX_SYNC_BLOBS_PER_PAGE = 64
"""Blobs per :class:`ListBlobRecordsReply`; the server also stops at a byte budget."""


@record
@dataclass(frozen=True, slots=True)
class BlobRecordsEntry:
    """The records one peer keeps for one blob (each one a canonical record encoding)."""

    blob_id: BlobIdBytes
    records: EncodedRecords


@register(28)
@dataclass(frozen=True, slots=True)
class ListBlobRecordsRequest(Message):
    """Records of the blobs whose id is greater than ``after`` (None: from the start), in blob
    id order, at most ``limit`` blobs (the server may send fewer)."""

    after: BlobIdBytes | None
    limit: Annotated[int, wire.IntSpec(1, MAX_SYNC_BLOBS_PER_PAGE)]


@register(29)
@dataclass(frozen=True, slots=True)
class ListBlobRecordsReply(Message):
    """One page; ``next_after`` is the cursor for the next request, None when the listing ended."""

    entries: Annotated[
        tuple[BlobRecordsEntry, ...],
        ListSpec(record_spec(BlobRecordsEntry), MAX_SYNC_BLOBS_PER_PAGE),
    ]
    next_after: BlobIdBytes | None


# Invalid blobs (docs/design.md §4): a peer that rebuilt a sliver contradicting its hash sends
# the proof to the others and asks each for a signed attestation; f+1 shard weight makes a
# BlobInvalid.


@record
@dataclass(frozen=True, slots=True)
class ProofSymbol:
    """A recovery symbol inside an inconsistency proof: the helper's sliver index (of the kind
    other than the target's), the symbol and its Merkle path to the helper's sliver hash."""

    source_index: PairIndex
    symbol: SymbolData
    proof: MerkleProof


@record
@dataclass(frozen=True, slots=True)
class InconsistencyEvidence:
    """The wire form of :class:`walrus_p2p.core.metadata.InconsistencyProof`; ``target_kind``
    names the axis (PRIMARY: a row, SECONDARY: a column) and ``target_index`` the sliver index
    (not the pair index)."""

    target_kind: SliverKind
    target_index: PairIndex
    symbols: Annotated[
        tuple[ProofSymbol, ...], ListSpec(record_spec(ProofSymbol), MAX_SHARDS, min_length=1)
    ]


@register(30)
@dataclass(frozen=True, slots=True)
class AttestInvalidBlobRequest(Message):
    """Check this proof against the blob's metadata and, if it holds, sign an attestation."""

    blob_id: BlobIdBytes
    epoch: wire.U64
    evidence: InconsistencyEvidence


@register(31)
@dataclass(frozen=True, slots=True)
class AttestInvalidBlobReply(Message):
    """The signer's attestation (``records.sign_invalid_blob``); verified by the collector."""

    attestation: records.Signature


def encode_records(items: list[records.BlobRecord]) -> tuple[bytes, ...]:
    return tuple(wire.encode(item) for item in items)


def decode_records(encoded: tuple[bytes, ...], blob_id: bytes) -> list[records.BlobRecord]:
    """Decode records, refusing any for another blob; ``WireError`` on anything malformed."""
    decoded: list[records.BlobRecord] = []
    for item in encoded:
        record = wire.decode(item, records.BLOB_RECORD_TYPES)
        if not isinstance(record, records.BLOB_RECORD_TYPES):
            raise WireError("not a blob record")
        if record.blob_id != blob_id:
            raise WireError("a record in the message is for another blob")
        decoded.append(record)
    return decoded


MAX_GOSSIP_BATCH_BYTES = 900 * 1024
"""Below the gossip message cap of the genesis limits (1 MiB by default)."""


# Small blobs in one request (docs/protocol.md, "Storing a small blob in one request"). A store
# sends each peer its register record, the metadata, one request per sliver and a confirmation
# request: 2 + 2 * (pairs held) + 1 requests per peer, 260 for a 1 KiB blob on 20 peers holding
# 100 shards. When every sliver of the peer's pairs is small, all of it goes in one request.

SMALL_SLIVER_SIZE = 64 * 1024
"""Largest sliver a :class:`StoreBlobRequest` carries (larger ones go one request each)."""
MAX_SLIVERS_PER_STORE = 64
"""Slivers per :class:`StoreBlobRequest`: both slivers of 32 pairs."""
MAX_RECORDS_PER_STORE = 4

SmallSliverData = Annotated[bytes, BytesSpec(min_length=1, max_length=SMALL_SLIVER_SIZE)]


@record
@dataclass(frozen=True, slots=True)
class SliverItem:
    """One sliver of a :class:`StoreBlobRequest` (a secondary one is sliver n-1-pair_index)."""

    pair_index: PairIndex
    sliver_kind: SliverKind
    data: SmallSliverData


@register(49)
@dataclass(frozen=True, slots=True)
class StoreBlobRequest(Message):
    """Everything one peer needs to confirm a small blob: records (the register record), the
    metadata, every sliver of the pairs it holds, and the confirmation asked for, handled in
    that order exactly as the separate requests would be."""

    blob_id: BlobIdBytes
    records: Annotated[
        tuple[bytes, ...],
        ListSpec(BytesSpec(min_length=1, max_length=MAX_RECORD_SIZE), MAX_RECORDS_PER_STORE),
    ]
    metadata: Metadata
    slivers: Annotated[
        tuple[SliverItem, ...], ListSpec(record_spec(SliverItem), MAX_SLIVERS_PER_STORE)
    ]
    epoch: wire.U64
    permanent: bool


@register(50)
@dataclass(frozen=True, slots=True)
class StoreBlobReply(Message):
    confirmation: wire.SignedStorageConfirmation


MAX_SLIVERS_PER_READ = 64
"""Pairs one :class:`GetSliversRequest` may name."""


@register(51)
@dataclass(frozen=True, slots=True)
class GetSliversRequest(Message):
    """The ``sliver_kind`` slivers of several pairs of a small blob in one request (docs/
    protocol.md, "Reading a small blob"): answered only if the blob's slivers are at most
    :data:`SMALL_SLIVER_SIZE` (``SLIVERS_TOO_LARGE`` otherwise: ask one by one)."""

    blob_id: BlobIdBytes
    sliver_kind: SliverKind
    pair_indices: Annotated[
        tuple[int, ...],
        wire.ListSpec(
            wire.IntSpec(0, MAX_SHARDS - 1), MAX_SLIVERS_PER_READ, strictly_increasing=True
        ),
    ]
    """Sorted, without repeats."""


@register(52)
@dataclass(frozen=True, slots=True)
class GetSliversReply(Message):
    """The slivers held, in pair order; pairs not held are left out."""

    slivers: Annotated[
        tuple[SliverItem, ...], ListSpec(record_spec(SliverItem), MAX_SLIVERS_PER_READ)
    ]


@register(64)
@dataclass(frozen=True, slots=True)
class BlobRecordsBatch(Message):
    """News on the blob-records gossip topic: records of any blobs, verified by every receiver
    before it is forwarded (the topic validator) and before it is merged."""

    records: EncodedRecords


def decode_any_records(encoded: tuple[bytes, ...]) -> list[records.BlobRecord]:
    """Decode records of any blobs; ``WireError`` on anything malformed."""
    decoded: list[records.BlobRecord] = []
    for item in encoded:
        record = wire.decode(item, records.BLOB_RECORD_TYPES)
        if not isinstance(record, records.BLOB_RECORD_TYPES):
            raise WireError("not a blob record")
        decoded.append(record)
    return decoded


def evidence_from_proof(proof: InconsistencyProof) -> InconsistencyEvidence:
    """The wire form of an inconsistency proof."""
    kind = SliverKind.PRIMARY if proof.target_type is SliverType.PRIMARY else SliverKind.SECONDARY
    return InconsistencyEvidence(
        target_kind=kind,
        target_index=proof.target_index,
        symbols=tuple(
            ProofSymbol(source_index=item.source_index, symbol=item.symbol, proof=tuple(item.proof))
            for item in proof.symbols
        ),
    )


def proof_from_evidence(evidence: InconsistencyEvidence) -> InconsistencyProof:
    """The inconsistency proof a message carries (still to be verified by the receiver)."""
    target_type = (
        SliverType.PRIMARY if evidence.target_kind is SliverKind.PRIMARY else SliverType.SECONDARY
    )
    return InconsistencyProof(
        target_type=target_type,
        target_index=evidence.target_index,
        symbols=tuple(
            RecoverySymbol(
                target_type=target_type,
                target_index=evidence.target_index,
                source_index=item.source_index,
                symbol=item.symbol,
                proof=merkle.MerkleProof(tuple(item.proof)),
            )
            for item in evidence.symbols
        ),
    )
