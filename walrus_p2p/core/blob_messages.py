"""Requests that carry signed blob records directly to the storage peers that need them.

Design §5: gossip is costly in py-libp2p, so a writer pushes a blob's register record and its
certificate straight to the committee over streams, and a reader asks any peer for a blob's
records and verifies them itself. Each record travels as its own canonical wire encoding (a
:data:`walrus_p2p.core.records.BLOB_RECORD_TYPES` message) so it can be verified, stored and
forwarded byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from walrus_p2p.core import records, wire
from walrus_p2p.core.wire import BlobIdBytes, BytesSpec, ListSpec, Message, register
from walrus_p2p.errors import WireError

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
