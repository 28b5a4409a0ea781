"""An in-memory `BlobService` for the gateway's tests and benchmarks (bench/gateway_slow.py).

It stores blobs in a dict keyed by their SHA-256, and lets a test fail every call or hold stores
and reads at a gate, so the gateway's HTTP behaviour can be checked without a network.
"""

from __future__ import annotations

import hashlib

import trio

from walrus_p2p.client.results import (
    AlreadyCertified,
    BlobStatus,
    NetworkStatus,
    StoredBlob,
    StoreOutcome,
)
from walrus_p2p.errors import InconsistentBlobError, InsufficientFundsError, NotFoundError
from walrus_p2p.types import BlobId, blob_id_to_text


class FakeBlobService:
    """An in-memory `BlobService`: the blob id is the SHA-256 of the bytes."""

    def __init__(self) -> None:
        self.blobs: dict[BlobId, bytes] = {}
        self.invalid: set[BlobId] = set()
        self.writable = True
        self.stores: list[tuple[int, int, bool]] = []
        """(size, epochs, permanent) of every store call."""
        self.calls: list[str] = []
        self.failure: Exception | None = None
        """Raised by every call while set."""
        self.gate: trio.Event | None = None
        """While set, `store` and `read` wait on it (after setting `entered`)."""
        self.entered: trio.Event | None = None
        self.attributes: dict[BlobId, dict[str, str]] = {}
        """Effective attributes a blob's status reports (docs/attributes.md)."""
        self.balance: int | None = None
        """While set, the wallet of a network with an economy: a new store costs ``cost``
        (below) and fails with ``InsufficientFundsError`` when the balance does not cover it."""

    async def _enter(self, name: str) -> None:
        self.calls.append(name)
        if self.failure is not None:
            raise self.failure
        if self.gate is not None and name in ("store", "read"):
            assert self.entered is not None
            self.entered.set()
            await self.gate.wait()

    async def store(
        self, data: bytes | memoryview, *, epochs: int, permanent: bool
    ) -> StoreOutcome:
        self.stores.append((len(data), epochs, permanent))
        await self._enter("store")
        blob_id = BlobId(hashlib.sha256(data).digest())
        if blob_id in self.blobs:
            return AlreadyCertified(blob_id=blob_id, end_epoch=7 + epochs)
        cost = 5 * len(data) * epochs
        if self.balance is not None:
            if cost > self.balance:
                raise InsufficientFundsError(
                    f"needs {cost} FROST, has {self.balance}", needed=cost, balance=self.balance
                )
            self.balance -= cost
        self.blobs[blob_id] = bytes(data)
        return StoredBlob(
            blob_id=blob_id,
            size=len(data),
            encoding_type=1,
            certified_epoch=7,
            start_epoch=7,
            end_epoch=7 + epochs,
            storage_size=5 * len(data),
            deletable=not permanent,
            cost=cost,
        )

    def _get(self, blob_id: BlobId) -> bytes:
        if blob_id in self.invalid:
            raise InconsistentBlobError("inconsistent")
        if blob_id not in self.blobs:
            raise NotFoundError("no such blob")
        return self.blobs[blob_id]

    async def read(self, blob_id: BlobId, *, strict: bool = False) -> bytes:
        await self._enter("read")
        return self._get(blob_id)

    async def read_range(self, blob_id: BlobId, start: int, length: int) -> bytes:
        await self._enter(f"read_range {start} {length}")
        data = self._get(blob_id)
        assert start >= 0 and start + length <= len(data), "gateway asked outside the blob"
        return data[start : start + length]

    async def blob_status(self, blob_id: BlobId) -> BlobStatus:
        await self._enter("blob_status")
        if blob_id in self.invalid:
            return BlobStatus(blob_id, "invalid", None, None, None, None)
        data = self.blobs.get(blob_id)
        if data is None:
            return BlobStatus(blob_id, "nonexistent", None, None, None, None)
        attributes = tuple(sorted(self.attributes.get(blob_id, {}).items()))
        return BlobStatus(blob_id, "certified", len(data), 7, 9, True, attributes)

    async def network_status(self) -> NetworkStatus:
        await self._enter("network_status")
        return NetworkStatus(
            "devnet", "abc", 7, 10, 10 if self.writable else 3, self.writable, challenge_epoch=6
        )

    def put(self, data: bytes) -> str:
        blob_id = BlobId(hashlib.sha256(data).digest())
        self.blobs[blob_id] = data
        return blob_id_to_text(blob_id)
