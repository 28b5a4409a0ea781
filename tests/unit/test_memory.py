"""core.memory: owned buffers on huge pages, per-thread scratch, and expand_sliver's ``out``."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from walrus_p2p.core import memory
from walrus_p2p.core.encoding import EncodingConfig, SliverType, expand_sliver
from walrus_p2p.core.metadata import encode_blob, sliver_root
from walrus_p2p.errors import EncodingError


@pytest.mark.parametrize("length", [0, 1, 4096, memory.MIN_HUGE_BYTES + 3])
def test_new_buffer_is_a_fresh_array_of_its_own(length: int) -> None:
    first = memory.new_buffer(length)
    second = memory.new_buffer(length)
    assert first.dtype == np.uint8 and first.shape == (length,) and first.flags.writeable
    assert first.flags.owndata and not np.shares_memory(first, second)
    first[:] = 7
    assert bytes(first) == b"\x07" * length


def test_no_bytes_object_is_written_or_reused() -> None:
    for name in ("new_bytes", "BytesPool", "fills_in_place", "_writable", "_HASH_OFFSET"):
        assert not hasattr(memory, name)


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
