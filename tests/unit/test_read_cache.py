"""The read cache of a long-running client (client/cache.py): bounded by entries and bytes,
least recently used first out, small blobs only and only for ``blob_seconds``."""

from __future__ import annotations

from typing import Any, cast

from walrus_p2p.client.cache import CacheOptions, ReadCache
from walrus_p2p.types import BlobId


def blob_id(number: int) -> BlobId:
    return BlobId(number.to_bytes(32, "big"))


def metadata(shards: int) -> Any:
    class Fake:
        pass

    fake = Fake()
    fake.shards = shards  # type: ignore[attr-defined]
    return fake


def test_metadata_is_kept_up_to_the_entry_bound_least_recently_used_out() -> None:
    cache = ReadCache(CacheOptions(metadata_entries=2))
    first, second, third = metadata(1), metadata(2), metadata(3)
    cache.put_metadata(blob_id(1), cast(Any, first))
    cache.put_metadata(blob_id(2), cast(Any, second))
    assert cache.metadata(blob_id(1)) is first  # now the most recently used
    cache.put_metadata(blob_id(3), cast(Any, third))
    assert cache.metadata(blob_id(2)) is None
    assert cache.metadata(blob_id(1)) is first and cache.metadata(blob_id(3)) is third
    assert cache.hits["metadata"] == 3 and cache.misses["metadata"] == 1


def test_small_blobs_are_kept_within_the_byte_bound_and_for_a_while() -> None:
    now = [0.0]
    options = CacheOptions(blob_bytes=100, max_blob_size=60, blob_seconds=10.0)
    cache = ReadCache(options, clock=lambda: now[0])
    cache.put_blob(blob_id(1), memoryview(b"a" * 61))  # above max_blob_size: not kept
    assert cache.blob(blob_id(1)) is None
    cache.put_blob(blob_id(1), memoryview(b"a" * 60))
    cache.put_blob(blob_id(2), memoryview(b"b" * 30))
    assert cache.blob_bytes == 90
    kept = cache.blob(blob_id(1))
    assert kept is not None and bytes(kept) == b"a" * 60 and kept.readonly
    cache.put_blob(blob_id(3), memoryview(b"c" * 30))  # 120 > 100: the LRU (2) goes
    assert cache.blob(blob_id(2)) is None
    assert cache.blob_bytes == 90
    now[0] = 10.5  # older than blob_seconds: not served, and dropped
    assert cache.blob(blob_id(1)) is None and cache.blob(blob_id(3)) is None
    assert cache.blob_bytes == 0


def test_forget_drops_the_blob_and_its_metadata() -> None:
    cache = ReadCache()
    cache.put_metadata(blob_id(7), cast(Any, metadata(10)))
    cache.put_blob(blob_id(7), memoryview(b"x"))
    cache.forget(blob_id(7))
    assert cache.blob(blob_id(7)) is None and cache.metadata(blob_id(7)) is None
    assert cache.blob_bytes == 0


def test_a_cache_without_room_keeps_nothing() -> None:
    cache = ReadCache(CacheOptions(metadata_entries=0, blob_bytes=0))
    cache.put_metadata(blob_id(1), cast(Any, metadata(10)))
    cache.put_blob(blob_id(1), memoryview(b""))
    cache.put_blob(blob_id(2), memoryview(b"y"))
    assert cache.metadata(blob_id(1)) is None
    assert cache.blob(blob_id(1)) is None and cache.blob(blob_id(2)) is None


def test_only_certified_statuses_are_kept_and_only_for_a_while() -> None:
    from walrus_p2p.client.results import BlobStatus

    now = [0.0]
    cache = ReadCache(CacheOptions(blob_seconds=5.0), clock=lambda: now[0])

    def status(state: str) -> BlobStatus:
        return BlobStatus(
            blob_id=blob_id(1),
            state=state,
            size=10,
            certified_epoch=1,
            end_epoch=9,
            deletable=True,
        )

    cache.put_status(blob_id(1), status("registered"))
    assert cache.status(blob_id(1)) is None
    certified = status("certified")
    cache.put_status(blob_id(1), certified)
    assert cache.status(blob_id(1)) is certified
    now[0] = 6.0
    assert cache.status(blob_id(1)) is None
    cache.put_status(blob_id(1), certified)
    cache.forget(blob_id(1))
    assert cache.status(blob_id(1)) is None
