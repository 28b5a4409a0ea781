"""The storage vocabulary and the :class:`BlobStore` protocol every store implements.

Owner: storage. Layers above (node, recovery, GC, the confirmation signer) program against
:class:`BlobStore` only; :mod:`walrus_p2p.storage._disk` is the durable implementation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from walrus_p2p.errors import NotFoundError
from walrus_p2p.types import BlobId, SliverKind, short_id

FORMAT_VERSION = 1
"""On-disk format written by this code; a store recorded with any other version is refused."""

MAX_PAIR_INDEX = 255
"""Sliver pair indices are shard-sized: n ≤ 256 (docs/design.md §2)."""

Bytes = bytes | bytearray | memoryview
"""What ``put_*`` accepts; stored and returned as ``bytes``."""


class SliverKey(NamedTuple):
    """One sliver of a blob: pair index p and kind (secondary p means secondary sliver n-1-p)."""

    pair_index: int
    kind: SliverKind


@dataclass(frozen=True, slots=True)
class BlobState:
    """The merged, locally known status of a blob; the store persists it, it never merges it.

    ``None`` epochs mean "not known yet". A blob row with this state may exist before its
    metadata (a certificate can arrive before the data).
    """

    certified_epoch: int | None = None
    end_epoch: int | None = None
    deletable: bool = False
    invalid: bool = False


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One blob as :meth:`BlobStore.iter_blobs` reports it."""

    blob_id: BlobId
    state: BlobState
    has_metadata: bool
    sliver_count: int
    stored_bytes: int
    """Metadata plus sliver bytes that count against the capacity."""


class CorruptDataError(NotFoundError):
    """Stored data exists but is damaged (checksum, size or file lost); ``reason`` DATA_CORRUPT.

    A subclass of :class:`~walrus_p2p.errors.NotFoundError`, so code that treats a damaged sliver
    like a missing one (recover it) keeps working; a scrubber catches this class to repair.
    ``sliver`` is ``None`` when the metadata is the damaged item.
    """

    reason = "DATA_CORRUPT"

    def __init__(self, message: str, *, blob_id: BlobId, sliver: SliverKey | None) -> None:
        what = "metadata" if sliver is None else f"sliver {sliver.pair_index}/{sliver.kind.name}"
        super().__init__(f"{what} of blob {short_id(blob_id)} is corrupt: {message}")
        self.blob_id = blob_id
        self.sliver = sliver


class BlobStore(Protocol):
    """A durable, thread-safe store of blob metadata, slivers, blob state and node records.

    Every method is synchronous and may block on disk; call it from trio through
    ``trio.to_thread.run_sync``. When a ``put_*`` returns, the data survives a crash or a
    power loss; a read returns exactly the bytes put or raises. Only
    :mod:`walrus_p2p.errors` exceptions leave (``ValueError`` for malformed arguments).
    """

    @property
    def capacity_bytes(self) -> int:
        """The configured limit for metadata plus sliver bytes."""
        ...

    def used_bytes(self) -> int:
        """Metadata plus sliver bytes stored now (file system overhead not included)."""
        ...

    # metadata and state

    def put_metadata(self, blob_id: BlobId, metadata: Bytes) -> None:
        """Store (or replace) the canonical metadata bytes; creates the blob's row if needed."""
        ...

    def get_metadata(self, blob_id: BlobId) -> bytes:
        """The metadata bytes; ``NotFoundError`` if absent, ``CorruptDataError`` if damaged."""
        ...

    def has_metadata(self, blob_id: BlobId) -> bool: ...

    def get_blob_state(self, blob_id: BlobId) -> BlobState:
        """``NotFoundError`` if the store knows nothing of the blob."""
        ...

    def set_blob_state(self, blob_id: BlobId, state: BlobState) -> None:
        """Persist the blob's state (creating its row, without metadata, if needed)."""
        ...

    # slivers

    def put_sliver(self, blob_id: BlobId, pair_index: int, kind: SliverKind, data: Bytes) -> None:
        """Store a sliver durably; needs the blob's metadata first (``NotFoundError``).

        Always writes, replacing an existing copy (that is how a scrubber repairs one).
        ``StorageFullError`` before anything is written if the capacity would be exceeded.
        """
        ...

    def get_sliver(self, blob_id: BlobId, pair_index: int, kind: SliverKind) -> bytes:
        """The exact bytes put; ``NotFoundError`` if absent, ``CorruptDataError`` if damaged."""
        ...

    def has_sliver(self, blob_id: BlobId, pair_index: int, kind: SliverKind) -> bool:
        """Whether a sliver is recorded and not known to be corrupt (no data is read)."""
        ...

    def list_slivers(self, blob_id: BlobId) -> list[SliverKey]:
        """Slivers recorded for the blob and not known to be corrupt, in key order."""
        ...

    def is_durable(
        self,
        blob_id: BlobId,
        required: Iterable[tuple[int, SliverKind]],
        *,
        verify: bool = False,
    ) -> bool:
        """True only if the metadata and every required sliver are durably stored.

        What a confirmation signer asks before signing. Without ``verify`` it checks the
        committed records and the files' sizes (no data read); with ``verify`` it re-reads and
        checksums everything, marking damaged slivers corrupt.
        """
        ...

    def delete_sliver(self, blob_id: BlobId, pair_index: int, kind: SliverKind) -> bool:
        """Remove one sliver (corrupt or not); False if it was not there."""
        ...

    def delete_slivers(self, blob_id: BlobId) -> int:
        """Drop all slivers of a blob but keep its metadata and state (an invalid blob)."""
        ...

    def delete_blob(self, blob_id: BlobId) -> bool:
        """Remove metadata, state and slivers (garbage collection); False if unknown."""
        ...

    def iter_blobs(self, *, end_epoch_before: int | None = None) -> Iterator[BlobInfo]:
        """Every known blob in blob id order, optionally only those whose end epoch is earlier.

        Reads in pages, so the store may be used (and changed) while iterating.
        """
        ...

    # small node records (sync progress, recovery cursors, ...)

    def put_value(self, namespace: str, key: bytes, value: Bytes) -> None:
        """Durably set a small record; these do not count against the capacity."""
        ...

    def put_values(self, namespace: str, changes: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Durably set (a value) or delete (None) several records in one transaction."""
        ...

    def get_value(self, namespace: str, key: bytes) -> bytes | None: ...

    def delete_value(self, namespace: str, key: bytes) -> bool: ...

    def iter_values(self, namespace: str, *, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """The namespace's records in key order; only keys starting with ``prefix`` (a range
        read on the index, not a scan of the namespace)."""
        ...

    def close(self) -> None:
        """Release the store; later calls raise ``StorageError``. Idempotent."""
        ...
