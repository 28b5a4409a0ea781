"""RedStuff two-dimensional erasure coding over Reed-Solomon (docs/design.md §3).

Owner: the core pipeline. This is the only module that calls an erasure codec, and it does so
through :class:`ErasureCodec`, a three-method interface over "fragments" (equal-length byte
rows). Reed-Solomon over GF(2^8) works bytewise, so one codec call on fragments that are whole
matrix rows (or whole columns laid out contiguously) encodes every symbol position at once: the
pipeline has no per-symbol Python loop except leaf hashing.

Layout (the same on every peer; ``S`` is the symbol size, ``E`` the n x n expanded matrix):

* the blob, zero-padded, fills a ``kp x ks`` matrix of S-byte symbols row-major;
* the primary code (``kp -> n``) expands every column, the secondary code (``ks -> n``) every row;
  both are systematic and linear, so either order gives the same ``E``;
* primary sliver ``p`` is ``E[p, 0:ks]`` (``ks*S`` bytes); secondary sliver ``c`` is
  ``E[0:kp, c]`` laid out as ``kp`` consecutive symbols (``kp*S`` bytes);
* sliver pair ``p`` is (primary ``p``, secondary ``n-1-p``) and is stored by shard
  ``(p + int.from_bytes(blob_id, "big")) % n``.

Memory: the encoder keeps the ``kp`` source rows as views of the caller's blob (only the padded
tail is copied), writes the primary parity rows and the secondary slivers into their final arrays,
and computes the corner ``E[kp:n, ks:n]`` one column at a time only to hash it; peak memory is the
blob plus the encoded slivers (``n*(kp+ks)*S - kp*ks*S`` bytes) plus a column per hashing thread.
For big symbols the encoder works column by column and hashes each symbol while it is still in
cache (:func:`_encode_by_columns`); it then takes its output arrays from one buffer that it keeps
after the encoded blob is dropped and reuses for the next encode of a similar size (at most one
buffer, of at most 512 MiB: :class:`_ReusedBuffer`, :func:`release_encoder_buffers`).
The decoders return the blob as a read-only ``memoryview``; a big one is written straight into an
array they allocate on huge pages (see :func:`_new_result`).
"""

from __future__ import annotations

import enum
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from pyeclib.ec_iface import ECDriver, ECDriverError

from walrus_p2p.core import isal, memory, merkle
from walrus_p2p.errors import EncodingError

MIN_SHARDS = 4
MAX_SHARDS = 256
"""Every Reed-Solomon backend rejects codes with more than 256 fragments."""
MAX_LENGTH = 2**64 - 1
"""Lengths are stored as unsigned 64-bit integers."""

ByteArray: TypeAlias = NDArray[np.uint8]
BytesLike: TypeAlias = bytes | bytearray | memoryview
Fragments: TypeAlias = ByteArray | Sequence[ByteArray]
"""Equal-length 1-D uint8 fragments: a 2-D C-contiguous array (one row per fragment) or a
sequence of 1-D contiguous arrays (used to avoid copying rows that live in different buffers)."""


class SliverType(enum.Enum):
    """Which axis of the expanded matrix a sliver lies on."""

    PRIMARY = "primary"
    """A row: ``E[p, 0:ks]``."""
    SECONDARY = "secondary"
    """A column: ``E[0:kp, c]``."""

    @property
    def other(self) -> SliverType:
        return SliverType.SECONDARY if self is SliverType.PRIMARY else SliverType.PRIMARY


# --------------------------------------------------------------------------------------------
# The codec interface and the public-API pyeclib backend
# --------------------------------------------------------------------------------------------


@runtime_checkable
class ErasureCodec(Protocol):
    """A systematic MDS erasure code over GF(2^8): ``k`` data fragments -> ``total`` fragments.

    Fragment ``i < k`` is data fragment ``i`` unchanged; fragments ``k..total-1`` are parity.
    Any ``k`` distinct fragments determine all others. All fragments of one call have the same
    length (any length >= 1), and the code works bytewise: byte ``j`` of every output depends only
    on byte ``j`` of the inputs. Every backend must produce identical bytes for the same
    ``(k, total)`` (the generator is the ``isa_l_rs_cauchy`` matrix of liberasurecode), because
    the fragments are hashed into the blob id. Parameters satisfy ``1 <= k < total <= 256``.

    Backends are called from worker threads and must be thread-safe. They may return fresh
    arrays or views; callers never write into returned arrays.
    """

    name: str

    def encode(
        self, k: int, total: int, data: Fragments, out: ByteArray | None = None
    ) -> ByteArray:
        """The ``total - k`` parity fragments as a ``(total - k, length)`` array.

        When ``out`` is given (C-contiguous, that shape) the parity is written into it and it is
        returned; this lets the encoder place parity rows directly in their final buffer.
        """
        ...

    def decode(self, k: int, total: int, available: Mapping[int, ByteArray]) -> ByteArray:
        """The ``k`` data fragments, shape ``(k, length)``, from at least ``k`` available ones.

        ``available`` maps fragment index to a 1-D contiguous fragment; extra ones are ignored.
        """
        ...

    def reconstruct(
        self,
        k: int,
        total: int,
        available: Mapping[int, ByteArray],
        wanted: Sequence[int],
        out: ByteArray | None = None,
    ) -> ByteArray:
        """The fragments named in ``wanted`` (data or parity), shape ``(len(wanted), length)``.

        Used for one recovery symbol (a helper's sliver is the data fragments, and it wants one
        output fragment without computing them all), and by the decoder, which passes ``out``
        (that shape, rows contiguous) to receive the blob's rows in its final buffer.
        """
        ...


def _fragment_list(data: Fragments, k: int) -> tuple[list[ByteArray], int]:
    """Check ``k`` equal-length non-empty fragments; return them as a list and their length."""
    fragments = list(data)
    if len(fragments) != k:
        raise EncodingError(f"expected {k} data fragments, got {len(fragments)}")
    length = fragments[0].shape[0] if fragments else 0
    if length < 1:
        raise EncodingError("fragments must not be empty")
    for fragment in fragments:
        if fragment.ndim != 1 or fragment.shape[0] != length:
            raise EncodingError("all fragments must be 1-D and of the same length")
    return fragments, length


def _check_code(k: int, total: int) -> None:
    if not 1 <= k < total <= MAX_SHARDS:
        raise EncodingError(f"invalid code parameters k={k} total={total}")


_HEADER_LENGTH = 80
"""liberasurecode prepends this fragment header to every fragment payload."""
_HEADER_CHECKSUM_OFFSET = 67
_HEADER_METADATA_LENGTH = 59


class PyeclibCodec:
    """:class:`ErasureCodec` over the public pyeclib API with liberasurecode ``isa_l_rs_cauchy``.

    How pyeclib frames data, found by experiment with pyeclib 1.8.0 and checked by the tests:
    ``encode(data)`` with ``len(data) == k * R`` returns ``k + m`` fragments of ``80 + R`` bytes
    whose payload (after the 80-byte header) is exactly ``data[i*R:(i+1)*R]`` for ``i < k`` --
    no extra alignment or padding for this backend. So a fragment payload is our row.

    Decoding needs fragments *with* headers. The header is little-endian: index (u32 at 0),
    payload size (u32 at 4), backend metadata size (u32 at 8), original data size (u64 at 12),
    checksum type, checksum, backend id and version, magic, library version, and at offset 67 a
    CRC-32 (zlib's) of the first 59 bytes. We take a header template from a one-byte-per-fragment
    encode (cached per code) and patch index, sizes and CRC, which reproduces pyeclib's headers
    byte for byte.

    ``isa_l_rs_cauchy`` and never ``isa_l_rs_vand``: the latter is not MDS for n >= 20.
    """

    name = "pyeclib"
    ec_type = "isa_l_rs_cauchy"

    def __init__(self) -> None:
        self._drivers: dict[tuple[int, int], tuple[ECDriver, bytes]] = {}

    def _driver(self, k: int, total: int) -> tuple[ECDriver, bytes]:
        _check_code(k, total)
        entry = self._drivers.get((k, total))
        if entry is None:
            driver = ECDriver(k=k, m=total - k, ec_type=self.ec_type)
            template = bytes(driver.encode(bytes(k))[0][:_HEADER_LENGTH])
            entry = (driver, template)
            self._drivers[(k, total)] = entry
        return entry

    @staticmethod
    def _header(template: bytes, index: int, length: int, k: int) -> bytes:
        header = bytearray(template)
        struct.pack_into("<II", header, 0, index, length)
        struct.pack_into("<Q", header, 12, k * length)
        checksum = zlib.crc32(header[:_HEADER_METADATA_LENGTH])
        struct.pack_into("<I", header, _HEADER_CHECKSUM_OFFSET, checksum)
        return bytes(header)

    def _framed(
        self, template: bytes, k: int, available: Mapping[int, ByteArray], total: int
    ) -> tuple[list[bytes], int]:
        """Pick ``k`` available fragments (data first) and prepend their headers."""
        indices = sorted(index for index in available if 0 <= index < total)
        if len(indices) < k:
            raise EncodingError(f"need {k} fragments to decode, got {len(indices)}")
        chosen = indices[:k]
        length = available[chosen[0]].shape[0]
        if length < 1 or any(available[index].shape != (length,) for index in chosen):
            raise EncodingError("all fragments must be 1-D, non-empty and of the same length")
        framed = [
            self._header(template, index, length, k) + available[index].tobytes()
            for index in chosen
        ]
        return framed, length

    def encode(
        self, k: int, total: int, data: Fragments, out: ByteArray | None = None
    ) -> ByteArray:
        driver, _ = self._driver(k, total)
        if isinstance(data, np.ndarray) and data.ndim == 2:
            if data.shape[0] != k or data.shape[1] < 1:
                raise EncodingError(f"expected {k} non-empty data fragments")
            length = data.shape[1]
            joined = np.ascontiguousarray(data).tobytes()
        else:
            fragments, length = _fragment_list(data, k)
            joined = b"".join(np.ascontiguousarray(fragment).data for fragment in fragments)
        try:
            encoded = driver.encode(joined)
        except ECDriverError as error:
            raise EncodingError(f"pyeclib encode failed: {error}") from error
        result = np.empty((total - k, length), dtype=np.uint8) if out is None else out
        if result.shape != (total - k, length):
            raise EncodingError("output buffer has the wrong shape")
        for row, fragment in enumerate(encoded[k:]):
            result[row] = np.frombuffer(fragment, dtype=np.uint8, offset=_HEADER_LENGTH)
        return result

    def decode(self, k: int, total: int, available: Mapping[int, ByteArray]) -> ByteArray:
        driver, template = self._driver(k, total)
        if all(index in available for index in range(k)):
            return np.stack([available[index] for index in range(k)])
        framed, length = self._framed(template, k, available, total)
        try:
            data = driver.decode(framed)
        except ECDriverError as error:
            raise EncodingError(f"pyeclib decode failed: {error}") from error
        return np.frombuffer(data, dtype=np.uint8).reshape(k, length)

    def reconstruct(
        self,
        k: int,
        total: int,
        available: Mapping[int, ByteArray],
        wanted: Sequence[int],
        out: ByteArray | None = None,
    ) -> ByteArray:
        driver, template = self._driver(k, total)
        framed, length = self._framed(template, k, available, total)
        missing = sorted({index for index in wanted if index not in available})
        if any(not 0 <= index < total for index in missing):
            raise EncodingError("wanted fragment index out of range")
        rebuilt: dict[int, ByteArray] = {}
        if missing:
            try:
                fragments = driver.reconstruct(framed, missing)
            except ECDriverError as error:
                raise EncodingError(f"pyeclib reconstruct failed: {error}") from error
            for fragment in fragments:
                (index,) = struct.unpack_from("<I", fragment, 0)
                rebuilt[index] = np.frombuffer(fragment, dtype=np.uint8, offset=_HEADER_LENGTH)
        result = np.empty((len(wanted), length), dtype=np.uint8) if out is None else out
        if result.shape != (len(wanted), length):
            raise EncodingError("output buffer has the wrong shape")
        for row, index in enumerate(wanted):
            result[row] = available[index] if index in available else rebuilt[index]
        return result


def _initial_codec() -> ErasureCodec:
    """ISA-L called directly when the bundled library loads (about 10x faster), else pyeclib."""
    try:
        return isal.IsalCodec()
    except isal.IsalUnavailableError:
        return PyeclibCodec()


_default_codec: ErasureCodec = _initial_codec()


def default_codec() -> ErasureCodec:
    """The codec used when a function is not given one."""
    return _default_codec


def set_default_codec(codec: ErasureCodec) -> None:
    """Select the process-wide codec (for example the ctypes ISA-L backend once it is loaded).

    Every backend must give identical bytes, so switching never changes a blob id.
    """
    global _default_codec
    if not isinstance(codec, ErasureCodec):
        raise TypeError("codec must implement ErasureCodec")
    _default_codec = codec


# --------------------------------------------------------------------------------------------
# Parameters and placement
# --------------------------------------------------------------------------------------------


def _roundup_even(value: int) -> int:
    return value + (value & 1)


@dataclass(frozen=True, slots=True)
class EncodingConfig:
    """The RedStuff parameters for ``n`` shards; ``f``, ``kp`` and ``ks`` follow from ``n``.

    ``kp = n - 2f`` primary source symbols (any kp primary slivers decode the blob) and
    ``ks = n - f`` secondary source symbols (any ks secondary slivers decode it).
    """

    n: int
    f: int = field(init=False)
    kp: int = field(init=False)
    ks: int = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int):
            raise EncodingError(f"number of shards must be an integer, got {self.n!r}")
        if not MIN_SHARDS <= self.n <= MAX_SHARDS:
            raise EncodingError(
                f"number of shards must be in {MIN_SHARDS}..{MAX_SHARDS}, got {self.n}"
            )
        faulty = (self.n - 1) // 3
        object.__setattr__(self, "f", faulty)
        object.__setattr__(self, "kp", self.n - 2 * faulty)
        object.__setattr__(self, "ks", self.n - faulty)

    @classmethod
    def for_shards(cls, n: int) -> EncodingConfig:
        """Validated config for ``n`` shards (raises :class:`EncodingError`)."""
        return cls(n)

    def check_length(self, length: int) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_LENGTH:
            raise EncodingError(f"blob length must be an unsigned 64-bit integer, got {length!r}")

    def symbol_size(self, length: int) -> int:
        """``roundup_even(max(1, ceil(length / (kp*ks))))`` bytes."""
        self.check_length(length)
        source_symbols = self.kp * self.ks
        return _roundup_even(max(1, -(-length // source_symbols)))

    def encoded_length(self, length: int) -> int:
        """Bytes stored over all shards: ``n * (kp + ks) * S``."""
        return self.n * (self.kp + self.ks) * self.symbol_size(length)

    def sliver_length(self, sliver_type: SliverType, length: int) -> int:
        """``ks*S`` for a primary sliver, ``kp*S`` for a secondary sliver."""
        symbols = self.ks if sliver_type is SliverType.PRIMARY else self.kp
        return symbols * self.symbol_size(length)

    def source_symbols(self, sliver_type: SliverType) -> int:
        """Symbols a sliver of this type holds: also the symbols needed to rebuild one."""
        return self.ks if sliver_type is SliverType.PRIMARY else self.kp

    def check_index(self, index: int, what: str = "index") -> None:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.n:
            raise EncodingError(f"{what} must be in 0..{self.n - 1}, got {index!r}")


def pair_to_shard(blob_id: bytes, pair_index: int, n: int) -> int:
    """The shard storing sliver pair ``pair_index``: spreads the plain slivers per blob."""
    return (pair_index + int.from_bytes(blob_id, "big")) % n


def shard_to_pair(blob_id: bytes, shard: int, n: int) -> int:
    """The sliver pair stored by ``shard`` (inverse of :func:`pair_to_shard`)."""
    return (shard - int.from_bytes(blob_id, "big")) % n


def pair_secondary_index(pair_index: int, n: int) -> int:
    """Secondary sliver of pair ``p`` is ``n-1-p`` (and secondary ``c`` is in pair ``n-1-c``)."""
    return n - 1 - pair_index


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _as_array(buffer: BytesLike) -> ByteArray:
    return np.frombuffer(buffer, dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class SliverPair:
    """Sliver pair ``index``: primary sliver ``index`` and secondary sliver ``n-1-index``.

    The slivers are read-only views into the encoder's buffers (``bytes(...)`` copies them).
    """

    index: int
    primary: memoryview
    secondary: memoryview


@dataclass(frozen=True, slots=True, eq=False)
class EncodedBlob:
    """The slivers of one blob and the leaf hashes its commitments need.

    ``primary_rows[p]`` is primary sliver ``p`` (rows ``0..kp-1`` may be views of the blob: do
    not mutate the blob while this object is in use). ``secondary_columns[c]`` is secondary
    sliver ``c``. ``symbol_hashes[r, c]`` is the leaf hash of ``E[r, c]`` for all ``n*n``
    symbols, hashed once and shared by row ``r``'s tree and column ``c``'s tree.
    """

    config: EncodingConfig
    length: int
    symbol_size: int
    primary_rows: tuple[ByteArray, ...]
    secondary_columns: ByteArray
    symbol_hashes: ByteArray | None
    column_roots: tuple[bytes, ...] | None = None
    """Merkle roots over ``symbol_hashes[:, c]`` (secondary sliver hashes), when the encoder
    computed them while encoding; otherwise :func:`metadata.compute_metadata` does."""

    def primary_sliver(self, index: int) -> memoryview:
        self.config.check_index(index, "primary sliver index")
        return self.primary_rows[index].data.toreadonly()

    def secondary_sliver(self, index: int) -> memoryview:
        self.config.check_index(index, "secondary sliver index")
        column: ByteArray = self.secondary_columns[index]
        return column.data.toreadonly()

    def sliver(self, sliver_type: SliverType, index: int) -> memoryview:
        if sliver_type is SliverType.PRIMARY:
            return self.primary_sliver(index)
        return self.secondary_sliver(index)

    def sliver_pair(self, index: int) -> SliverPair:
        self.config.check_index(index, "sliver pair index")
        secondary = pair_secondary_index(index, self.config.n)
        return SliverPair(index, self.primary_sliver(index), self.secondary_sliver(secondary))

    def sliver_pairs(self) -> list[SliverPair]:
        return [self.sliver_pair(index) for index in range(self.config.n)]


def source_rows(config: EncodingConfig, blob: BytesLike, symbol_size: int) -> list[ByteArray]:
    """The ``kp`` rows of the zero-padded source matrix (the plain primary slivers).

    Rows that lie wholly inside the blob are views of it; only the padded tail is copied.
    """
    row_length = config.ks * symbol_size
    blob_array = _as_array(blob)
    full_rows = len(blob_array) // row_length
    rows = [blob_array[row * row_length : (row + 1) * row_length] for row in range(full_rows)]
    if full_rows < config.kp:
        tail = np.zeros((config.kp - full_rows, row_length), dtype=np.uint8)
        remainder = blob_array[full_rows * row_length :]
        tail.reshape(-1)[: len(remainder)] = remainder
        rows.extend(tail)
    return rows


def encode(
    blob: BytesLike,
    config: EncodingConfig,
    *,
    codec: ErasureCodec | None = None,
    hash_symbols: bool = True,
) -> EncodedBlob:
    """Encode ``blob`` into ``n`` sliver pairs, hashing every expanded symbol once.

    Steps: one primary-code call over the source rows gives the parity rows (primary slivers
    ``kp..n-1``); the source, transposed, is the first ``ks`` secondary slivers, and one
    secondary-code call over them gives the other ``n - ks``. The corner ``E[kp:n, ks:n]`` is
    stored nowhere and exists only to be hashed, so it is computed column by column there.
    Big blobs with big symbols are encoded column by column instead, each symbol hashed while
    still in cache (:func:`_encode_by_columns`): same bytes, less memory traffic.
    """
    codec = codec or _default_codec
    length = len(memoryview(blob).cast("B"))
    config.check_length(length)
    n, kp, ks = config.n, config.kp, config.ks
    symbol_size = config.symbol_size(length)

    source = source_rows(config, memoryview(blob).cast("B"), symbol_size)
    symbol_hashes = None
    column_roots = None
    by_columns = symbol_size >= _BY_COLUMN_MIN_SYMBOL and length >= _BY_COLUMN_MIN_LENGTH
    if hash_symbols and by_columns:
        primary_parity, secondary_columns, symbol_hashes, column_roots = _encode_by_columns(
            config, codec, symbol_size, source
        )
        primary_rows = (*source, *primary_parity)
    else:
        primary_parity, secondary_columns = _output_buffers.take(
            ((n - kp, ks * symbol_size), (n, kp * symbol_size))
        )
        codec.encode(kp, n, source, out=primary_parity)
        primary_rows = (*source, *primary_parity)
        _transpose_source(source, secondary_columns[:ks].reshape(ks, kp, symbol_size))
        codec.encode(ks, n, secondary_columns[:ks], out=secondary_columns[ks:])
        if hash_symbols:
            symbol_hashes = _hash_symbols(
                config, codec, symbol_size, primary_rows, secondary_columns
            )
    return EncodedBlob(
        config=config,
        length=length,
        symbol_size=symbol_size,
        primary_rows=primary_rows,
        secondary_columns=secondary_columns,
        symbol_hashes=symbol_hashes,
        column_roots=column_roots,
    )


_PARALLEL_COPY_BYTES = 4 << 20
"""Copy in parallel only from this size: the hand-off to the pool costs as much as ~1 MB of copy,
and the first touch of the fresh secondary slivers costs about as much as the copy itself."""


def _transpose_source(source: Sequence[ByteArray], columns: ByteArray) -> None:
    """Copy the source symbols into secondary slivers ``0..ks-1`` (``columns``: ``(ks, kp, S)``).

    Split by columns over the codec threads, so that each thread writes its own run of slivers.
    """
    ks, _, size = columns.shape

    def copy(span: tuple[int, int]) -> None:
        first, stop = span
        for row, values in enumerate(source):
            columns[first:stop, row, :] = values[first * size : stop * size].reshape(-1, size)

    if columns.nbytes < _PARALLEL_COPY_BYTES:
        copy((0, ks))
        return
    parts = min(ks, 16)
    isal.parallel_map(copy, [(ks * i // parts, ks * (i + 1) // parts) for i in range(parts)])


_BY_COLUMN_MIN_SYMBOL = 16 << 10
_BY_COLUMN_MIN_LENGTH = 8 << 20
"""From these symbol and blob sizes the encoder works column by column (see
:func:`_encode_by_columns`). Below them its per-column Python work, which holds the GIL, costs
more than the cache misses it saves (measured here: 1 MB blobs at n = 10 and 20 and 16 MB at
n = 100 were 5-30 % slower by columns, 16 MB at n = 10 and 20 about 1.5 times faster)."""
_REUSE_MIN_BYTES = 8 << 20
"""Output buffers smaller than this are not kept for reuse: their fresh pages cost little."""
_REUSE_MAX_BYTES = 512 << 20
"""Nor bigger ones: this bounds the memory held while no encode runs (:class:`_ReusedBuffer`)."""


class _ReusedBuffer:
    """One output buffer that the encoder reuses once the last blob encoded into it is gone.

    Why: the primary parity rows and the secondary slivers of a big blob are fresh memory each
    time (about 440 MB for 128 MB at n = 100), and the kernel zeroes every fresh page on its
    first touch, about 10 % of an encode here. So the encoder carves them out of one flat
    buffer, and keeps that buffer after the encoded blob is dropped: the next encode of a
    similar size writes over the same, already mapped, pages.

    Whether anyone still uses the buffer is read off its reference count: every array, view or
    memoryview derived from it holds a reference to it, so when only this object refers to it,
    nothing can observe new writes. Bounds: only outputs of ``_REUSE_MIN_BYTES`` to
    ``_REUSE_MAX_BYTES`` come from here (small ones are cheap to fault in; big ones are not
    kept), a buffer is reused only for a request of at least half its size, and at most one
    buffer is held: so at most 512 MiB stays allocated while no encode runs, and only after an
    encode of that size. :func:`release_encoder_buffers` drops it. CPython only (reference
    counts); elsewhere every request gets fresh arrays.
    """

    def __init__(self) -> None:
        self._buffer: ByteArray | None = None
        self._idle_references = 0
        self._lock = threading.Lock()

    def _references(self) -> int:
        return sys.getrefcount(self._buffer)

    def take(self, shapes: Sequence[tuple[int, int]]) -> list[ByteArray]:
        """Uninitialised uint8 arrays of the given 2-D shapes (C-contiguous, not overlapping)."""
        sizes = [rows * columns for rows, columns in shapes]
        total = sum(sizes)
        if not _REUSE_MIN_BYTES <= total <= _REUSE_MAX_BYTES or not _COUNTS_REFERENCES:
            return [np.empty(shape, dtype=np.uint8) for shape in shapes]
        with self._lock:
            # No local name refers to the buffer while its references are counted.
            idle = self._buffer is not None and self._references() == self._idle_references
            fits = self._buffer is not None and total <= len(self._buffer) <= 2 * total
            if idle and fits and self._buffer is not None:
                buffer = self._buffer
            elif idle or self._buffer is None:
                self._buffer = None  # unmap the old buffer before mapping the new one
                self._buffer = np.empty(total, dtype=np.uint8)
                self._idle_references = self._references()
                buffer = self._buffer
            else:  # still in use: a fresh buffer, not kept
                buffer = np.empty(total, dtype=np.uint8)
            arrays = []
            start = 0
            for shape, size in zip(shapes, sizes, strict=True):
                arrays.append(buffer[start : start + size].reshape(shape))
                start += size
            return arrays

    def release(self) -> None:
        with self._lock:
            self._buffer = None


_COUNTS_REFERENCES = sys.implementation.name == "cpython"
_output_buffers = _ReusedBuffer()


def release_encoder_buffers() -> None:
    """Drop the output buffer the encoder keeps for reuse (see :class:`_ReusedBuffer`).

    Arrays of encoded blobs still in use stay valid; only the encoder's own reference goes.
    """
    _output_buffers.release()


def _encode_by_columns(
    config: EncodingConfig,
    codec: ErasureCodec,
    symbol_size: int,
    source: Sequence[ByteArray],
) -> tuple[ByteArray, ByteArray, ByteArray, tuple[bytes, ...] | None]:
    """Primary parity rows, secondary slivers, all ``n*n`` leaf hashes (each symbol hashed
    while it is still in cache) and the ``n`` column roots (None: left to the metadata).

    One pass of tasks over the codec threads, taken in this order:

    1. row ``r`` of the source (``ks`` symbols, contiguous in the blob): copied into secondary
       slivers ``0..ks-1`` (symbol ``r`` of each), then the secondary code expands it into
       ``E[r, ks:n]``, written into secondary slivers ``ks..n-1``;
    2. column ``c`` (after all rows): the primary code expands its ``kp`` symbols (secondary
       sliver ``c``) into ``E[kp:n, c]``: for ``c < ks`` column ``c`` of the primary parity
       rows, written in place; for ``c >= ks`` the corner, stored nowhere, computed into a
       per-thread scratch. Then the whole column is hashed in one call (with the C leaf
       hasher, the first ``n mod 16`` sources are left to step 3), and its root computed
       (unless the C leaf hasher is in use: then :func:`metadata.compute_metadata` computes
       all roots in a few calls);
    3. with the C leaf hasher, the sources left over by step 2, in full groups of 16.

    A column's sources (``kp*S``) and outputs (``(n-kp)*S``) stay in the cache between being
    written and being hashed, where a whole-matrix codec call followed by a hashing pass would
    read every symbol back from memory (about 25 % less CPU here for 128 MB at n = 100). The
    output arrays come from :data:`_output_buffers`. The bytes are those of the other path.
    """
    n, kp, ks = config.n, config.kp, config.ks
    size = symbol_size
    hash_length = merkle.HASH_LENGTH
    primary_parity, secondary_columns = _output_buffers.take(((n - kp, ks * size), (n, kp * size)))
    symbol_hashes = np.empty((n, n, hash_length), dtype=np.uint8)
    # (symbol row, column, byte) views: secondary sliver c is columns[c], symbol r at [c, r].
    columns = secondary_columns.reshape(n, kp, size)
    parity_symbols = primary_parity.reshape(n - kp, ks, size)
    scratch = threading.local()

    rows_left = kp
    rows_lock = threading.Lock()
    rows_done = threading.Event()
    column_roots: list[bytes] = [b""] * n
    # With the C leaf hasher, the metadata computes all 2n roots afterwards in a few calls.
    batched_roots = merkle.native_leaf_hashing()

    def expand_row(row: int) -> None:
        nonlocal rows_left
        try:
            symbols = source[row].reshape(ks, size)
            # The transpose first: it reads the row in order, and leaves it in the cache for
            # the codec, which reads its ks inputs in small interleaved blocks (slow from memory).
            columns[:ks, row, :] = symbols
            codec.encode(ks, n, symbols, out=columns[ks:, row, :])
            # E[row, ks:n] is hashed with the rest of its column (one call for n symbols).
        finally:
            with rows_lock:
                rows_left -= 1
                if rows_left == 0:
                    rows_done.set()

    def expand_column(column: int) -> None:
        sources = columns[column]
        rows_done.wait()  # the rows wrote this sliver (started first: at most a short wait)
        if column < ks:
            out: ByteArray = parity_symbols[:, column, :]
        else:
            out = getattr(scratch, "parity", None)  # type: ignore[assignment]
            if out is None:
                out = scratch.parity = np.empty((n - kp, size), dtype=np.uint8)
        codec.encode(kp, n, sources, out=out)
        # The column E[spare:n, column] at once, while the codec's inputs and outputs are
        # still in cache (the first `spare` symbols are hashed apart, see hash_spares).
        digests = merkle.leaf_hashes_of_rows(sources[spare:], out)
        symbol_hashes[spare:, column, :] = _as_array(digests).reshape(n - spare, hash_length)
        if not batched_roots:
            # The column is complete: its root (a secondary sliver hash) costs ~100 small
            # hashes that hold the GIL, better spent here while the other thread hashes symbols.
            column_roots[column] = merkle.root_of_leaf_hashes(symbol_hashes[:, column].tobytes())

    # The C leaf hasher runs 16 symbols per vector: a column of n = 100 symbols would leave 12
    # of 16 lanes empty in its last group. So each column leaves its first n % 16 source
    # symbols (they stay in place, in the secondary slivers) to tasks at the end, which hash
    # them in full groups: 6.25 instead of 7 groups per column at n = 100. Below 16 shards a
    # column fills no group; its symbols go to the blake3 package (merkle.leaf_hashes_at).
    lanes = merkle.NATIVE_LANES
    spare = min(n % lanes, kp) if batched_roots and n > lanes else 0
    spare_addresses = (
        np.uint64(secondary_columns.ctypes.data)
        + np.arange(n, dtype=np.uint64)[:, None] * np.uint64(kp * size)
        + np.arange(spare, dtype=np.uint64)[None, :] * np.uint64(size)
    ).reshape(-1)  # (column, row) in column-major order of the slivers

    def hash_spares(span: tuple[int, int]) -> None:
        first, stop = span
        digests = merkle.leaf_hashes_at(spare_addresses[first:stop], size)
        if digests is None:  # pragma: no cover - batched_roots says the helper is in use
            raise EncodingError("the C leaf hasher is gone")
        indices = np.arange(first, stop)
        hashes = _as_array(digests).reshape(-1, hash_length)
        symbol_hashes[indices % spare, indices // spare, :] = hashes

    # One pass, taken in this order: the rows, then the source columns, then the corner
    # columns, which need the rows (tasks are handed out in order, so the rows are all taken
    # long before; there is no barrier between the phases).
    tasks: list[tuple[Callable[[Any], None], Any]] = [(expand_row, row) for row in range(kp)]
    tasks += [(expand_column, column) for column in range(n)]
    count = len(spare_addresses)  # one group of lanes per task: small tasks end together
    tasks += [(hash_spares, (start, min(start + lanes, count))) for start in range(0, count, lanes)]
    isal.parallel_map(lambda task: task[0](task[1]), tasks)
    roots = None if batched_roots else tuple(column_roots)
    return primary_parity, secondary_columns, symbol_hashes, roots


_PARALLEL_HASH_MIN_SYMBOL = 4096
"""Hash on several threads only when symbols are this big: blake3 then releases the GIL for
long enough to pay for the hand-off; smaller symbols are bound by the Python loop."""


def _hash_symbols(
    config: EncodingConfig,
    codec: ErasureCodec,
    symbol_size: int,
    primary_rows: Sequence[ByteArray],
    secondary_columns: ByteArray,
) -> ByteArray:
    """Leaf hashes of all ``n*n`` symbols of the expanded matrix, each symbol hashed once.

    ``E[0:kp, c]`` is secondary sliver ``c`` and ``E[r, 0:ks]`` (``r >= kp``) is primary parity
    row ``r``: both are hashed where they lie. The rest, ``E[kp:n, ks:n]``, is computed column
    by column from secondary slivers ``ks..n-1`` with the primary code and hashed while still
    in cache: ``kp`` inputs per output symbol, about half the work of expanding the parity rows
    with the secondary code (``ks`` inputs). Columns and rows are spread over the codec threads.
    """
    n, kp, ks = config.n, config.kp, config.ks
    hash_length = merkle.HASH_LENGTH
    symbol_hashes = np.empty((n, n, hash_length), dtype=np.uint8)
    # One corner column of scratch per thread. A fresh array per column would often be fresh
    # pages: in pool threads glibc served every such 3.7 MB array (n = 100, 128 MB blob) with a
    # new mmap, about 900 page faults each.
    scratch = threading.local()

    def hash_column(column: int) -> None:
        digests = merkle.leaf_hashes_of_symbols(secondary_columns[column].data, symbol_size)
        symbol_hashes[:kp, column, :] = _as_array(digests).reshape(kp, hash_length)
        if column >= ks:
            parity: ByteArray | None = getattr(scratch, "parity", None)
            if parity is None:
                parity = scratch.parity = np.empty((n - kp, symbol_size), dtype=np.uint8)
            sliver = secondary_columns[column].reshape(kp, symbol_size)
            codec.encode(kp, n, sliver, out=parity)
            digests = merkle.leaf_hashes_of_symbols(parity.reshape(-1).data, symbol_size)
            symbol_hashes[kp:, column, :] = _as_array(digests).reshape(n - kp, hash_length)

    def hash_row(row: int) -> None:
        digests = merkle.leaf_hashes_of_symbols(primary_rows[row].data, symbol_size)
        symbol_hashes[row, :ks, :] = _as_array(digests).reshape(ks, hash_length)

    # Expanding columns is the heavy work: start it first so the threads end together.
    tasks: list[tuple[Callable[[int], None], int]] = [
        (hash_column, column) for column in range(ks, n)
    ]
    tasks += [(hash_column, column) for column in range(ks)]
    tasks += [(hash_row, row) for row in range(kp, n)]
    if symbol_size >= _PARALLEL_HASH_MIN_SYMBOL:
        isal.parallel_map(lambda task: task[0](task[1]), tasks)
    else:
        for function, index in tasks:
            function(index)
    return symbol_hashes


def expand_sliver(
    config: EncodingConfig,
    sliver_type: SliverType,
    sliver: BytesLike,
    symbol_size: int,
    *,
    codec: ErasureCodec | None = None,
    out: ByteArray | None = None,
) -> ByteArray:
    """The full row (primary) or column (secondary) of ``n`` symbols, shape ``(n, S)``.

    This is what a sliver hash commits to; verifying a sliver and proving a recovery symbol
    both start here. ``out`` (``n * S`` bytes, 1-D or ``(n, S)``) receives the result instead of
    a new array.
    """
    codec = codec or _default_codec
    symbols = config.source_symbols(sliver_type)
    values = _as_array(sliver)
    if symbol_size < 1 or len(values) != symbols * symbol_size:
        raise EncodingError(
            f"{sliver_type.value} sliver must be {symbols * symbol_size} bytes, got {len(values)}"
        )
    if out is None:
        expanded = np.empty((config.n, symbol_size), dtype=np.uint8)
    elif out.size != config.n * symbol_size or not out.flags.c_contiguous:
        raise EncodingError(f"out must be {config.n * symbol_size} contiguous bytes")
    else:
        expanded = out.reshape(config.n, symbol_size)
    expanded[:symbols] = values.reshape(symbols, symbol_size)
    codec.encode(symbols, config.n, expanded[:symbols], out=expanded[symbols:])
    return expanded


def expanded_matrix(
    config: EncodingConfig,
    blob: BytesLike,
    *,
    rows_first: bool = False,
    codec: ErasureCodec | None = None,
) -> ByteArray:
    """The whole ``n x n`` expanded matrix, shape ``(n, n, S)``; for tests and small blobs only.

    ``rows_first`` expands the source rows with the secondary code before the columns with the
    primary code: since both codes are linear and systematic the result must not change.
    """
    codec = codec or _default_codec
    length = len(memoryview(blob).cast("B"))
    n, kp, ks = config.n, config.kp, config.ks
    size = config.symbol_size(length)
    matrix = np.zeros((n, n, size), dtype=np.uint8)
    source = np.stack(source_rows(config, memoryview(blob).cast("B"), size))
    matrix[:kp, :ks] = source.reshape(kp, ks, size)
    if rows_first:
        for row in range(kp):
            codec.encode(ks, n, matrix[row, :ks], out=matrix[row, ks:])
        columns = np.ascontiguousarray(matrix.transpose(1, 0, 2))  # (column, row, byte)
        for column in range(n):
            codec.encode(kp, n, columns[column, :kp], out=columns[column, kp:])
        matrix = np.ascontiguousarray(columns.transpose(1, 0, 2))
    else:
        columns = np.ascontiguousarray(matrix[:, :ks].transpose(1, 0, 2))
        for column in range(ks):
            codec.encode(kp, n, columns[column, :kp], out=columns[column, kp:])
        matrix[:, :ks] = columns.transpose(1, 0, 2)
        for row in range(n):
            codec.encode(ks, n, matrix[row, :ks], out=matrix[row, ks:])
    return matrix


# --------------------------------------------------------------------------------------------
# Decoding and recovery
# --------------------------------------------------------------------------------------------


def _collect(
    config: EncodingConfig,
    items: Mapping[int, BytesLike],
    needed: int,
    item_length: int,
    what: str,
) -> dict[int, ByteArray]:
    """Validate indices and lengths and keep ``needed`` items (lowest indices first)."""
    chosen: dict[int, ByteArray] = {}
    for index in sorted(items):
        config.check_index(index, f"{what} index")
        values = _as_array(items[index])
        if len(values) != item_length:
            raise EncodingError(f"{what} {index} must be {item_length} bytes, got {len(values)}")
        if len(chosen) < needed:
            chosen[index] = values
    if len(chosen) < needed:
        raise EncodingError(f"need {needed} {what}s, got {len(chosen)}")
    return chosen


def decode_primary(
    config: EncodingConfig,
    length: int,
    slivers: Mapping[int, BytesLike],
    *,
    codec: ErasureCodec | None = None,
) -> memoryview:
    """The blob from any ``kp`` primary slivers (index -> sliver): one decode over whole rows,
    as a read-only ``memoryview`` (bytes-like: hashlib, ``==``, files and sockets take it as
    they take ``bytes``; ``bytes(view)`` copies it).

    A big blob is written straight into the array behind the returned view (see
    :func:`_new_result`): plain rows are copied once, missing ones decoded where they belong.
    It may end inside row ``full_rows``, so that work is cut by byte position instead of by
    row: bytes ``[0, tail)`` of rows ``0..full_rows`` and bytes ``[tail, row_length)`` of the
    rows before -- two decodes that cover exactly the blob, each as cheap per byte as one
    decode over whole rows.
    """
    codec = codec or _default_codec
    size = config.symbol_size(length)
    row_length = config.ks * size
    chosen = _collect(config, slivers, config.kp, row_length, "primary sliver")
    if length < _MIN_OWNED_RESULT:
        if all(row in chosen for row in range(config.kp)):
            rows: Sequence[ByteArray] = [chosen[row] for row in range(config.kp)]  # plain
        else:
            rows = list(codec.decode(config.kp, config.n, chosen))
        return memoryview(_join_prefix(rows, length))
    output = _new_result(length)
    full_rows, tail = divmod(length, row_length)
    # Row r of the blob starts at r * row_length; the last row's first ``tail`` bytes end the
    # blob, so this view stays inside the buffer.
    heads = np.lib.stride_tricks.as_strided(
        output, shape=(full_rows + 1, tail), strides=(row_length, 1), writeable=True
    )
    rests = output[: full_rows * row_length].reshape(full_rows, row_length)[:, tail:]
    for out, start, stop in ((heads, 0, tail), (rests, tail, row_length)):
        if out.size:
            part = {index: sliver[start:stop] for index, sliver in chosen.items()}
            codec.reconstruct(config.kp, config.n, part, range(out.shape[0]), out=out)
    return _readonly(output)


def _join_prefix(rows: Sequence[ByteArray], length: int) -> bytes:
    """The first ``length`` bytes of the concatenated rows, copied once."""
    parts = []
    remaining = length
    for row in rows:
        if remaining <= 0:
            break
        part: ByteArray = row[:remaining]
        parts.append(part.data)
        remaining -= len(part)
    return b"".join(parts)


def decode_secondary(
    config: EncodingConfig,
    length: int,
    slivers: Mapping[int, BytesLike],
    *,
    codec: ErasureCodec | None = None,
) -> memoryview:
    """The blob from any ``ks`` secondary slivers, as a read-only ``memoryview``: one decode
    over whole columns, one transpose (for a big blob, straight into the array behind the
    view: see :func:`_new_result`)."""
    codec = codec or _default_codec
    size = config.symbol_size(length)
    kp, ks = config.kp, config.ks
    chosen = _collect(config, slivers, ks, kp * size, "secondary sliver")
    columns = codec.decode(ks, config.n, chosen)
    matrix = columns.reshape(ks, kp, size).transpose(1, 0, 2)  # (row, column, byte)
    if length < _MIN_OWNED_RESULT:
        return memoryview(np.ascontiguousarray(matrix).reshape(-1)[:length].tobytes())
    output = _new_result(length)
    row_length = ks * size
    full_rows, tail = divmod(length, row_length)
    output[: full_rows * row_length].reshape(full_rows, ks, size)[...] = matrix[:full_rows]
    if tail:
        output[full_rows * row_length :] = matrix[full_rows].reshape(-1)[:tail]
    return _readonly(output)


_MIN_OWNED_RESULT = 8 << 20
"""Decoded blobs at least this big are written straight into a new array on huge pages (see
:func:`_new_result`); below it, page faults cost little and one decode call into a temporary,
joined into ``bytes``, is cheaper."""


def _new_result(length: int) -> ByteArray:
    """The array a big decoded blob is written into: :func:`memory.new_buffer`, fresh for every
    blob and owned by the view the decoder returns. A decoded 128 MB blob cost about 80 ms of
    page faults on 4 KiB pages (a ``bytes`` or ``bytearray`` of that size) and about 13 ms on
    2 MiB pages in a quiet process; the blob is written straight into it, not copied out of a
    temporary."""
    return memory.new_buffer(length)


def _readonly(output: ByteArray) -> memoryview:
    """The caller's view of a decoded blob: read-only, so nobody changes the blob under another
    holder, as with the ``bytes`` it replaces (unlike them it is not hashable); it keeps
    ``output`` alive."""
    return output.data.toreadonly()


def decode(
    config: EncodingConfig,
    length: int,
    sliver_type: SliverType,
    slivers: Mapping[int, BytesLike],
    *,
    codec: ErasureCodec | None = None,
) -> memoryview:
    """The blob from enough slivers of one type, as a read-only ``memoryview``."""
    if sliver_type is SliverType.PRIMARY:
        return decode_primary(config, length, slivers, codec=codec)
    return decode_secondary(config, length, slivers, codec=codec)


def recovery_symbol(
    config: EncodingConfig,
    length: int,
    sliver_type: SliverType,
    sliver: BytesLike,
    target_index: int,
    *,
    codec: ErasureCodec | None = None,
) -> bytes:
    """The symbol a helper holding ``sliver`` contributes to rebuild sliver ``target_index``.

    Holding primary sliver ``r`` (row ``r``) the helper gives ``E[r, c]`` for the lost secondary
    sliver ``c = target_index``; holding secondary sliver ``c`` it gives ``E[r, c]`` for the lost
    primary sliver ``r = target_index``. One output fragment of one small codec call.
    """
    codec = codec or _default_codec
    config.check_index(target_index, "target sliver index")
    size = config.symbol_size(length)
    symbols = config.source_symbols(sliver_type)
    values = _as_array(sliver)
    if len(values) != symbols * size:
        raise EncodingError(
            f"{sliver_type.value} sliver must be {symbols * size} bytes, got {len(values)}"
        )
    if target_index < symbols:
        return values[target_index * size : (target_index + 1) * size].tobytes()
    available = dict(enumerate(values.reshape(symbols, size)))
    return codec.reconstruct(symbols, config.n, available, [target_index]).reshape(-1).tobytes()


def rebuild_sliver(
    config: EncodingConfig,
    length: int,
    sliver_type: SliverType,
    symbols: Mapping[int, BytesLike],
    *,
    codec: ErasureCodec | None = None,
) -> bytes:
    """A lost sliver of ``sliver_type`` from the symbols of its row or column.

    A primary sliver ``p`` needs ``ks`` symbols ``E[p, c]`` keyed by ``c``; a secondary sliver
    ``c`` needs ``kp`` symbols ``E[r, c]`` keyed by ``r``. Which sliver is rebuilt does not enter
    the computation: it is the same decode for any row (or column).
    """
    codec = codec or _default_codec
    size = config.symbol_size(length)
    needed = config.source_symbols(sliver_type)
    chosen = _collect(config, symbols, needed, size, "symbol")
    return codec.decode(needed, config.n, chosen).tobytes()
