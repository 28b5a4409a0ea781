"""The durable sliver store: round trips, capacity, format versions, corruption, reopening."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import walrus_p2p.storage as storage
from walrus_p2p.errors import NotFoundError, StorageError, StorageFullError
from walrus_p2p.storage import (
    BlobState,
    CorruptDataError,
    DiskStore,
    SliverKey,
    SliverKind,
    _disk,
    open_store,
)
from walrus_p2p.types import BlobId

P = SliverKind.PRIMARY
S = SliverKind.SECONDARY
INLINE_LIMIT = 64
"""Small, so short slivers test the inline path and longer ones the file path."""


def blob(number: int) -> BlobId:
    return BlobId(number.to_bytes(32, "big"))


def payload(tag: int, size: int) -> bytes:
    pattern = tag.to_bytes(4, "big") + b"\xa5\x5a"
    return (pattern * (size // len(pattern) + 1))[:size]


def sliver_files(root: Path) -> list[Path]:
    return sorted(path for path in (root / "slivers").rglob("*") if path.is_file())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path) -> Iterator[DiskStore]:
    with open_store(root, capacity_bytes=1 << 20, inline_limit=INLINE_LIMIT) as opened:
        yield opened


def test_public_api_is_pinned() -> None:
    assert sorted(storage.__all__) == sorted(
        [
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
    )
    error = CorruptDataError("x", blob_id=blob(1), sliver=SliverKey(0, P))
    assert isinstance(error, NotFoundError) and error.reason == "DATA_CORRUPT"


@pytest.mark.parametrize("size", [0, 1, INLINE_LIMIT, INLINE_LIMIT + 1, 300_000])
def test_sliver_round_trip(store: DiskStore, size: int) -> None:
    store.put_metadata(blob(1), b"metadata")
    data = payload(size, size)
    store.put_sliver(blob(1), 3, S, data)
    assert store.get_sliver(blob(1), 3, S) == data
    assert type(store.get_sliver(blob(1), 3, S)) is bytes
    assert store.has_sliver(blob(1), 3, S)
    assert not store.has_sliver(blob(1), 3, P)
    assert store.list_slivers(blob(1)) == [SliverKey(3, S)]
    assert len(sliver_files(store.path)) == (1 if size > INLINE_LIMIT else 0)
    assert store.used_bytes() == len(b"metadata") + size


def test_buffer_types_accepted(store: DiskStore) -> None:
    store.put_metadata(blob(1), bytearray(b"m"))
    store.put_sliver(blob(1), 0, P, memoryview(payload(1, 500)))
    store.put_sliver(blob(1), 1, P, bytearray(payload(2, 10)))
    assert store.get_sliver(blob(1), 0, P) == payload(1, 500)
    assert store.get_sliver(blob(1), 1, P) == payload(2, 10)


def test_missing_things_raise_not_found(store: DiskStore) -> None:
    with pytest.raises(NotFoundError):
        store.get_metadata(blob(1))
    with pytest.raises(NotFoundError):
        store.get_blob_state(blob(1))
    with pytest.raises(NotFoundError, match="metadata first"):
        store.put_sliver(blob(1), 0, P, b"x")
    store.put_metadata(blob(1), b"m")
    with pytest.raises(NotFoundError) as caught:
        store.get_sliver(blob(1), 0, P)
    assert not isinstance(caught.value, CorruptDataError)
    assert caught.value.reason == "NOT_FOUND"
    assert store.list_slivers(blob(2)) == []


def test_bad_arguments_are_value_errors(store: DiskStore) -> None:
    store.put_metadata(blob(1), b"m")
    with pytest.raises(ValueError):
        store.put_sliver(BlobId(b"short"), 0, P, b"x")
    with pytest.raises(ValueError):
        store.put_sliver(blob(1), 256, P, b"x")
    with pytest.raises(ValueError):
        store.get_sliver(blob(1), -1, P)
    with pytest.raises(ValueError):
        store.is_durable(blob(1), [(0, 7)])  # type: ignore[list-item]


def test_replacing_a_sliver_swaps_files_and_accounting(store: DiskStore) -> None:
    store.put_metadata(blob(1), b"m")
    store.put_sliver(blob(1), 0, P, payload(1, 1000))
    first = sliver_files(store.path)
    store.put_sliver(blob(1), 0, P, payload(2, 2000))
    second = sliver_files(store.path)
    assert len(first) == len(second) == 1 and first != second
    assert store.get_sliver(blob(1), 0, P) == payload(2, 2000)
    assert store.used_bytes() == 1 + 2000
    store.put_sliver(blob(1), 0, P, payload(3, 5))  # file -> inline
    assert sliver_files(store.path) == []
    assert store.get_sliver(blob(1), 0, P) == payload(3, 5)
    assert store.used_bytes() == 1 + 5


def test_is_durable(store: DiskStore) -> None:
    required = {(0, P), (3, S)}
    assert not store.is_durable(blob(1), required)
    store.put_metadata(blob(1), b"m")
    assert store.is_durable(blob(1), [])
    store.put_sliver(blob(1), 0, P, payload(1, 10))
    assert not store.is_durable(blob(1), required)
    store.put_sliver(blob(1), 3, S, payload(2, 1000))
    assert store.is_durable(blob(1), required)
    assert store.is_durable(blob(1), required, verify=True)
    assert not store.is_durable(blob(1), required | {(1, P)})


def test_capacity_is_enforced_before_writing(root: Path) -> None:
    with open_store(root, capacity_bytes=1000, inline_limit=INLINE_LIMIT) as store:
        store.put_metadata(blob(1), b"0123456789")
        store.put_sliver(blob(1), 0, P, payload(1, 590))
        with pytest.raises(StorageFullError) as caught:
            store.put_sliver(blob(1), 1, P, payload(2, 401))
        assert caught.value.reason == "STORAGE_FULL"
        assert not store.has_sliver(blob(1), 1, P)
        assert len(sliver_files(root)) == 1
        assert list((root / "tmp").iterdir()) == []
        store.put_sliver(blob(1), 1, P, payload(2, 400))  # exactly full
        assert store.used_bytes() == 1000
        with pytest.raises(StorageFullError):
            store.put_sliver(blob(1), 2, P, b"x")
        with pytest.raises(StorageFullError):
            store.put_metadata(blob(2), b"x")
        # Replacing needs room for both copies until the old one is gone.
        with pytest.raises(StorageFullError):
            store.put_sliver(blob(1), 1, P, payload(3, 400))
        assert store.get_sliver(blob(1), 1, P) == payload(2, 400)

        assert store.delete_sliver(blob(1), 1, P)
        assert store.used_bytes() == 600
        store.put_sliver(blob(1), 2, S, payload(4, 400))
        assert store.delete_blob(blob(1))
        assert store.used_bytes() == 0
        assert sliver_files(root) == []
        store.put_metadata(blob(2), b"m")
        store.put_sliver(blob(2), 0, P, payload(5, 999))


def test_disk_full_from_the_os_is_storage_full(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put_metadata(blob(1), b"m")

    def no_space(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_disk.os, "write", no_space)
    with pytest.raises(StorageFullError):
        store.put_sliver(blob(1), 0, P, payload(1, 1000))
    monkeypatch.undo()
    assert store.used_bytes() == 1
    assert list((store.path / "tmp").iterdir()) == []
    store.put_sliver(blob(1), 0, P, payload(1, 1000))  # the reservation was released


def test_os_errors_are_translated(store: DiskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.put_metadata(blob(1), b"m")

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(_disk.os, "fsync", failing_fsync)
    with pytest.raises(StorageError) as caught:
        store.put_sliver(blob(1), 0, P, payload(1, 1000))
    assert type(caught.value) is StorageError
    assert isinstance(caught.value.__cause__, OSError)
    monkeypatch.undo()
    assert not store.has_sliver(blob(1), 0, P)
    assert sliver_files(store.path) == [] and list((store.path / "tmp").iterdir()) == []


def test_reopen_after_clean_close(root: Path) -> None:
    with open_store(root, capacity_bytes=1 << 20, inline_limit=INLINE_LIMIT) as store:
        store.put_metadata(blob(1), b"meta-1")
        store.put_sliver(blob(1), 0, P, payload(1, 10))
        store.put_sliver(blob(1), 0, S, payload(2, 5000))
        store.set_blob_state(blob(1), BlobState(certified_epoch=3, end_epoch=9, deletable=True))
        store.set_blob_state(blob(2), BlobState(invalid=True))
        store.put_value("sync", b"cursor", b"\x01\x02")
        used = store.used_bytes()
    with pytest.raises(StorageError, match="closed"):
        store.get_sliver(blob(1), 0, P)
    store.close()  # idempotent

    with open_store(root, capacity_bytes=1 << 20, create=False) as store:
        assert store.get_metadata(blob(1)) == b"meta-1"
        assert store.get_sliver(blob(1), 0, P) == payload(1, 10)
        assert store.get_sliver(blob(1), 0, S) == payload(2, 5000)
        assert store.get_blob_state(blob(1)) == BlobState(3, 9, True, False)
        assert store.get_blob_state(blob(2)) == BlobState(invalid=True)
        assert not store.has_metadata(blob(2))
        assert store.get_value("sync", b"cursor") == b"\x01\x02"
        assert store.used_bytes() == used


def test_open_refuses_missing_locked_and_foreign(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        open_store(tmp_path / "absent", capacity_bytes=10, create=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a store")
    with pytest.raises(StorageError, match="neither empty nor"):
        open_store(other, capacity_bytes=10)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        open_store(a_file, capacity_bytes=10)

    root = tmp_path / "store"
    with open_store(root, capacity_bytes=10), pytest.raises(StorageError, match="in use"):
        open_store(root, capacity_bytes=10)
    open_store(root, capacity_bytes=10).close()


@pytest.mark.parametrize(
    ("pragma", "message"),
    [("user_version = 2", "format version 2"), ("application_id = 7", "not a walrus-p2p store")],
)
def test_unknown_format_is_refused(root: Path, pragma: str, message: str) -> None:
    open_store(root, capacity_bytes=10).close()
    connection = sqlite3.connect(root / "store.sqlite3")
    connection.execute(f"PRAGMA {pragma}")
    connection.close()
    with pytest.raises(StorageError, match=message) as caught:
        open_store(root, capacity_bytes=10)
    assert caught.value.reason == "STORAGE_FORMAT_UNSUPPORTED"
    # The refusal released the lock and changed nothing: fixing the version makes it open.
    connection = sqlite3.connect(root / "store.sqlite3")
    connection.execute(f"PRAGMA user_version = {storage.FORMAT_VERSION}")
    connection.execute(f"PRAGMA application_id = {_disk.APPLICATION_ID}")
    connection.close()
    open_store(root, capacity_bytes=10).close()


def test_sliver_files_without_database_are_refused(root: Path) -> None:
    with open_store(root, capacity_bytes=1 << 20, inline_limit=INLINE_LIMIT) as store:
        store.put_metadata(blob(1), b"m")
        store.put_sliver(blob(1), 0, P, payload(1, 1000))
    for path in root.glob("store.sqlite3*"):
        path.unlink()
    with pytest.raises(StorageError, match="sliver files but no"):
        open_store(root, capacity_bytes=1 << 20)


def _corrupt_file(path: Path, *, truncate: bool = False) -> None:
    data = bytearray(path.read_bytes())
    if truncate:
        path.write_bytes(bytes(data[:-1]))
    else:
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


def test_flipped_bit_in_a_file_is_reported_corrupt_then_repaired(store: DiskStore) -> None:
    store.put_metadata(blob(1), b"m")
    store.put_sliver(blob(1), 2, P, payload(1, 4096))
    (path,) = sliver_files(store.path)
    _corrupt_file(path)
    # Same size: the cheap check cannot see it, a verifying check can.
    assert store.is_durable(blob(1), [(2, P)])
    assert not store.is_durable(blob(1), [(2, P)], verify=True)
    with pytest.raises(CorruptDataError) as caught:
        store.get_sliver(blob(1), 2, P)
    assert caught.value.sliver == SliverKey(2, P) and caught.value.blob_id == blob(1)
    # Flagged: no longer reported as held.
    assert not store.has_sliver(blob(1), 2, P)
    assert store.list_slivers(blob(1)) == []
    assert not store.is_durable(blob(1), [(2, P)])
    with pytest.raises(CorruptDataError):
        store.get_sliver(blob(1), 2, P)
    # A scrubber repairs by putting the sliver again.
    store.put_sliver(blob(1), 2, P, payload(1, 4096))
    assert store.get_sliver(blob(1), 2, P) == payload(1, 4096)
    assert store.is_durable(blob(1), [(2, P)], verify=True)
    assert len(sliver_files(store.path)) == 1


def test_truncated_file_fails_the_cheap_check(store: DiskStore) -> None:
    store.put_metadata(blob(1), b"m")
    store.put_sliver(blob(1), 0, S, payload(1, 4096))
    (path,) = sliver_files(store.path)
    _corrupt_file(path, truncate=True)
    assert not store.is_durable(blob(1), [(0, S)])
    assert not store.has_sliver(blob(1), 0, S)
    with pytest.raises(CorruptDataError):
        store.get_sliver(blob(1), 0, S)


def test_swapped_files_do_not_verify(store: DiskStore) -> None:
    """The checksum is bound to the sliver's key: a right-sized file of another sliver fails."""
    store.put_metadata(blob(1), b"m")
    store.put_sliver(blob(1), 0, P, payload(1, 4096))
    store.put_sliver(blob(1), 1, P, payload(1, 4096))  # the same bytes under another key
    first, second = sliver_files(store.path)
    first.write_bytes(b"\x00" * 4096)
    second.write_bytes(b"\x00" * 4096)
    for pair in (0, 1):
        with pytest.raises(CorruptDataError):
            store.get_sliver(blob(1), pair, P)


def test_corrupt_inline_sliver_and_metadata(root: Path) -> None:
    with open_store(root, capacity_bytes=1 << 20, inline_limit=INLINE_LIMIT) as store:
        store.put_metadata(blob(1), b"metadata")
        store.put_sliver(blob(1), 0, P, b"inline bytes")
    connection = sqlite3.connect(root / "store.sqlite3")
    connection.execute("UPDATE slivers SET data = ?", (b"inline bytez",))
    connection.execute("UPDATE blobs SET metadata = ?", (b"metadatA",))
    connection.commit()
    connection.close()
    with open_store(root, capacity_bytes=1 << 20) as store:
        with pytest.raises(CorruptDataError) as caught:
            store.get_metadata(blob(1))
        assert caught.value.sliver is None
        with pytest.raises(CorruptDataError):
            store.get_sliver(blob(1), 0, P)
        assert not store.is_durable(blob(1), [], verify=True)
        store.put_metadata(blob(1), b"metadata")
        assert store.get_metadata(blob(1)) == b"metadata"


def test_reopen_cleans_orphans_and_flags_lost_files(root: Path) -> None:
    with open_store(root, capacity_bytes=1 << 20, inline_limit=INLINE_LIMIT) as store:
        store.put_metadata(blob(1), b"m")
        store.put_sliver(blob(1), 0, P, payload(1, 1000))
        store.put_sliver(blob(1), 1, P, payload(2, 1000))
    kept, lost = sliver_files(root)
    lost.unlink()
    (root / "tmp" / "half-written").write_bytes(b"partial")
    orphan = root / "slivers" / "ab" / "orphan"
    orphan.write_bytes(b"no row points here")
    with open_store(root, capacity_bytes=1 << 20) as store:
        assert not orphan.exists()
        assert list((root / "tmp").iterdir()) == []
        assert kept.exists()
        assert len(store.list_slivers(blob(1))) == 1
        assert not store.is_durable(blob(1), [(0, P), (1, P)])
        missing = next(pair for pair in (0, 1) if not store.has_sliver(blob(1), pair, P))
        with pytest.raises(CorruptDataError, match="flagged"):
            store.get_sliver(blob(1), missing, P)


def test_delete_slivers_keeps_state_and_metadata(store: DiskStore) -> None:
    store.put_metadata(blob(1), b"m")
    store.set_blob_state(blob(1), BlobState(invalid=True))
    store.put_sliver(blob(1), 0, P, payload(1, 1000))
    store.put_sliver(blob(1), 0, S, payload(1, 10))
    assert store.delete_slivers(blob(1)) == 2
    assert store.list_slivers(blob(1)) == []
    assert sliver_files(store.path) == []
    assert store.get_metadata(blob(1)) == b"m"
    assert store.get_blob_state(blob(1)).invalid
    assert store.used_bytes() == 1
    assert not store.delete_sliver(blob(1), 0, P)
    assert store.delete_blob(blob(1))
    assert not store.delete_blob(blob(1))
    with pytest.raises(NotFoundError):
        store.get_blob_state(blob(1))


def test_iter_blobs_pages_and_filters(store: DiskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_disk, "_PAGE_SIZE", 2)
    for number in range(5):
        store.put_metadata(blob(number), b"m" * number)
        store.set_blob_state(blob(number), BlobState(end_epoch=number * 10))
    store.put_sliver(blob(3), 0, P, payload(1, 100))
    store.put_sliver(blob(3), 1, P, payload(1, 5))
    store.set_blob_state(blob(9), BlobState())
    infos = list(store.iter_blobs())
    assert [info.blob_id for info in infos] == [blob(n) for n in (0, 1, 2, 3, 4, 9)]
    by_id = {info.blob_id: info for info in infos}
    assert by_id[blob(3)].sliver_count == 2 and by_id[blob(3)].stored_bytes == 3 + 105
    assert not by_id[blob(9)].has_metadata and by_id[blob(0)].has_metadata
    expired = [info.blob_id for info in store.iter_blobs(end_epoch_before=25)]
    assert expired == [blob(0), blob(1), blob(2)]


def test_node_records(store: DiskStore) -> None:
    assert store.get_value("sync", b"a") is None
    store.put_value("sync", b"b", b"2")
    store.put_value("sync", b"a", b"1")
    store.put_value("recovery", b"a", b"x")
    store.put_value("sync", b"a", b"1'")
    assert list(store.iter_values("sync")) == [(b"a", b"1'"), (b"b", b"2")]
    assert store.delete_value("sync", b"a")
    assert not store.delete_value("sync", b"a")
    assert store.get_value("recovery", b"a") == b"x"
    with pytest.raises(ValueError):
        store.put_value("sync", b"big", bytes(storage.MAX_VALUE_SIZE + 1))
    assert store.used_bytes() == 0


def test_concurrent_writers_and_readers(store: DiskStore) -> None:
    """Threads put, replace and read the same slivers; readers see only complete values."""
    store.put_metadata(blob(1), b"m")
    versions = {tag: payload(tag, 100 + 700 * tag) for tag in range(1, 5)}
    store.put_sliver(blob(1), 0, P, versions[1])
    failures: list[BaseException] = []
    seen: set[bytes] = set()

    def writer(tag: int) -> None:
        try:
            for _ in range(15):
                store.put_sliver(blob(1), 0, P, versions[tag])
                store.put_sliver(blob(1), tag, S, versions[tag])
        except BaseException as error:
            failures.append(error)

    def reader() -> None:
        try:
            for _ in range(60):
                seen.add(store.get_sliver(blob(1), 0, P))
                store.is_durable(blob(1), [(0, P)])
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in range(1, 5)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert seen <= set(versions.values())
    assert store.get_sliver(blob(1), 0, P) in versions.values()
    assert len(sliver_files(store.path)) == 5
    expected = 1 + len(store.get_sliver(blob(1), 0, P)) + sum(map(len, versions.values()))
    assert store.used_bytes() == expected


async def test_usable_from_trio_threads(store: DiskStore) -> None:
    await trio.to_thread.run_sync(store.put_metadata, blob(1), b"m")
    async with trio.open_nursery() as nursery:
        for pair in range(8):
            nursery.start_soon(
                trio.to_thread.run_sync, store.put_sliver, blob(1), pair, P, payload(pair, 200)
            )
    required = {(pair, P) for pair in range(8)}
    assert await trio.to_thread.run_sync(store.is_durable, blob(1), required)


def test_unsafe_no_fsync_mode_still_works(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(_disk.os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd))
    with open_store(root, capacity_bytes=1 << 20, inline_limit=0, fsync=False) as store:
        store.put_metadata(blob(1), b"m")
        store.put_sliver(blob(1), 0, P, b"abc")
        assert store.get_sliver(blob(1), 0, P) == b"abc"
    assert calls == []
    with open_store(root, capacity_bytes=1 << 20, inline_limit=0) as store:
        store.put_sliver(blob(1), 1, P, b"abc")
    assert len(calls) >= 2  # the file and its directory


operations = st.lists(
    st.tuples(
        st.sampled_from(["put", "delete_sliver", "delete_slivers", "delete_blob", "metadata"]),
        st.integers(0, 2),  # blob
        st.integers(0, 3),  # pair
        st.sampled_from([P, S]),
        st.integers(0, 3 * INLINE_LIMIT),  # size: inline and file
    ),
    max_size=25,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations)
def test_store_matches_a_model(
    tmp_path: Path, steps: list[tuple[str, int, int, SliverKind, int]]
) -> None:
    """Any sequence of puts and deletes leaves the store equal to a dict, accounting included."""
    root = tmp_path / f"model-{os.urandom(6).hex()}"
    metadata: dict[BlobId, bytes] = {}
    slivers: dict[tuple[BlobId, int, SliverKind], bytes] = {}
    with open_store(root, capacity_bytes=1 << 30, inline_limit=INLINE_LIMIT, fsync=False) as store:
        for number, (operation, blob_number, pair, kind, size) in enumerate(steps):
            blob_id = blob(blob_number)
            if operation == "metadata":
                metadata[blob_id] = payload(number, size % 50)
                store.put_metadata(blob_id, metadata[blob_id])
            elif operation == "put":
                data = payload(number, size)
                if blob_id in metadata:
                    store.put_sliver(blob_id, pair, kind, data)
                    slivers[(blob_id, pair, kind)] = data
                else:
                    with pytest.raises(NotFoundError):
                        store.put_sliver(blob_id, pair, kind, data)
            elif operation == "delete_sliver":
                existed = slivers.pop((blob_id, pair, kind), None) is not None
                assert store.delete_sliver(blob_id, pair, kind) == existed
            elif operation == "delete_slivers":
                keys = [key for key in slivers if key[0] == blob_id]
                for key in keys:
                    del slivers[key]
                assert store.delete_slivers(blob_id) == len(keys)
            else:
                assert store.delete_blob(blob_id) == (blob_id in metadata)
                metadata.pop(blob_id, None)
                for key in [key for key in slivers if key[0] == blob_id]:
                    del slivers[key]
        used = sum(map(len, metadata.values())) + sum(map(len, slivers.values()))
        assert store.used_bytes() == used
    with open_store(root, capacity_bytes=1 << 30, inline_limit=INLINE_LIMIT, fsync=False) as store:
        assert store.used_bytes() == used
        for blob_id, data in metadata.items():
            assert store.get_metadata(blob_id) == data
        for (blob_id, pair, kind), data in slivers.items():
            assert store.get_sliver(blob_id, pair, kind) == data
        listed = {
            (info.blob_id, key.pair_index, key.kind)
            for info in store.iter_blobs()
            for key in store.list_slivers(info.blob_id)
        }
        assert listed == set(slivers)
        big = [data for data in slivers.values() if len(data) > INLINE_LIMIT]
        assert len(sliver_files(root)) == len(big)


def test_iter_values_with_a_prefix_reads_only_those_keys(store: DiskStore) -> None:
    keys = [b"", b"\x01", b"\x01\x00", b"\x01\xff", b"\x01\xff\x00", b"\x02", b"\xff", b"\xff\xff"]
    for index, key in enumerate(keys):
        store.put_value("records", key, bytes([index]))
    store.put_value("other", b"\x01\x05", b"x")
    for prefix in (b"", b"\x01", b"\x01\xff", b"\x02", b"\xff", b"\xff\xff", b"\x03"):
        expected = [(key, bytes([i])) for i, key in enumerate(keys) if key.startswith(prefix)]
        assert list(store.iter_values("records", prefix=prefix)) == expected


BIG_SIZES = [
    _disk._DIRECT_MIN_BYTES,
    _disk._DIRECT_MIN_BYTES + 1,
    _disk._WRITE_CHUNK + 4097,
    2 * _disk._WRITE_CHUNK,
]


@pytest.mark.parametrize("size", BIG_SIZES)
def test_big_durable_slivers_are_written_directly_and_read_back_exactly(
    root: Path, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened_flags: list[int] = []
    real_open = os.open

    def recording_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        opened_flags.append(flags)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_disk.os, "open", recording_open)
    with open_store(root, capacity_bytes=1 << 26, inline_limit=INLINE_LIMIT) as store:
        store.put_metadata(blob(1), b"m")
        data = payload(size, size)
        store.put_sliver(blob(1), 2, P, data)
        direct = any(flags & getattr(os, "O_DIRECT", 0) for flags in opened_flags)
        if store._direct:  # this file system takes O_DIRECT: the file went through it
            assert direct
        assert store.get_sliver(blob(1), 2, P) == data
        (file,) = sliver_files(store.path)
        assert file.stat().st_size == size  # the padding of the last block was cut off
    with open_store(root, capacity_bytes=1 << 26, create=False) as store:
        assert store.get_sliver(blob(1), 2, P) == data


def test_a_file_system_that_refuses_o_direct_gets_ordinary_writes(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    direct_flag = getattr(os, "O_DIRECT", 0)
    refused: list[int] = []

    def refusing_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & direct_flag:
            refused.append(flags)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_disk.os, "open", refusing_open)
    size = _disk._DIRECT_MIN_BYTES + 10
    with open_store(root, capacity_bytes=1 << 26, inline_limit=INLINE_LIMIT) as store:
        store.put_metadata(blob(1), b"m")
        for pair in range(3):
            store.put_sliver(blob(1), pair, P, payload(pair, size))
        for pair in range(3):
            assert store.get_sliver(blob(1), pair, P) == payload(pair, size)
        assert not store._direct
    assert len(refused) == (1 if direct_flag else 0)  # tried once, then not again


def test_other_errors_of_a_direct_write_are_not_swallowed(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not getattr(os, "O_DIRECT", 0):
        pytest.skip("no O_DIRECT here")

    def failing_pwrite(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_disk.os, "pwrite", failing_pwrite)
    with open_store(root, capacity_bytes=1 << 26, inline_limit=INLINE_LIMIT) as store:
        store.put_metadata(blob(1), b"m")
        if not store._direct:
            pytest.skip("this file system refuses O_DIRECT")
        with pytest.raises(StorageFullError):
            store.put_sliver(blob(1), 0, P, payload(1, _disk._DIRECT_MIN_BYTES))
        assert not store.has_sliver(blob(1), 0, P)
        assert sliver_files(store.path) == []
        assert not list((store.path / "tmp").iterdir())
