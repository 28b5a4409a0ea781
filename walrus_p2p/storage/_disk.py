"""The durable store on disk: an SQLite index (WAL, synchronous=FULL) and a file per large sliver.

Owner: storage. See ``docs/storage.md`` for why it is built this way. The invariants that make a
confirmation safe to sign:

* A sliver exists for readers only once its index row is committed, and the row is committed
  only after the sliver's bytes are durable: inline bytes commit with the row; a file is written
  under ``tmp/``, fsynced, renamed to a name never used before, and its directory fsynced first.
* Files are immutable once renamed into place. Replacing a sliver writes a new file, commits the
  row pointing to it, then unlinks the old one; anything a crash leaves behind without a row is
  an orphan and is removed on the next open.
* Every sliver and every metadata record carries a keyed blake3 checksum (bound to the blob id
  and sliver key) that each read verifies; damaged data raises :class:`CorruptDataError` and a
  damaged sliver is flagged so ``has_sliver`` and ``is_durable`` stop reporting it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import mmap
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import blake3

from walrus_p2p.errors import NotFoundError, StorageError, StorageFullError, WalrusError
from walrus_p2p.storage._api import (
    FORMAT_VERSION,
    MAX_PAIR_INDEX,
    BlobInfo,
    BlobState,
    BlobStore,
    Bytes,
    CorruptDataError,
    SliverKey,
)
from walrus_p2p.types import BLOB_ID_LENGTH, BlobId, SliverKind, short_id

logger = logging.getLogger(__name__)

DEFAULT_INLINE_LIMIT = 64 * 1024
"""Slivers up to this many bytes live inside the SQLite database; larger ones get a file."""

MAX_VALUE_SIZE = 1024 * 1024
"""Largest node record (``put_value``); these are cursors and progress, not data."""

APPLICATION_ID = 0x57414C52
"""SQLite ``application_id`` ("WALR") that marks the database as a walrus-p2p store."""

DATABASE_NAME = "store.sqlite3"
LOCK_NAME = "LOCK"
SLIVER_DIRECTORY = "slivers"
TEMPORARY_DIRECTORY = "tmp"
_NEW_DATABASE_NAME = DATABASE_NAME + ".new"
_WRITE_CHUNK = 8 * 1024 * 1024
_DIRECT_MIN_BYTES = 1024 * 1024
"""Durable files at least this big are written with ``O_DIRECT`` where the file system takes it
(see :meth:`_DiskStore._write_direct`)."""
_DIRECT_ALIGN = 4096


class _AlignedChunk(threading.local):
    """Per thread: one page-aligned buffer of ``_WRITE_CHUNK`` bytes for ``O_DIRECT`` writes."""

    buffer: mmap.mmap | None = None

    def get(self) -> mmap.mmap:
        if self.buffer is None:
            self.buffer = mmap.mmap(-1, _WRITE_CHUNK)
        return self.buffer


_aligned_chunk = _AlignedChunk()
_PAGE_SIZE = 256
_MAX_IDLE_READERS = 8
_SLIVER_CHECKSUM_CONTEXT = "walrus-p2p 2026 storage sliver checksum v1"
_METADATA_CHECKSUM_CONTEXT = "walrus-p2p 2026 storage metadata checksum v1"
_KIND_LETTER = {SliverKind.PRIMARY: "p", SliverKind.SECONDARY: "s"}

_SCHEMA = """
CREATE TABLE blobs (
    blob_id BLOB PRIMARY KEY NOT NULL CHECK (length(blob_id) = 32),
    metadata BLOB,
    metadata_checksum BLOB,
    certified_epoch INTEGER,
    end_epoch INTEGER,
    deletable INTEGER NOT NULL DEFAULT 0,
    invalid INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX blobs_by_end_epoch ON blobs (end_epoch);
CREATE TABLE slivers (
    blob_id BLOB NOT NULL REFERENCES blobs (blob_id),
    pair_index INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    size INTEGER NOT NULL,
    checksum BLOB NOT NULL,
    corrupt INTEGER NOT NULL DEFAULT 0,
    file_name TEXT,
    data BLOB,
    PRIMARY KEY (blob_id, pair_index, kind)
);
CREATE TABLE records (
    namespace TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
"""

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _storage_error(error: BaseException, action: str) -> StorageError:
    """Translate an OS or SQLite error; "disk full" in either becomes StorageFullError."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"{action}: the disk is full ({error.strerror})")
    if isinstance(error, sqlite3.Error) and getattr(error, "sqlite_errorcode", None) == (
        sqlite3.SQLITE_FULL
    ):
        return StorageFullError(f"{action}: the disk is full ({error})")
    return StorageError(f"{action}: {type(error).__name__}: {error}")


def _translated(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Let walrus errors through and turn OSError / sqlite3.Error into StorageError."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(*args, **kwargs)
        except WalrusError:
            raise
        except (OSError, sqlite3.Error) as error:
            raise _storage_error(error, method.__name__) from error

    return wrapper


def _check_blob_id(blob_id: bytes) -> BlobId:
    if not isinstance(blob_id, bytes) or len(blob_id) != BLOB_ID_LENGTH:
        raise ValueError(f"blob id must be {BLOB_ID_LENGTH} bytes")
    return BlobId(blob_id)


def _check_key(pair_index: int, kind: SliverKind | int) -> SliverKey:
    if isinstance(pair_index, bool) or not isinstance(pair_index, int):
        raise ValueError(f"pair index must be an int, got {type(pair_index).__name__}")
    if not 0 <= pair_index <= MAX_PAIR_INDEX:
        raise ValueError(f"pair index {pair_index} out of range 0..{MAX_PAIR_INDEX}")
    return SliverKey(pair_index, SliverKind(kind))


def _as_view(data: Bytes) -> memoryview:
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("sliver data must be a contiguous buffer")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def sliver_checksum(blob_id: bytes, key: SliverKey, data: Bytes) -> bytes:
    """Keyed to the sliver's identity, so bytes stored under the wrong key do not verify."""
    hasher = blake3.blake3(derive_key_context=_SLIVER_CHECKSUM_CONTEXT)
    hasher.update(blob_id)
    hasher.update(key.pair_index.to_bytes(2, "big"))
    hasher.update(bytes([key.kind.value]))
    hasher.update(data)
    return hasher.digest()


def metadata_checksum(blob_id: bytes, metadata: Bytes) -> bytes:
    hasher = blake3.blake3(derive_key_context=_METADATA_CHECKSUM_CONTEXT)
    hasher.update(blob_id)
    hasher.update(metadata)
    return hasher.digest()


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_store(
    path: str | os.PathLike[str],
    *,
    capacity_bytes: int,
    inline_limit: int = DEFAULT_INLINE_LIMIT,
    create: bool = True,
    fsync: bool = True,
) -> DiskStore:
    """Open (or, with ``create``, make) the store at directory ``path``; close it when done.

    ``capacity_bytes`` limits metadata plus sliver bytes. ``fsync=False`` skips every fsync and
    is only for tests: data then survives a process crash but not a power loss.
    Refuses (``StorageError``) a directory that holds something else, a store with another format
    version, and a store another process (or another open in this one) holds.
    """
    if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int):
        raise ValueError("capacity_bytes must be an int")
    if capacity_bytes < 0 or inline_limit < 0:
        raise ValueError("capacity_bytes and inline_limit must not be negative")
    try:
        return DiskStore(
            Path(path),
            capacity_bytes=capacity_bytes,
            inline_limit=inline_limit,
            create=create,
            fsync=fsync,
        )
    except WalrusError:
        raise
    except (OSError, sqlite3.Error) as error:
        raise _storage_error(error, f"open store {os.fspath(path)}") from error


class DiskStore:
    """The durable :class:`~walrus_p2p.storage.BlobStore`; make one with :func:`open_store`."""

    def __init__(
        self,
        root: Path,
        *,
        capacity_bytes: int,
        inline_limit: int,
        create: bool,
        fsync: bool,
    ) -> None:
        self._root = root
        self._capacity = capacity_bytes
        self._inline_limit = inline_limit
        self._fsync = fsync
        self._direct = True
        """Big durable files go through ``O_DIRECT`` until the file system refuses it once."""
        self._sliver_directory = root / SLIVER_DIRECTORY
        self._temporary_directory = root / TEMPORARY_DIRECTORY
        self._lock = threading.Lock()  # the writer connection, _used, _reserved, _closed
        self._readers_lock = threading.Lock()  # _idle_readers
        self._idle_readers: list[sqlite3.Connection] = []
        self._closed = False
        self._used = 0
        self._reserved = 0

        if not root.exists():
            if not create:
                raise NotFoundError(f"no store at {root}")
            root.mkdir(parents=True)
            if fsync:
                _fsync_directory(root.parent)
        elif not root.is_dir():
            raise StorageError(f"{root} is not a directory")
        self._lock_fd = self._take_lock()
        try:
            self._writer = self._open_database(create)
            try:
                self._make_directories()
                self._recover()
                self._used = self._count_used()
            except BaseException:
                self._writer.close()
                raise
        except BaseException:
            os.close(self._lock_fd)
            raise
        logger.info("store opened path=%s used=%d capacity=%d", root, self._used, self._capacity)

    # opening

    def _take_lock(self) -> int:
        fd = os.open(self._root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageError(
                f"store {self._root} is in use by another process or handle"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self._root / DATABASE_NAME, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA busy_timeout = 10000")
        connection.execute("PRAGMA foreign_keys = ON")
        return connection

    def _open_database(self, create: bool) -> sqlite3.Connection:
        database = self._root / DATABASE_NAME
        if not database.exists():
            if not create:
                raise NotFoundError(f"no store at {self._root}")
            self._create_database()
        connection = self._connect()
        try:
            application_id = connection.execute("PRAGMA application_id").fetchone()[0]
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if application_id != APPLICATION_ID:
                raise StorageError(
                    f"{database} is not a walrus-p2p store (application id {application_id:#x})",
                    reason="STORAGE_FORMAT_UNSUPPORTED",
                )
            if version != FORMAT_VERSION:
                raise StorageError(
                    f"store {self._root} has on-disk format version {version}; this version of "
                    f"walrus-p2p reads only format {FORMAT_VERSION}",
                    reason="STORAGE_FORMAT_UNSUPPORTED",
                )
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"could not put {database} in WAL mode (got {mode})")
            connection.execute(f"PRAGMA synchronous = {'FULL' if self._fsync else 'OFF'}")
        except BaseException:
            connection.close()
            raise
        return connection

    def _create_database(self) -> None:
        """Build the schema under a temporary name and rename it: a store exists whole or not."""
        for entry in self._root.iterdir():
            name = entry.name
            if name == LOCK_NAME or name.startswith(_NEW_DATABASE_NAME):
                continue
            if name in (SLIVER_DIRECTORY, TEMPORARY_DIRECTORY) and entry.is_dir():
                if any(child.is_file() for child in entry.rglob("*")):
                    raise StorageError(
                        f"{self._root} holds sliver files but no {DATABASE_NAME}; refusing to "
                        "start an empty store over them"
                    )
                continue
            raise StorageError(f"{self._root} is neither empty nor a walrus-p2p store")
        new = self._root / _NEW_DATABASE_NAME
        for leftover in self._root.glob(_NEW_DATABASE_NAME + "*"):
            leftover.unlink()
        connection = sqlite3.connect(new, isolation_level=None)
        try:
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            connection.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
            connection.execute("BEGIN")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute("COMMIT")
        finally:
            connection.close()
        if self._fsync:
            fd = os.open(new, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.rename(new, self._root / DATABASE_NAME)
        if self._fsync:
            _fsync_directory(self._root)
        logger.info("store created path=%s format=%d", self._root, FORMAT_VERSION)

    def _make_directories(self) -> None:
        made = False
        for directory in (self._sliver_directory, self._temporary_directory):
            if not directory.is_dir():
                directory.mkdir()
                made = True
        for prefix in range(256):
            fan = self._sliver_directory / f"{prefix:02x}"
            if not fan.is_dir():
                fan.mkdir()
                made = True
        if made and self._fsync:
            _fsync_directory(self._sliver_directory)
            _fsync_directory(self._root)

    def _recover(self) -> None:
        """Remove what a crash left half done and flag rows whose file is gone."""
        removed = 0
        for entry in self._temporary_directory.iterdir():
            entry.unlink()
            removed += 1
        referenced = {
            name
            for (name,) in self._writer.execute(
                "SELECT file_name FROM slivers WHERE file_name IS NOT NULL"
            )
        }
        present: set[str] = set()
        for fan in self._sliver_directory.iterdir():
            for entry in fan.iterdir():
                if entry.name in referenced:
                    present.add(entry.name)
                else:
                    entry.unlink()
                    removed += 1
        missing = referenced - present
        if missing:
            logger.warning("sliver files missing count=%d; marked corrupt", len(missing))
            self._writer.execute("BEGIN IMMEDIATE")
            self._writer.executemany(
                "UPDATE slivers SET corrupt = 1 WHERE file_name = ?",
                [(name,) for name in missing],
            )
            self._writer.execute("COMMIT")
        if removed:
            logger.info("removed unfinished or orphaned files count=%d", removed)

    def _count_used(self) -> int:
        slivers = self._writer.execute("SELECT coalesce(sum(size), 0) FROM slivers").fetchone()[0]
        metadata = self._writer.execute(
            "SELECT coalesce(sum(length(metadata)), 0) FROM blobs"
        ).fetchone()[0]
        return int(slivers) + int(metadata)

    # helpers

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"store {self._root} is closed")

    def _query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[Any]:
        """Run a read on a pooled connection: WAL readers never wait for a writer's fsync.

        A pool rather than one connection per thread, because trio's worker threads come and go.
        """
        with self._readers_lock:
            self._check_open()
            connection = self._idle_readers.pop() if self._idle_readers else None
        if connection is None:
            connection = self._connect()
            connection.execute("PRAGMA query_only = ON")
        try:
            return connection.execute(sql, parameters).fetchall()
        finally:
            with self._readers_lock:
                if self._closed or len(self._idle_readers) >= _MAX_IDLE_READERS:
                    connection.close()
                else:
                    self._idle_readers.append(connection)

    def _query_one(self, sql: str, parameters: tuple[Any, ...] = ()) -> Any:
        rows = self._query(sql, parameters)
        return rows[0] if rows else None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; the caller holds ``self._lock``."""
        self._check_open()
        connection = self._writer
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        try:
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _file_path(self, file_name: str) -> Path:
        return self._sliver_directory / file_name[:2] / file_name

    def _check_room(self, size: int, *, replaced: int = 0) -> None:
        """StorageFullError unless ``size`` more bytes fit; the caller holds ``self._lock``.

        Bytes reserved by puts still writing their files count as used.
        """
        available = self._capacity - self._used - self._reserved + replaced
        if size > available:
            raise StorageFullError(
                f"storing {size} bytes exceeds the capacity: {max(available, 0)} of "
                f"{self._capacity} bytes free"
            )

    def _mark_corrupt(
        self, blob_id: BlobId, key: SliverKey, file_name: str | None, checksum: bytes
    ) -> None:
        """Flag the sliver, unless it was replaced or deleted since it was read."""
        with self._lock, self._transaction() as connection:
            cursor = connection.execute(
                "UPDATE slivers SET corrupt = 1 WHERE blob_id = ? AND pair_index = ? "
                "AND kind = ? AND file_name IS ? AND checksum = ?",
                (blob_id, key.pair_index, key.kind.value, file_name, checksum),
            )
            flagged = cursor.rowcount > 0
        if flagged:
            logger.warning(
                "sliver corrupt blob=%s pair=%d kind=%s",
                short_id(blob_id),
                key.pair_index,
                key.kind.name.lower(),
            )

    # the BlobStore protocol

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def path(self) -> Path:
        return self._root

    def used_bytes(self) -> int:
        with self._lock:
            return self._used

    @_translated
    def put_metadata(self, blob_id: BlobId, metadata: Bytes) -> None:
        blob_id = _check_blob_id(blob_id)
        data = bytes(_as_view(metadata))
        checksum = metadata_checksum(blob_id, data)
        with self._lock:
            with self._transaction() as connection:
                row = connection.execute(
                    "SELECT length(metadata) FROM blobs WHERE blob_id = ?", (blob_id,)
                ).fetchone()
                old = int(row[0]) if row is not None and row[0] is not None else 0
                self._check_room(len(data), replaced=old)
                connection.execute(
                    "INSERT INTO blobs (blob_id, metadata, metadata_checksum) VALUES (?, ?, ?) "
                    "ON CONFLICT (blob_id) DO UPDATE SET metadata = excluded.metadata, "
                    "metadata_checksum = excluded.metadata_checksum",
                    (blob_id, data, checksum),
                )
            self._used += len(data) - old

    @_translated
    def get_metadata(self, blob_id: BlobId) -> bytes:
        blob_id = _check_blob_id(blob_id)
        row = self._query_one(
            "SELECT metadata, metadata_checksum FROM blobs WHERE blob_id = ?", (blob_id,)
        )
        if row is None or row[0] is None:
            raise NotFoundError(f"no metadata for blob {short_id(blob_id)}")
        data = bytes(row[0])
        if metadata_checksum(blob_id, data) != row[1]:
            raise CorruptDataError("checksum mismatch", blob_id=blob_id, sliver=None)
        return data

    @_translated
    def has_metadata(self, blob_id: BlobId) -> bool:
        blob_id = _check_blob_id(blob_id)
        row = self._query_one(
            "SELECT 1 FROM blobs WHERE blob_id = ? AND metadata IS NOT NULL", (blob_id,)
        )
        return row is not None

    @_translated
    def get_blob_state(self, blob_id: BlobId) -> BlobState:
        blob_id = _check_blob_id(blob_id)
        row = self._query_one(
            "SELECT certified_epoch, end_epoch, deletable, invalid FROM blobs WHERE blob_id = ?",
            (blob_id,),
        )
        if row is None:
            raise NotFoundError(f"blob {short_id(blob_id)} is unknown")
        return BlobState(row[0], row[1], bool(row[2]), bool(row[3]))

    @_translated
    def set_blob_state(self, blob_id: BlobId, state: BlobState) -> None:
        blob_id = _check_blob_id(blob_id)
        for epoch in (state.certified_epoch, state.end_epoch):
            if epoch is not None and not 0 <= epoch < 2**63:
                raise ValueError(f"epoch {epoch} out of range")
        values = (
            state.certified_epoch,
            state.end_epoch,
            int(state.deletable),
            int(state.invalid),
        )
        with self._lock, self._transaction() as connection:
            connection.execute(
                "INSERT INTO blobs (blob_id, certified_epoch, end_epoch, deletable, invalid) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (blob_id) DO UPDATE SET "
                "certified_epoch = excluded.certified_epoch, end_epoch = excluded.end_epoch, "
                "deletable = excluded.deletable, invalid = excluded.invalid",
                (blob_id, *values),
            )

    @_translated
    def put_sliver(self, blob_id: BlobId, pair_index: int, kind: SliverKind, data: Bytes) -> None:
        blob_id = _check_blob_id(blob_id)
        key = _check_key(pair_index, kind)
        view = _as_view(data)
        size = view.nbytes
        checksum = sliver_checksum(blob_id, key, view)
        inline = size <= self._inline_limit
        with self._lock:
            self._check_open()
            self._require_metadata(self._writer, blob_id)
            # A replacement needs room for both copies until the new one is committed.
            self._check_room(size)
            self._reserved += size
        file_name: str | None = None
        committed = False
        old_file: str | None = None
        try:
            if not inline:
                file_name = (
                    f"{blob_id.hex()}.{key.pair_index}.{_KIND_LETTER[key.kind]}."
                    f"{secrets.token_hex(8)}"
                )
                self._write_file(file_name, view)
            with self._lock:
                with self._transaction() as connection:
                    self._require_metadata(connection, blob_id)
                    row = connection.execute(
                        "SELECT size, file_name FROM slivers WHERE blob_id = ? AND "
                        "pair_index = ? AND kind = ?",
                        (blob_id, key.pair_index, key.kind.value),
                    ).fetchone()
                    connection.execute(
                        "INSERT INTO slivers (blob_id, pair_index, kind, size, checksum, corrupt,"
                        " file_name, data) VALUES (?, ?, ?, ?, ?, 0, ?, ?) "
                        "ON CONFLICT (blob_id, pair_index, kind) DO UPDATE SET "
                        "size = excluded.size, checksum = excluded.checksum, corrupt = 0, "
                        "file_name = excluded.file_name, data = excluded.data",
                        (
                            blob_id,
                            key.pair_index,
                            key.kind.value,
                            size,
                            checksum,
                            file_name,
                            bytes(view) if inline else None,
                        ),
                    )
                committed = True
                old_size = int(row[0]) if row is not None else 0
                old_file = row[1] if row is not None else None
                self._used += size - old_size
        finally:
            with self._lock:
                self._reserved -= size
            if not committed and file_name is not None:
                with contextlib.suppress(OSError):
                    self._file_path(file_name).unlink()
        if old_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self._file_path(old_file).unlink()

    @staticmethod
    def _require_metadata(connection: sqlite3.Connection, blob_id: BlobId) -> None:
        row = connection.execute(
            "SELECT 1 FROM blobs WHERE blob_id = ? AND metadata IS NOT NULL", (blob_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(
                f"blob {short_id(blob_id)} has no metadata here; store the metadata first"
            )

    def _write_file(self, file_name: str, view: memoryview) -> None:
        """Write, fsync, rename into place, fsync the directory: then the file is durable."""
        temporary = self._temporary_directory / file_name
        final = self._file_path(file_name)
        try:
            if not self._write_direct(temporary, view):
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                try:
                    written = 0
                    while written < view.nbytes:
                        written += os.write(fd, view[written : written + _WRITE_CHUNK])
                    if self._fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            os.rename(temporary, final)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        if self._fsync:
            try:
                _fsync_directory(final.parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    final.unlink()
                raise

    def _write_direct(self, temporary: Path, view: memoryview) -> bool:
        """Write and fsync a big durable file with ``O_DIRECT``; False if this store cannot.

        Why: a buffered write copies the sliver into fresh page-cache pages, and the fsync that
        follows writes them out anyway: a sizeable share of the CPU the peers spend on a store
        (docs/storage.md has the figures); ``O_DIRECT`` hands the disk the bytes from a reused,
        page-aligned 8 MiB buffer (one user-space copy).
        The last block is padded with zeros and cut off again by ``ftruncate`` before the fsync.
        File systems without ``O_DIRECT`` (tmpfs, some overlays) refuse it with ``EINVAL``:
        then the file is written the ordinary way, and this store does not try again.
        """
        if not (self._fsync and self._direct and view.nbytes >= _DIRECT_MIN_BYTES):
            return False
        direct = getattr(os, "O_DIRECT", 0)
        if not direct:
            self._direct = False
            return False
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | direct
        try:
            fd = os.open(temporary, flags, 0o644)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            self._direct = False
            return False
        refused = False
        try:
            chunk = _aligned_chunk.get()
            source = view.cast("B")
            size = source.nbytes
            offset = 0
            while offset < size:
                length = min(_WRITE_CHUNK, size - offset)
                chunk[:length] = source[offset : offset + length]
                padded = -(-length // _DIRECT_ALIGN) * _DIRECT_ALIGN
                if padded > length:
                    chunk[length:padded] = bytes(padded - length)
                with memoryview(chunk) as aligned:
                    done = 0
                    while done < padded:
                        done += os.pwrite(fd, aligned[done:padded], offset + done)
                offset += length
            if size % _DIRECT_ALIGN:
                os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise  # the caller removes the temporary file
            refused = True
        finally:
            os.close(fd)
        if refused:
            temporary.unlink()
            self._direct = False
            return False
        return True

    @_translated
    def get_sliver(self, blob_id: BlobId, pair_index: int, kind: SliverKind) -> bytes:
        blob_id = _check_blob_id(blob_id)
        key = _check_key(pair_index, kind)
        return self._read_sliver(blob_id, key)

    def _read_sliver(self, blob_id: BlobId, key: SliverKey) -> bytes:
        previous_file: object = object()
        for _attempt in range(4):
            row = self._query_one(
                "SELECT size, checksum, corrupt, file_name, data FROM slivers "
                "WHERE blob_id = ? AND pair_index = ? AND kind = ?",
                (blob_id, key.pair_index, key.kind.value),
            )
            if row is None:
                raise NotFoundError(
                    f"sliver {key.pair_index}/{key.kind.name} of blob {short_id(blob_id)} "
                    "is not stored here"
                )
            size, checksum, corrupt, file_name, inline_data = row
            if corrupt:
                raise CorruptDataError("flagged by an earlier check", blob_id=blob_id, sliver=key)
            if file_name is None:
                data = bytes(inline_data) if inline_data is not None else b""
            else:
                try:
                    data = self._read_file(file_name, size)
                except FileNotFoundError:
                    if file_name != previous_file:
                        # Replaced or deleted since the row was read: look again.
                        previous_file = file_name
                        continue
                    self._mark_corrupt(blob_id, key, file_name, checksum)
                    raise CorruptDataError("file is missing", blob_id=blob_id, sliver=key) from None
            if len(data) != size or sliver_checksum(blob_id, key, data) != checksum:
                self._mark_corrupt(blob_id, key, file_name, checksum)
                raise CorruptDataError("size or checksum mismatch", blob_id=blob_id, sliver=key)
            return data
        raise StorageError(f"sliver of blob {short_id(blob_id)} kept changing while being read")

    def _read_file(self, file_name: str, size: int) -> bytes:
        with open(self._file_path(file_name), "rb", buffering=0) as file:
            if os.fstat(file.fileno()).st_size != size:
                return b""  # wrong size: reported as corrupt by the caller (size check)
            data = file.read()
        return data if data is not None else b""

    @_translated
    def has_sliver(self, blob_id: BlobId, pair_index: int, kind: SliverKind) -> bool:
        blob_id = _check_blob_id(blob_id)
        key = _check_key(pair_index, kind)
        row = self._query_one(
            "SELECT 1 FROM slivers WHERE blob_id = ? AND pair_index = ? AND kind = ? "
            "AND corrupt = 0",
            (blob_id, key.pair_index, key.kind.value),
        )
        return row is not None

    @_translated
    def list_slivers(self, blob_id: BlobId) -> list[SliverKey]:
        blob_id = _check_blob_id(blob_id)
        rows = self._query(
            "SELECT pair_index, kind FROM slivers WHERE blob_id = ? AND corrupt = 0 "
            "ORDER BY pair_index, kind",
            (blob_id,),
        )
        return [SliverKey(pair_index, SliverKind(kind)) for pair_index, kind in rows]

    @_translated
    def is_durable(
        self,
        blob_id: BlobId,
        required: Iterable[tuple[int, SliverKind]],
        *,
        verify: bool = False,
    ) -> bool:
        blob_id = _check_blob_id(blob_id)
        keys = {_check_key(pair_index, kind) for pair_index, kind in required}
        if verify:
            try:
                self.get_metadata(blob_id)
                for key in sorted(keys, key=lambda item: (item.pair_index, item.kind.value)):
                    self._read_sliver(blob_id, key)
            except NotFoundError:  # includes CorruptDataError
                return False
            return True
        if not self.has_metadata(blob_id):
            return False
        rows = {
            SliverKey(pair_index, SliverKind(kind)): (size, checksum, corrupt, file_name)
            for pair_index, kind, size, checksum, corrupt, file_name in self._query(
                "SELECT pair_index, kind, size, checksum, corrupt, file_name FROM slivers "
                "WHERE blob_id = ?",
                (blob_id,),
            )
        }
        for key in keys:
            found = rows.get(key)
            if found is None:
                return False
            size, checksum, corrupt, file_name = found
            if corrupt:
                return False
            if file_name is not None and not self._file_has_size(
                blob_id, key, file_name, size, checksum
            ):
                return False
        return True

    def _file_has_size(
        self, blob_id: BlobId, key: SliverKey, file_name: str, size: int, checksum: bytes
    ) -> bool:
        """The cheap check: the committed file still exists with the committed size."""
        try:
            actual = self._file_path(file_name).stat().st_size
        except FileNotFoundError:
            # Lost, or replaced or deleted since the row was read: the flag is conditional.
            self._mark_corrupt(blob_id, key, file_name, checksum)
            return False
        if actual != size:
            self._mark_corrupt(blob_id, key, file_name, checksum)
            return False
        return True

    @_translated
    def delete_sliver(self, blob_id: BlobId, pair_index: int, kind: SliverKind) -> bool:
        blob_id = _check_blob_id(blob_id)
        key = _check_key(pair_index, kind)
        return (
            self._delete_slivers(
                blob_id,
                "AND pair_index = ? AND kind = ?",
                (key.pair_index, key.kind.value),
            )
            > 0
        )

    @_translated
    def delete_slivers(self, blob_id: BlobId) -> int:
        blob_id = _check_blob_id(blob_id)
        return self._delete_slivers(blob_id, "", ())

    def _delete_slivers(self, blob_id: BlobId, condition: str, parameters: tuple[Any, ...]) -> int:
        where = f"WHERE blob_id = ? {condition}"
        with self._lock:
            with self._transaction() as connection:
                rows = connection.execute(
                    f"SELECT size, file_name FROM slivers {where}", (blob_id, *parameters)
                ).fetchall()
                connection.execute(f"DELETE FROM slivers {where}", (blob_id, *parameters))
            self._used -= sum(int(size) for size, _ in rows)
        self._unlink_files(name for _, name in rows)
        return len(rows)

    def _unlink_files(self, names: Iterable[str | None]) -> None:
        # No fsync: a file that reappears after a crash has no row and is removed on open.
        for name in names:
            if name is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._file_path(name).unlink()

    @_translated
    def delete_blob(self, blob_id: BlobId) -> bool:
        blob_id = _check_blob_id(blob_id)
        with self._lock:
            with self._transaction() as connection:
                blob = connection.execute(
                    "SELECT coalesce(length(metadata), 0) FROM blobs WHERE blob_id = ?",
                    (blob_id,),
                ).fetchone()
                rows = connection.execute(
                    "SELECT size, file_name FROM slivers WHERE blob_id = ?", (blob_id,)
                ).fetchall()
                connection.execute("DELETE FROM slivers WHERE blob_id = ?", (blob_id,))
                connection.execute("DELETE FROM blobs WHERE blob_id = ?", (blob_id,))
            freed = sum(int(size) for size, _ in rows) + (int(blob[0]) if blob else 0)
            self._used -= freed
        self._unlink_files(name for _, name in rows)
        if blob is not None:
            logger.debug("blob deleted blob=%s freed=%d", short_id(blob_id), freed)
        return blob is not None

    def iter_blobs(self, *, end_epoch_before: int | None = None) -> Iterator[BlobInfo]:
        after = b""
        while True:
            page = self._blob_page(after, end_epoch_before)
            yield from page
            if len(page) < _PAGE_SIZE:
                return
            after = page[-1].blob_id

    @_translated
    def _blob_page(self, after: bytes, end_epoch_before: int | None) -> list[BlobInfo]:
        condition = "" if end_epoch_before is None else "AND b.end_epoch < ?"
        parameters: tuple[Any, ...] = (
            (after,)
            if end_epoch_before is None
            else (
                after,
                end_epoch_before,
            )
        )
        rows = self._query(
            "SELECT b.blob_id, b.certified_epoch, b.end_epoch, b.deletable, b.invalid, "
            "length(b.metadata), count(s.blob_id), coalesce(sum(s.size), 0) "
            "FROM blobs AS b LEFT JOIN slivers AS s ON s.blob_id = b.blob_id "
            f"WHERE b.blob_id > ? {condition} GROUP BY b.blob_id ORDER BY b.blob_id LIMIT ?",
            (*parameters, _PAGE_SIZE),
        )
        return [
            BlobInfo(
                blob_id=BlobId(bytes(blob_id)),
                state=BlobState(certified, end, bool(deletable), bool(invalid)),
                has_metadata=metadata_length is not None,
                sliver_count=int(count),
                stored_bytes=int(metadata_length or 0) + int(sliver_bytes),
            )
            for (
                blob_id,
                certified,
                end,
                deletable,
                invalid,
                metadata_length,
                count,
                sliver_bytes,
            ) in rows
        ]

    @_translated
    def put_value(self, namespace: str, key: bytes, value: Bytes) -> None:
        data = bytes(_as_view(value))
        if not namespace:
            raise ValueError("namespace must not be empty")
        if len(data) > MAX_VALUE_SIZE:
            raise ValueError(f"record of {len(data)} bytes exceeds {MAX_VALUE_SIZE}")
        with self._lock, self._transaction() as connection:
            connection.execute(
                "INSERT INTO records (namespace, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                (namespace, bytes(key), data),
            )

    @_translated
    def put_values(self, namespace: str, changes: Sequence[tuple[bytes, bytes | None]]) -> None:
        if not namespace:
            raise ValueError("namespace must not be empty")
        for _key, value in changes:
            if value is not None and len(value) > MAX_VALUE_SIZE:
                raise ValueError(f"record of {len(value)} bytes exceeds {MAX_VALUE_SIZE}")
        with self._lock, self._transaction() as connection:
            for key, value in changes:
                if value is None:
                    connection.execute(
                        "DELETE FROM records WHERE namespace = ? AND key = ?",
                        (namespace, bytes(key)),
                    )
                else:
                    connection.execute(
                        "INSERT INTO records (namespace, key, value) VALUES (?, ?, ?) "
                        "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                        (namespace, bytes(key), bytes(value)),
                    )

    @_translated
    def get_value(self, namespace: str, key: bytes) -> bytes | None:
        row = self._query_one(
            "SELECT value FROM records WHERE namespace = ? AND key = ?",
            (namespace, bytes(key)),
        )
        return None if row is None else bytes(row[0])

    @_translated
    def delete_value(self, namespace: str, key: bytes) -> bool:
        with self._lock, self._transaction() as connection:
            cursor = connection.execute(
                "DELETE FROM records WHERE namespace = ? AND key = ?", (namespace, bytes(key))
            )
            return cursor.rowcount > 0

    @_translated
    def iter_values(self, namespace: str, *, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        upper = _prefix_end(bytes(prefix))
        if upper is None:
            rows = self._query(
                "SELECT key, value FROM records WHERE namespace = ? AND key >= ? ORDER BY key",
                (namespace, bytes(prefix)),
            )
        else:
            rows = self._query(
                "SELECT key, value FROM records WHERE namespace = ? AND key >= ? AND key < ? "
                "ORDER BY key",
                (namespace, bytes(prefix), upper),
            )
        return iter([(bytes(key), bytes(value)) for key, value in rows])

    @_translated
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with self._readers_lock:
                readers, self._idle_readers = self._idle_readers, []
            try:
                for connection in readers:
                    connection.close()
                self._writer.close()
            finally:
                os.close(self._lock_fd)
        logger.info("store closed path=%s", self._root)

    def __enter__(self) -> DiskStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


if TYPE_CHECKING:

    def _conforms(store: DiskStore) -> BlobStore:
        """mypy proves here that DiskStore implements the BlobStore protocol."""
        return store


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key above every key starting with ``prefix`` (None: no upper bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
