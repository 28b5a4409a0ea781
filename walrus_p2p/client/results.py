"""What client operations return: plain values the CLI prints and the HTTP gateway serialises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from walrus_p2p.types import BlobId


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A blob this store call uploaded and certified (`newlyCreated` in the Walrus API)."""

    blob_id: BlobId
    size: int
    encoding_type: int
    certified_epoch: int
    start_epoch: int
    end_epoch: int
    storage_size: int
    """Encoded size the network stores for the blob (n·(kp+ks)·S)."""
    deletable: bool
    cost: int
    """On a network with an economy: the FROST this store paid (storage + write fee; 0 when an
    earlier payment of the owner covered it). Without one: the encoded size times epochs."""
    phases: tuple[tuple[str, float], ...] = ()
    """Seconds spent in each step of the store, in order (encode, state, pay, upload, certify;
    docs/protocol.md, "Store"), for benchmarks and logs; not part of the API's JSON."""


@dataclass(frozen=True, slots=True)
class AlreadyCertified:
    """The blob was certified before with enough lifetime left; nothing was uploaded."""

    blob_id: BlobId
    end_epoch: int


StoreOutcome = StoredBlob | AlreadyCertified


@dataclass(frozen=True, slots=True)
class BlobStatus:
    """What the network says about a blob."""

    blob_id: BlobId
    state: str
    """"nonexistent", "registered", "certified", "invalid" or "deleted"."""
    size: int | None
    certified_epoch: int | None
    end_epoch: int | None
    deletable: bool | None
    attributes: tuple[tuple[str, str], ...] = ()
    """The blob's effective attributes, sorted by key (docs/attributes.md)."""


@dataclass(frozen=True, slots=True)
class NetworkStatus:
    """The gateway's view of the network: can it take writes and serve reads now?"""

    network_name: str
    network_id: str
    epoch: int
    shards: int
    reachable_shards: int
    """Shards whose peer answered recently."""
    writable: bool
    """True when reachable shard weight reaches a write quorum."""
    challenge_epoch: int | None = None
    """The newest epoch (of the last four) whose storage challenge certified members holding a
    quorum of shards (docs/challenges.md); None if none did."""


class BlobService(Protocol):
    """The operations the HTTP gateway and the CLI need from a light peer."""

    async def store(
        self, data: bytes | memoryview, *, epochs: int, permanent: bool
    ) -> StoreOutcome: ...

    async def read(self, blob_id: BlobId, *, strict: bool = False) -> bytes | memoryview: ...

    async def read_range(self, blob_id: BlobId, start: int, length: int) -> bytes: ...

    async def blob_status(self, blob_id: BlobId) -> BlobStatus: ...

    async def network_status(self) -> NetworkStatus: ...
