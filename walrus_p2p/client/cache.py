"""What a long-running light peer (the gateway, the agent) keeps of what it read, bounded
(docs/http-api.md, "Caching"; the agent has one too, docs/cli.md).

- **Verified metadata**, by blob id: metadata is fixed by the blob id (it is checked against
  it before it is kept), so it never goes stale. A read of a known blob then skips asking the
  committee for it (at n = 100, one request to every member).
- **Small blobs**, by blob id, for ``blob_seconds``: the decoded bytes of blobs up to
  ``max_blob_size``, within ``blob_bytes`` in total. The bytes themselves cannot be wrong (they
  were decoded from verified slivers and checked against the metadata), but a blob deleted or
  expired meanwhile is still served until its entry ages out, as from any HTTP cache in front
  of an aggregator. A client's own ``delete`` drops the entry at once.
- **Certified statuses**, by blob id, for the same ``blob_seconds``: the gateway asks for a
  blob's status (size, certified?) before every read; a hot blob's comes from here. Other states
  (registered, deleted, invalid, unknown) are always asked for.

Least recently used entries go first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from walrus_p2p.client.results import BlobStatus
from walrus_p2p.core.metadata import Metadata
from walrus_p2p.types import BlobId


@dataclass(frozen=True, slots=True)
class CacheOptions:
    metadata_entries: int = 4096
    """Metadata kept (about 6.5 KiB each at n = 100: 26 MiB at most)."""
    blob_bytes: int = 64 * 1024 * 1024
    """Decoded small blobs kept, bytes in total (0: none)."""
    max_blob_size: int = 1024 * 1024
    blob_seconds: float = 60.0
    """How long a small blob is served from the cache."""


class ReadCache:
    def __init__(
        self, options: CacheOptions | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.options = options or CacheOptions()
        self._clock = clock
        self._metadata: OrderedDict[bytes, Metadata] = OrderedDict()
        self._blobs: OrderedDict[bytes, tuple[float, memoryview]] = OrderedDict()
        self._statuses: OrderedDict[bytes, tuple[float, BlobStatus]] = OrderedDict()
        self._blob_bytes = 0
        self.hits = {"metadata": 0, "blob": 0, "status": 0}
        self.misses = {"metadata": 0, "blob": 0, "status": 0}

    def metadata(self, blob_id: BlobId) -> Metadata | None:
        found = self._metadata.get(bytes(blob_id))
        if found is None:
            self.misses["metadata"] += 1
            return None
        self._metadata.move_to_end(bytes(blob_id))
        self.hits["metadata"] += 1
        return found

    def put_metadata(self, blob_id: BlobId, metadata: Metadata) -> None:
        """Keep ``metadata``, which the caller verified against ``blob_id``."""
        if self.options.metadata_entries <= 0:
            return
        self._metadata[bytes(blob_id)] = metadata
        self._metadata.move_to_end(bytes(blob_id))
        while len(self._metadata) > self.options.metadata_entries:
            self._metadata.popitem(last=False)

    def blob(self, blob_id: BlobId) -> memoryview | None:
        key = bytes(blob_id)
        entry = self._blobs.get(key)
        if entry is None:
            self.misses["blob"] += 1
            return None
        stored_at, data = entry
        if self._clock() - stored_at > self.options.blob_seconds:
            self._drop(key)
            self.misses["blob"] += 1
            return None
        self._blobs.move_to_end(key)
        self.hits["blob"] += 1
        return data

    def put_blob(self, blob_id: BlobId, data: memoryview) -> None:
        """Keep a decoded, verified blob (a read-only view) if it is small enough."""
        size = len(data)
        if self.options.blob_bytes <= 0 or size > min(
            self.options.max_blob_size, self.options.blob_bytes
        ):
            return
        key = bytes(blob_id)
        self._drop(key)
        self._blobs[key] = (self._clock(), data.toreadonly())
        self._blob_bytes += size
        while self._blob_bytes > self.options.blob_bytes:
            oldest = next(iter(self._blobs))
            self._drop(oldest)

    def status(self, blob_id: BlobId) -> BlobStatus | None:
        key = bytes(blob_id)
        entry = self._statuses.get(key)
        if entry is None:
            self.misses["status"] += 1
            return None
        if self._clock() - entry[0] > self.options.blob_seconds:
            del self._statuses[key]
            self.misses["status"] += 1
            return None
        self._statuses.move_to_end(key)
        self.hits["status"] += 1
        return entry[1]

    def put_status(self, blob_id: BlobId, status: BlobStatus) -> None:
        """Keep a blob's status if it is certified (the only state served from here)."""
        if status.state != "certified" or self.options.blob_seconds <= 0:
            return
        key = bytes(blob_id)
        self._statuses[key] = (self._clock(), status)
        self._statuses.move_to_end(key)
        while len(self._statuses) > max(1, self.options.metadata_entries):
            self._statuses.popitem(last=False)

    def forget(self, blob_id: BlobId) -> None:
        """Drop what is kept of a blob (after this client deleted it)."""
        key = bytes(blob_id)
        self._drop(key)
        self._metadata.pop(key, None)
        self._statuses.pop(key, None)

    @property
    def blob_bytes(self) -> int:
        return self._blob_bytes

    def _drop(self, key: bytes) -> None:
        entry = self._blobs.pop(key, None)
        if entry is not None:
            self._blob_bytes -= len(entry[1])
