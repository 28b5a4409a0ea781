"""A peer reuses the decoding of a blob's stored metadata only while the stored bytes are the
same (walrus_p2p/node/slivers.py, ``SliverService._load_metadata``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from walrus_p2p.core import wire
from walrus_p2p.core.encoding import EncodingConfig
from walrus_p2p.core.metadata import encode_blob
from walrus_p2p.errors import NotFoundError
from walrus_p2p.node import slivers
from walrus_p2p.node.slivers import SliverService
from walrus_p2p.types import BlobId


class Store:
    def __init__(self) -> None:
        self.raw: dict[bytes, bytes] = {}

    def get_metadata(self, blob_id: BlobId) -> bytes:
        if blob_id not in self.raw:
            raise NotFoundError("no metadata")
        return self.raw[blob_id]


def stored(data: bytes) -> tuple[BlobId, bytes]:
    encoded = encode_blob(data, EncodingConfig.for_shards(4))
    raw = wire.encode(wire.GetMetadataReply(metadata=encoded.metadata))
    return encoded.blob_id, raw


async def test_the_decoding_is_reused_only_for_the_same_stored_bytes() -> None:
    store = Store()
    service = SliverService(SimpleNamespace(store=store))  # type: ignore[arg-type]
    first_id, first_raw = stored(b"one" * 100)
    second_id, second_raw = stored(b"two" * 100)
    store.raw[first_id] = first_raw
    decoded = await service._load_metadata(first_id)
    assert await service._load_metadata(first_id) is decoded  # reused
    assert decoded == wire.decode(first_raw, wire.GetMetadataReply).metadata
    # other bytes under the same id (never happens for a verified blob id): decoded again
    store.raw[first_id] = second_raw
    assert await service._load_metadata(first_id) is not decoded
    # deleted: the store's refusal comes through, the kept decoding is not used
    del store.raw[first_id]
    with pytest.raises(NotFoundError):
        await service._load_metadata(first_id)
    # bounded
    store.raw[second_id] = second_raw
    for index in range(slivers.DECODED_METADATA_KEPT + 5):
        blob_id, raw = BlobId(bytes([index % 256, index // 256]) * 16), second_raw
        store.raw[blob_id] = raw
        await service._load_metadata(blob_id)
    assert len(service._decoded) == slivers.DECODED_METADATA_KEPT
