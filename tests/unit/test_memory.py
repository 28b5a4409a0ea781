"""core.memory: bytes filled in place, per-thread scratch, and expand_sliver's ``out``."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from walrus_p2p.core import memory
from walrus_p2p.core.encoding import EncodingConfig, SliverType, expand_sliver
from walrus_p2p.core.metadata import encode_blob, sliver_root
from walrus_p2p.errors import EncodingError


@pytest.mark.parametrize("length", [2, 4096, memory.MIN_HUGE_BYTES + 3])
def test_new_bytes_is_a_fresh_zeroed_bytes_the_array_writes_into(length: int) -> None:
    result, array = memory.new_bytes(length)
    assert type(result) is bytes and len(result) == length and array.size == length
    assert result == bytes(length)
    array[:] = 7
    array[-1] = 9
    assert result[0] == 7 and result[-1] == 9
    assert result.count(7) == length - 1
    other, _ = memory.new_bytes(length)
    assert other == bytes(length)  # a new object each time, not the one just written


def test_new_bytes_refuses_the_objects_cpython_shares() -> None:
    for length in (0, 1):
        with pytest.raises(ValueError, match="big buffers"):
            memory.new_bytes(length)
    assert bytes(1) == b"\x00" and bytes(0) == b""


def test_scratch_is_reused_per_thread_and_never_shared() -> None:
    first = memory.scratch(1000)
    again = memory.scratch(500)
    assert first.size == 1000 and again.size == 500
    assert np.shares_memory(first, again)  # this thread's buffer, reused
    bigger = memory.scratch(memory.MIN_HUGE_BYTES + 1)
    assert bigger.size == memory.MIN_HUGE_BYTES + 1

    seen: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: seen.append(memory.scratch(1000)))
    worker.start()
    worker.join(10)
    assert seen and not np.shares_memory(seen[0], memory.scratch(1000))

    huge = memory.scratch(memory.SCRATCH_MAX_BYTES + 1)
    assert not np.shares_memory(huge, memory.scratch(1000))  # too big to keep


def test_expand_sliver_into_out_matches_a_fresh_expansion() -> None:
    config = EncodingConfig.for_shards(10)
    blob = bytes(range(256)) * 40
    written = encode_blob(blob, config)
    encoded, size = written.encoded, written.encoded.symbol_size
    for kind in SliverType:
        for index in (0, 4, 9):
            sliver = encoded.sliver(kind, index)
            fresh = expand_sliver(config, kind, sliver, size)
            out = np.full(config.n * size, 0xAB, dtype=np.uint8)
            into = expand_sliver(config, kind, sliver, size, out=out)
            assert np.shares_memory(into, out)
            assert np.array_equal(into, fresh)
            assert sliver_root(config, kind, sliver, size) == written.metadata.sliver_hash(
                kind, index
            )
    with pytest.raises(EncodingError, match="out must be"):
        expand_sliver(
            config,
            SliverType.PRIMARY,
            encoded.sliver(SliverType.PRIMARY, 0),
            size,
            out=np.empty(config.n * size - 1, dtype=np.uint8),
        )


def test_same_bytes_compares_whole_buffers_of_any_kind() -> None:
    data = bytes(range(256)) * 4000
    assert memory.same_bytes(data, bytearray(data))
    assert memory.same_bytes(memoryview(data), np.frombuffer(data, dtype=np.uint8))
    assert memory.same_bytes(b"", b"")
    assert not memory.same_bytes(data, data[:-1])
    for position in (0, len(data) // 2, len(data) - 1):
        changed = bytearray(data)
        changed[position] ^= 1
        assert not memory.same_bytes(data, changed)


def test_bytes_pool_reuses_only_objects_nobody_holds() -> None:
    pool = memory.BytesPool(max_bytes=1 << 20)
    first, array = pool.take(1000)
    array[:] = 1
    del array
    held, array = pool.take(1000)  # `first` is still held here: a new object
    assert held is not first
    del array
    assert pool.reused == 0
    hash(first)  # a cached hash must not survive reuse
    first_id = id(first)
    del first
    again, array = pool.take(1000)
    assert id(again) == first_id and pool.reused == 1
    array[:] = 2
    del array
    assert again == b"\x02" * 1000
    assert hash(again) == hash(b"\x02" * 1000)
    other_size, array = pool.take(999)  # sizes must match exactly
    del array
    assert len(other_size) == 999 and pool.reused == 1
    view = memoryview(held)  # a view keeps the object busy
    del held
    busy, array = pool.take(1000)
    del array
    assert busy is not view.obj
    view.release()


def test_bytes_pool_keeps_at_most_max_bytes() -> None:
    pool = memory.BytesPool(max_bytes=3000)
    for _ in range(5):
        taken, array = pool.take(1000)
        del array, taken
    assert pool.reused == 4  # the same idle object each time
    kept = [pool.take(1000) for _ in range(5)]  # all busy: five objects
    del kept
    assert sum(len(item) for item in pool._items) <= 3000
    big, array = pool.take(4000)  # larger than the pool: never kept
    del array, big
    assert all(len(item) == 1000 for item in pool._items)
    pool.clear()
    assert pool._items == []
