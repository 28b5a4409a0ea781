"""The durable sliver store: blob metadata, slivers, blob state and small node records.

Layers above use the :class:`BlobStore` protocol; :func:`open_store` returns the on-disk
implementation (SQLite index in WAL mode plus one file per large sliver; see ``docs/storage.md``).
All calls are synchronous and thread-safe: from trio, run them with ``trio.to_thread.run_sync``.
"""

from walrus_p2p.storage._api import (
    FORMAT_VERSION,
    MAX_PAIR_INDEX,
    BlobInfo,
    BlobState,
    BlobStore,
    CorruptDataError,
    SliverKey,
)
from walrus_p2p.storage._disk import (
    DEFAULT_INLINE_LIMIT,
    MAX_VALUE_SIZE,
    DiskStore,
    open_store,
)
from walrus_p2p.types import SliverKind

__all__ = [
    "DEFAULT_INLINE_LIMIT",
    "FORMAT_VERSION",
    "MAX_PAIR_INDEX",
    "MAX_VALUE_SIZE",
    "BlobInfo",
    "BlobState",
    "BlobStore",
    "CorruptDataError",
    "DiskStore",
    "SliverKey",
    "SliverKind",
    "open_store",
]
