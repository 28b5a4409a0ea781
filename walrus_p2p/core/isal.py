"""Reed-Solomon over the ISA-L library bundled in the pyeclib wheel, called directly.

This module owns the fast codec path of RedStuff (docs/design.md §3). It computes exactly the
same bytes as pyeclib's ``isa_l_rs_cauchy`` backend, because it builds the same generator matrix
(``gf_gen_cauchy1_matrix`` over k+m rows, identity on top, Cauchy rows below) and runs the same
ISA-L kernels, but without pyeclib's costs: no 80-byte fragment headers, no copies into ``bytes``,
no GIL held during the arithmetic, outputs written into caller-owned numpy buffers, work split into
cache-sized blocks (the kernels re-read every source once per group of about six outputs, so a
block of all k sources has to stay in L2) and spread over a small thread pool.

ISA-L picks its kernels for the CPU it runs on (SSE, AVX2, AVX-512, GFNI); they all compute the
same bytes. ``WALRUS_P2P_ISAL`` can name the library file or be ``off`` (see :func:`load_library`).

A *fragment* here is any 1-D run of bytes; the codec works bytewise, so a whole matrix row can be
one fragment, and a batch of fragments (shape ``(B, L)``, any row stride) stands for B independent
codewords that share one call. If the library cannot be found or loaded, constructing
:class:`ReedSolomon` (or calling :func:`load_library`) raises :class:`IsalUnavailableError`, and
the caller falls back to the public pyeclib API.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from walrus_p2p.core import native
from walrus_p2p.errors import EncodingError

__all__ = [
    "MAX_FRAGMENTS",
    "IsalCodec",
    "IsalUnavailableError",
    "ReedSolomon",
    "cauchy_matrix",
    "gf_matmul",
    "load_library",
    "parallel_map",
]

_T = TypeVar("_T")
_R = TypeVar("_R")

Bytes2D = npt.NDArray[np.uint8]
"""A uint8 array; fragments are its last axis, which must be contiguous."""

MAX_FRAGMENTS = 256
"""k + m is at most 256: the Cauchy construction needs k+m distinct elements of GF(2^8)."""

_CACHE_BLOCK = 256 * 1024
"""Bytes of source data (all k sources together) per kernel call: 256 KiB measured best here
(2 MiB L2, 2 threads; blocks of 1 MiB and more ran 15-25 % slower)."""

_MIN_BLOCK = 1024
"""Never cut a fragment into blocks smaller than this: below it, call overhead dominates."""

_PARALLEL_MIN_BYTES = 1 << 20
"""Work with fewer source bytes than this runs on the calling thread: a hand-off to the pool
costs tens of microseconds under load, as much as encoding about 1 MB."""

_RUNS_PER_THREAD = 8
"""A parallel kernel call is split into this many runs of blocks per thread, taken dynamically:
enough to even out a thread that the OS delays, few enough that each run stays long."""

_DECODE_CACHE_SIZE = 64


class IsalUnavailableError(EncodingError):
    """The bundled ISA-L library cannot be located or loaded; use the public pyeclib API."""

    reason = "INTERNAL"


@dataclass(frozen=True, slots=True)
class _Library:
    path: str
    gf_gen_cauchy1_matrix: Callable[..., None]
    ec_init_tables: Callable[..., None]
    ec_encode_data: Callable[..., None]
    gf_invert_matrix: Callable[..., int]
    gf_mul: Callable[[int, int], int]


_library: _Library | None = None
_library_error: IsalUnavailableError | None = None
_library_lock = threading.Lock()


def _candidate_paths() -> list[Path]:
    """Where the wheel puts libisal: ``<site-packages>/pyeclib.libs/libisal-pyeclib.so.*``.

    Found through the installed distribution's file list first (robust to any site layout), then
    next to the ``pyeclib`` package; a system ``libisal`` has the same ABI and comes last.
    """
    candidates: list[Path] = []
    try:
        files = importlib.metadata.files("pyeclib") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        name = file.name
        if name.startswith("libisal") and ".so" in name:
            candidates.append(Path(str(file.locate())))
    spec = importlib.util.find_spec("pyeclib")
    if spec is not None and spec.origin is not None:
        site = Path(spec.origin).resolve().parent.parent
        for directory in (site / "pyeclib.libs", site / ".libs", site):
            if directory.is_dir():
                candidates.extend(sorted(directory.glob("libisal*.so*")))
    for system in ("libisal.so.2", "libisal.so"):
        candidates.append(Path(system))
    unique: list[Path] = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique


def _bind(path: Path) -> _Library:
    # CDLL (not PyDLL): every call releases the GIL, so two threads encode in parallel.
    cdll = ctypes.CDLL(str(path))
    u8p = ctypes.c_void_p
    gen = cdll.gf_gen_cauchy1_matrix
    gen.argtypes = [u8p, ctypes.c_int, ctypes.c_int]
    gen.restype = None
    init = cdll.ec_init_tables
    init.argtypes = [ctypes.c_int, ctypes.c_int, u8p, u8p]
    init.restype = None
    encode = cdll.ec_encode_data
    encode.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, u8p, u8p, u8p]
    encode.restype = None
    invert = cdll.gf_invert_matrix
    invert.argtypes = [u8p, u8p, ctypes.c_int]
    invert.restype = ctypes.c_int
    mul = cdll.gf_mul
    mul.argtypes = [ctypes.c_ubyte, ctypes.c_ubyte]
    mul.restype = ctypes.c_ubyte
    return _Library(str(path), gen, init, encode, invert, mul)


def load_library() -> _Library:
    """Load and bind libisal once per process; raise :class:`IsalUnavailableError` if impossible.

    ``WALRUS_P2P_ISAL`` may name the library file, or be ``off`` to force the fallback (useful to
    test the public-API path on a machine where ISA-L loads).
    """
    global _library, _library_error
    with _library_lock:
        if _library is not None:
            return _library
        if _library_error is not None:
            raise _library_error
        override = os.environ.get("WALRUS_P2P_ISAL", "")
        if override.lower() in {"0", "off", "no", "false"}:
            _library_error = IsalUnavailableError("ISA-L disabled by WALRUS_P2P_ISAL")
            raise _library_error
        paths = [Path(override)] if override else _candidate_paths()
        problems: list[str] = []
        for path in paths:
            try:
                library = _bind(path)
                _self_check(library)
            except (OSError, AttributeError, EncodingError) as error:
                problems.append(f"{path}: {error}")
                continue
            _library = library
            return library
        _library_error = IsalUnavailableError(
            "cannot load ISA-L: " + ("; ".join(problems) or "no candidate library found")
        )
        raise _library_error


@dataclass(frozen=True, slots=True)
class _BlockDriver:
    """``walrus_encode_blocks`` of the C helper (:mod:`walrus_p2p.core.native`): the kernel run
    block by block over a range of the fragments in one call."""

    function: Callable[..., int]
    encode_address: int

    def run(
        self,
        tables: int,
        k: int,
        rows: int,
        sources: int,
        outputs: int,
        start: int,
        stop: int,
        block: int,
    ) -> None:
        status = self.function(
            self.encode_address,
            tables,
            k,
            rows,
            sources,
            outputs,
            start,
            stop,
            block,
        )
        if status != 0:
            raise EncodingError("the block loop refused its arguments")


_drivers: dict[str, _BlockDriver | None] = {}


def _block_driver(library: _Library) -> _BlockDriver | None:
    """The C block loop for this ISA-L library, checked once against calls made from Python."""
    if library.path in _drivers:
        return _drivers[library.path]
    driver: _BlockDriver | None = None
    helper = native.library()
    function = getattr(helper, "walrus_encode_blocks", None) if helper is not None else None
    if function is not None:
        function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        function.argtypes += [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_size_t] * 3
        function.restype = ctypes.c_int
        kernel: Any = library.ec_encode_data  # a ctypes function pointer
        address = ctypes.cast(kernel, ctypes.c_void_p).value
        if address is not None:
            driver = _BlockDriver(function, address)
            if not _driver_agrees(library, driver):
                driver = None
    _drivers[library.path] = driver
    return driver


def _driver_agrees(library: _Library, driver: _BlockDriver) -> bool:
    """The loop gives the bytes of one kernel call per block made from Python."""
    k, rows, length, block = 5, 3, 3000, 1024
    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, (k, length), dtype=np.uint8)
    coefficients = rng.integers(1, 256, (rows, k), dtype=np.uint8)
    tables = np.zeros(32 * k * rows, dtype=np.uint8)
    library.ec_init_tables(k, rows, coefficients.ctypes.data, tables.ctypes.data)
    sources = np.array([row.ctypes.data for row in data], dtype=np.uint64)
    expected, got = (np.zeros((rows, length), dtype=np.uint8) for _ in range(2))
    for offset in range(0, length, block):
        size = min(block, length - offset)
        step = np.uint64(offset)
        outputs = np.array([row.ctypes.data for row in expected], dtype=np.uint64) + step
        source_block = sources + step
        library.ec_encode_data(
            size, k, rows, tables.ctypes.data, source_block.ctypes.data, outputs.ctypes.data
        )
    outputs = np.array([row.ctypes.data for row in got], dtype=np.uint64)
    try:
        driver.run(
            tables.ctypes.data, k, rows, sources.ctypes.data, outputs.ctypes.data, 0, length, block
        )
    except EncodingError:
        return False
    return bool(np.array_equal(expected, got)) and bool(expected.any())


# GF(2^8) with the polynomial x^8+x^4+x^3+x^2+1 (0x11d) and generator 2, as in ISA-L.
def _gf_tables() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    exp = np.zeros(512, dtype=np.uint8)
    log = np.zeros(256, dtype=np.int64)
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        value <<= 1
        if value & 0x100:
            value ^= 0x11D
    exp[255:510] = exp[0:255]
    products = exp[(log[:, None] + log[None, :])]
    products[0, :] = 0
    products[:, 0] = 0
    inverse = np.zeros(256, dtype=np.uint8)
    inverse[1:] = exp[(255 - log[1:]) % 255]
    return products.astype(np.uint8), inverse


_GF_MUL, _GF_INV = _gf_tables()


def cauchy_matrix(k: int, total: int) -> Bytes2D:
    """The generator of liberasurecode's ``isa_l_rs_cauchy``, computed here without ISA-L.

    Identity on the first k rows; row i >= k, column j is 1 / (i XOR j) in GF(2^8) (ISA-L's
    ``gf_gen_cauchy1_matrix``). Used to check the loaded library, and by the tests.
    """
    rows = np.arange(k, total, dtype=np.int64)[:, None]
    columns = np.arange(k, dtype=np.int64)[None, :]
    return np.concatenate([np.eye(k, dtype=np.uint8), _GF_INV[rows ^ columns]])


def _self_check(library: _Library) -> None:
    """Refuse a library that would not give pyeclib's bytes: field, generator and kernel.

    A wrong library would silently change every blob id, so this runs once at load: GF(2^8)
    products, the Cauchy generator for a small code, and one encode, all against numpy.
    """
    for a, b in ((2, 0x80), (0x53, 0xCA), (7, 255), (0, 9)):
        if library.gf_mul(a, b) != int(_GF_MUL[a, b]):
            raise IsalUnavailableError(f"{library.path}: unexpected GF(2^8) arithmetic")
    k, total, length = 5, 9, 100
    matrix = np.zeros((total, k), dtype=np.uint8)
    library.gf_gen_cauchy1_matrix(matrix.ctypes.data, total, k)
    if not np.array_equal(matrix, cauchy_matrix(k, total)):
        raise IsalUnavailableError(f"{library.path}: unexpected Cauchy generator matrix")
    data = (np.arange(k * length, dtype=np.int64) * 131 % 251).astype(np.uint8).reshape(k, length)
    parity = np.zeros((total - k, length), dtype=np.uint8)
    coefficients = np.ascontiguousarray(matrix[k:])
    tables = np.zeros(32 * k * (total - k), dtype=np.uint8)
    library.ec_init_tables(k, total - k, coefficients.ctypes.data, tables.ctypes.data)
    sources = np.array([row.ctypes.data for row in data], dtype=np.uint64)
    outputs = np.array([row.ctypes.data for row in parity], dtype=np.uint64)
    library.ec_encode_data(
        length, k, total - k, tables.ctypes.data, sources.ctypes.data, outputs.ctypes.data
    )
    if not np.array_equal(parity, gf_matmul(coefficients, data)):
        raise IsalUnavailableError(f"{library.path}: ec_encode_data disagrees with GF(2^8) math")


def gf_matmul(left: Bytes2D, right: Bytes2D) -> Bytes2D:
    """Matrix product over GF(2^8): XOR of byte products (small matrices only, ≤ 256 × 256)."""
    if left.shape[1] != right.shape[0]:
        raise ValueError("matrix shapes do not match")
    result = np.zeros((left.shape[0], right.shape[1]), dtype=np.uint8)
    for index in range(left.shape[1]):
        result ^= _GF_MUL[left[:, index][:, None], right[index][None, :]]
    return result


_worker = threading.local()
"""``_worker.busy`` is set inside pool threads: work submitted from there runs inline, so nested
parallel code (an encoder that already splits its work over threads) cannot deadlock the pool."""


def _in_worker() -> bool:
    return bool(getattr(_worker, "busy", False))


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _mark_worker() -> None:
    _worker.busy = True


def _thread_pool() -> ThreadPoolExecutor:
    """The process-wide pool (one thread fewer than the cores used: the caller works too)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(1, _default_threads() - 1),
                thread_name_prefix="walrus-codec",
                initializer=_mark_worker,
            )
        return _pool


def _forget_pool_after_fork() -> None:
    # A forked child inherits the pool object but not its threads: work submitted to it would
    # wait forever. Start a fresh pool on first use instead.
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def parallel_map(
    function: Callable[[_T], _R], items: Sequence[_T], *, threads: int | None = None
) -> list[_R]:
    """``[function(item) for item in items]`` on the calling thread and the codec's pool.

    For CPU work that releases the GIL (ISA-L, blake3 over large buffers). Threads take the next
    item as they finish the last, so unequal items balance, and a thread that the OS delays
    (the machine is shared) does not hold up the others. Called from a pool thread, or with a
    single core available, it runs inline; codec calls made from inside ``function`` run
    inline too, so the cores are never oversubscribed and the pool cannot deadlock.
    ``threads`` caps the threads used (default: the cores available, at most 2).
    """
    threads = min(_default_threads() if threads is None else threads, len(items))
    if threads <= 1 or _in_worker():
        return [function(item) for item in items]
    results: list[_R | None] = [None] * len(items)
    counter = itertools.count()  # next() on a count is atomic under the GIL

    def run() -> None:
        while (index := next(counter)) < len(items):
            results[index] = function(items[index])

    pool = _thread_pool()
    futures = [pool.submit(run) for _ in range(threads - 1)]
    _worker.busy = True
    try:
        run()
    finally:
        _worker.busy = False
        for future in futures:
            future.result()
    return results  # type: ignore[return-value]  # every slot was filled


def _default_threads() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    return max(1, min(2, available))


@dataclass(frozen=True, slots=True)
class _Operand:
    """Fragments ready for the kernel: the address of fragment j of codeword b at [b, j]."""

    pointers: npt.NDArray[np.uint64]
    batch: int
    length: int
    arrays: tuple[Bytes2D, ...]
    """Keeps the memory the pointers point into alive."""


def _address(array: Bytes2D) -> int:
    address: int = array.__array_interface__["data"][0]
    return address


def _check_array(array: Bytes2D, name: str, *, writable: bool) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise EncodingError(f"{name} must be a uint8 numpy array")
    if array.shape[-1] > 1 and array.strides[-1] != 1:
        raise EncodingError(f"{name} must be contiguous along its last axis")
    if any(stride < 0 for stride in array.strides):
        raise EncodingError(f"{name} must not have negative strides")
    if writable and not array.flags.writeable:
        raise EncodingError(f"{name} is read-only")


def _overlap(first: Bytes2D, second: Bytes2D) -> bool:
    """Whether two arrays share bytes (exact: interleaved views of one matrix do not)."""
    if not np.may_share_memory(first, second):
        return False
    return bool(np.shares_memory(first, second))


def _matrix_operand(array: Bytes2D, count: int, name: str, *, writable: bool) -> _Operand:
    """Fragments that are rows of one array: shape (count, L), or (B, count, L) for B codewords.

    The addresses come from the array's base address and strides, without one view per row.
    """
    if array.ndim not in (2, 3) or array.shape[-2] != count:
        raise EncodingError(f"{name} must have shape ({count}, L) or (B, {count}, L)")
    _check_array(array, name, writable=writable)
    batch = array.shape[0] if array.ndim == 3 else 1
    row_stride = np.uint64(array.strides[-2])
    pointers = np.uint64(_address(array)) + np.arange(count, dtype=np.uint64) * row_stride
    if array.ndim == 3:
        codeword_stride = np.uint64(array.strides[0])
        steps = np.arange(batch, dtype=np.uint64)[:, None] * codeword_stride
        pointers = steps + pointers[None, :]
    else:
        pointers = pointers[None, :]
    return _Operand(pointers, batch, array.shape[-1], (array,))


def _list_operand(arrays: Sequence[Bytes2D], count: int, name: str, *, writable: bool) -> _Operand:
    """Fragments that are separate arrays, each (L,) or (B, L) with any codeword stride."""
    if len(arrays) != count:
        raise EncodingError(f"expected {count} {name}s, got {len(arrays)}")
    if count == 0:
        raise EncodingError(f"no {name}s given")
    shape = arrays[0].shape
    if len(shape) not in (1, 2):
        raise EncodingError(f"a {name} must be 1-D or 2-D")
    for array in arrays:
        if array.shape != shape:
            raise EncodingError(f"{name}s differ in shape: {array.shape} != {shape}")
        _check_array(array, name, writable=writable)
    addresses = np.array([_address(array) for array in arrays], dtype=np.uint64)
    if len(shape) == 1:
        return _Operand(addresses[None, :], 1, shape[0], tuple(arrays))
    strides = np.array([array.strides[0] for array in arrays], dtype=np.uint64)
    steps = np.arange(shape[0], dtype=np.uint64)[:, None]
    return _Operand(
        addresses[None, :] + steps * strides[None, :], shape[0], shape[1], tuple(arrays)
    )


class ReedSolomon:
    """A systematic (k + m, k) Reed-Solomon code, byte-identical to pyeclib's ``isa_l_rs_cauchy``.

    Fragments 0..k-1 are the data, k..k+m-1 the parity. Instances hold only small tables and are
    safe to share between threads.
    """

    def __init__(self, k: int, m: int, *, threads: int | None = None) -> None:
        if k < 1 or m < 0 or k + m > MAX_FRAGMENTS:
            raise EncodingError(f"unsupported code: k={k} m={m} (need k ≥ 1, k+m ≤ 256)")
        self._library = load_library()
        self.k = k
        self.m = m
        self.threads = _default_threads() if threads is None else max(1, threads)
        total = k + m
        matrix = np.zeros((total, k), dtype=np.uint8)
        self._library.gf_gen_cauchy1_matrix(matrix.ctypes.data, total, k)
        self.matrix: Bytes2D = matrix
        """The (k+m) × k generator matrix; row i maps the data to fragment i."""
        self._encode_tables = self._tables(matrix[k:])
        self._row_tables: dict[int, Bytes2D] = {}
        self._decode_tables: OrderedDict[tuple[tuple[int, ...], tuple[int, ...]], Bytes2D] = (
            OrderedDict()
        )
        self._cache_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ReedSolomon(k={self.k}, m={self.m})"

    def _tables(self, rows: Bytes2D) -> Bytes2D:
        """Expand coefficient rows (r × k) into ISA-L's 32-byte-per-coefficient lookup tables."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        tables = np.empty(32 * rows.size, dtype=np.uint8)
        if rows.shape[0]:
            self._library.ec_init_tables(
                self.k, rows.shape[0], rows.ctypes.data, tables.ctypes.data
            )
        return tables

    # -- the kernel driver -------------------------------------------------------------------

    def _apply(self, tables: Bytes2D, sources: _Operand, outputs: _Operand) -> None:
        """outputs[i] = Σ_j coefficient(i, j) · sources[j], for every fragment of every codeword.

        The work is cut into blocks of about _CACHE_BLOCK source bytes, and the blocks into
        _RUNS_PER_THREAD contiguous runs per thread, which the threads take as they finish the
        last (each run walks its memory in order; a thread slowed by other load takes fewer).
        """
        k = sources.pointers.shape[1]
        rows = outputs.pointers.shape[1]
        batch, length = sources.batch, sources.length
        if (outputs.batch, outputs.length) != (batch, length):
            raise EncodingError("output fragments differ in shape from the sources")
        if rows == 0 or length == 0 or batch == 0:
            return
        block = max(_MIN_BLOCK, (_CACHE_BLOCK // k) & ~63)
        block = min(block, length)
        blocks = [
            (b, offset, min(block, length - offset))
            for b in range(batch)
            for offset in range(0, length, block)
        ]
        encode = self._library.ec_encode_data
        table_pointer = _address(tables)
        source_pointers = np.ascontiguousarray(sources.pointers)
        output_pointers = np.ascontiguousarray(outputs.pointers)
        driver = _block_driver(self._library)

        def run(start: int, stop: int) -> None:
            if driver is not None:
                # One C call per codeword's run of blocks (see walrus_encode_blocks).
                index = start
                while index < stop:
                    b, first, _ = blocks[index]
                    end = index + 1
                    while end < stop and blocks[end][0] == b:
                        end += 1
                    _, last, size = blocks[end - 1]
                    driver.run(
                        table_pointer,
                        k,
                        rows,
                        _address(source_pointers[b]),
                        _address(output_pointers[b]),
                        first,
                        last + size,
                        block,
                    )
                    index = end
                return
            for b, offset, size in blocks[start:stop]:
                step = np.uint64(offset)
                # Local names keep the pointer tables alive for the duration of the call.
                source_block = source_pointers[b] + step
                output_block = output_pointers[b] + step
                encode(
                    size,
                    k,
                    rows,
                    table_pointer,
                    _address(source_block),
                    _address(output_block),
                )

        threads = self.threads
        if (
            threads <= 1
            or len(blocks) < 2
            or batch * length * k < _PARALLEL_MIN_BYTES
            or _in_worker()
        ):
            run(0, len(blocks))
            return
        runs = min(len(blocks), threads * _RUNS_PER_THREAD)
        edges = [len(blocks) * index // runs for index in range(runs + 1)]
        parallel_map(
            lambda index: run(edges[index], edges[index + 1]), range(runs), threads=threads
        )

    # -- public operations -------------------------------------------------------------------

    def encode(self, data: Bytes2D, out: Bytes2D | None = None) -> Bytes2D:
        """Compute the m parity fragments of k data fragments.

        ``data`` has shape (k, L) or (B, k, L) (B codewords at once); the result, written into
        ``out`` when given (it must not overlap ``data``), has shape (m, L) or (B, m, L).
        """
        if data.ndim not in (2, 3) or data.shape[-2] != self.k:
            raise EncodingError(f"data must have shape (k={self.k}, L) or (B, k, L)")
        shape = (*data.shape[:-2], self.m, data.shape[-1])
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape:
            raise EncodingError(f"out must have shape {shape}, not {out.shape}")
        elif _overlap(data, out):
            raise EncodingError("out must not overlap data")
        if self.m:
            self._apply(
                self._encode_tables,
                _matrix_operand(data, self.k, "data", writable=False),
                _matrix_operand(out, self.m, "out", writable=True),
            )
        return out

    def encode_fragments(
        self, data: Sequence[Bytes2D], parity: Sequence[Bytes2D] | Bytes2D
    ) -> None:
        """Like :meth:`encode`, with each data fragment a separate array of shape (L,) or (B, L).

        ``parity`` is a sequence of such arrays, or one (m, L) array whose rows receive them.
        """
        sources = _list_operand(data, self.k, "data fragment", writable=False)
        if self.m == 0:
            return
        if isinstance(parity, np.ndarray) and parity.ndim == 2 and sources.batch == 1:
            outputs = _matrix_operand(parity, self.m, "parity", writable=True)
        else:
            outputs = _list_operand(list(parity), self.m, "parity fragment", writable=True)
        self._apply(self._encode_tables, sources, outputs)

    def fragment(self, index: int, data: Bytes2D, out: Bytes2D | None = None) -> Bytes2D:
        """Compute only fragment ``index`` of the codeword(s) whose data is ``data``.

        This is what a helper does for a recovery symbol: one output row costs about 1/m of a full
        encode. ``data`` has shape (k, L) or (B, k, L); the result (L,) or (B, L).
        """
        if not 0 <= index < self.k + self.m:
            raise EncodingError(f"fragment index {index} out of range 0..{self.k + self.m - 1}")
        if data.ndim not in (2, 3) or data.shape[-2] != self.k:
            raise EncodingError(f"data must have shape (k={self.k}, L) or (B, k, L)")
        shape = (*data.shape[:-2], data.shape[-1])
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape:
            raise EncodingError(f"out must have shape {shape}, not {out.shape}")
        if index < self.k:
            out[...] = data[..., index, :]
            return out
        with self._cache_lock:
            tables = self._row_tables.get(index)
            if tables is None:
                tables = self._row_tables[index] = self._tables(self.matrix[index : index + 1])
        self._apply(
            tables,
            _matrix_operand(data, self.k, "data", writable=False),
            _list_operand([out], 1, "out", writable=True),
        )
        return out

    def decode(
        self,
        fragments: Mapping[int, Bytes2D],
        wanted: Sequence[int] | None = None,
        out: Bytes2D | None = None,
    ) -> Bytes2D:
        """Rebuild fragments ``wanted`` (default: the k data fragments) from any k known ones.

        ``fragments`` maps fragment index to an array of shape (L,) or (B, L); when more than k
        are given, the lowest indices are used. The result has shape (len(wanted), L) or
        (B, len(wanted), L) and is written into ``out`` when given.
        """
        targets = list(range(self.k)) if wanted is None else [int(i) for i in wanted]
        total = self.k + self.m
        if any(not 0 <= i < total for i in targets):
            raise EncodingError(f"wanted fragment out of range 0..{total - 1}")
        known = sorted(i for i in fragments if 0 <= i < total)
        if len(known) != len(fragments):
            raise EncodingError(f"fragment index out of range 0..{total - 1}")
        if len(known) < self.k:
            raise EncodingError(f"need {self.k} fragments to decode, got {len(known)}")
        chosen = tuple(known[: self.k])
        first = fragments[chosen[0]]
        if first.ndim == 1:
            shape: tuple[int, ...] = (len(targets), first.shape[0])
        else:
            shape = (first.shape[0], len(targets), first.shape[1])
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape:
            raise EncodingError(f"out must have shape {shape}, not {out.shape}")
        batched = first.ndim == 2

        result = out

        def slot(position: int) -> Bytes2D:
            return result[:, position, :] if batched else result[position]

        first_position: dict[int, int] = {}
        for position, index in enumerate(targets):
            if index in fragments:
                slot(position)[...] = fragments[index]
            elif index in first_position:
                continue
            else:
                first_position[index] = position
        if not first_position:
            return out
        missing = tuple(first_position)
        tables = self._decoding_tables(chosen, missing)
        self._apply(
            tables,
            _list_operand([fragments[i] for i in chosen], self.k, "fragment", writable=False),
            _list_operand(
                [slot(first_position[i]) for i in missing], len(missing), "out", writable=True
            ),
        )
        for position, index in enumerate(targets):  # a fragment wanted twice: copy it
            if index in first_position and first_position[index] != position:
                slot(position)[...] = slot(first_position[index])
        return out

    def decoding_matrix(self, chosen: Sequence[int], wanted: Sequence[int]) -> Bytes2D:
        """Rows mapping fragments ``chosen`` (exactly k) to fragments ``wanted``."""
        k = self.k
        if len(chosen) != k or len(set(chosen)) != k:
            raise EncodingError(f"need exactly {k} distinct fragments")
        if tuple(chosen) == tuple(range(k)):
            # All data known: the wanted fragments are plain generator rows, no inversion.
            return np.ascontiguousarray(self.matrix[list(wanted)])
        square = np.ascontiguousarray(self.matrix[list(chosen)])
        inverse = np.empty((k, k), dtype=np.uint8)
        if self._library.gf_invert_matrix(square.ctypes.data, inverse.ctypes.data, k) != 0:
            raise EncodingError("fragment subset is not decodable (singular matrix)")
        # Data fragment i is row i of the inverse; parity fragment j is row j of the generator
        # applied to the recovered data.
        return gf_matmul(self.matrix[list(wanted)], inverse)

    def _decoding_tables(self, chosen: tuple[int, ...], wanted: tuple[int, ...]) -> Bytes2D:
        key = (chosen, wanted)
        with self._cache_lock:
            tables = self._decode_tables.get(key)
            if tables is not None:
                self._decode_tables.move_to_end(key)
                return tables
        tables = self._tables(self.decoding_matrix(chosen, wanted))
        with self._cache_lock:
            self._decode_tables[key] = tables
            while len(self._decode_tables) > _DECODE_CACHE_SIZE:
                self._decode_tables.popitem(last=False)
        return tables


class IsalCodec:
    """``encoding.ErasureCodec`` over :class:`ReedSolomon`: the default codec when ISA-L loads.

    It keeps one :class:`ReedSolomon` per ``(k, total)`` (a few KiB of tables each). Constructing
    it loads the library, so ``IsalCodec()`` raising :class:`IsalUnavailableError` is the signal
    to fall back to the public pyeclib API.
    """

    name = "isal"

    def __init__(self, *, threads: int | None = None) -> None:
        load_library()
        self._threads = threads
        self._codes: dict[tuple[int, int], ReedSolomon] = {}
        self._lock = threading.Lock()

    def code(self, k: int, total: int) -> ReedSolomon:
        """The (cached) code with ``k`` data fragments out of ``total``."""
        if not 1 <= k < total <= MAX_FRAGMENTS:
            raise EncodingError(f"invalid code parameters k={k} total={total}")
        key = (k, total)
        with self._lock:
            code = self._codes.get(key)
            if code is None:
                code = self._codes[key] = ReedSolomon(k, total - k, threads=self._threads)
            return code

    def encode(
        self,
        k: int,
        total: int,
        data: Bytes2D | Sequence[Bytes2D],
        out: Bytes2D | None = None,
    ) -> Bytes2D:
        code = self.code(k, total)
        if isinstance(data, np.ndarray) and data.ndim == 2:
            if data.shape[0] != k or data.shape[1] < 1:
                raise EncodingError(f"expected {k} non-empty data fragments")
            if data.shape[1] > 1 and data.strides[1] != 1:
                data = np.ascontiguousarray(data)
            shape = (total - k, data.shape[1])
            if out is not None and out.shape != shape:
                raise EncodingError("output buffer has the wrong shape")
            return code.encode(data, out)
        fragments = [_contiguous(fragment) for fragment in data]
        if len(fragments) != k:
            raise EncodingError(f"expected {k} data fragments, got {len(fragments)}")
        length = fragments[0].shape[0] if fragments[0].ndim == 1 else -1
        if length < 1 or any(f.ndim != 1 or f.shape[0] != length for f in fragments):
            raise EncodingError("all fragments must be 1-D, non-empty and of the same length")
        result = np.empty((total - k, length), dtype=np.uint8) if out is None else out
        if result.shape != (total - k, length):
            raise EncodingError("output buffer has the wrong shape")
        code.encode_fragments(fragments, result)
        return result

    def decode(self, k: int, total: int, available: Mapping[int, Bytes2D]) -> Bytes2D:
        return self.reconstruct(k, total, available, range(k))

    def reconstruct(
        self,
        k: int,
        total: int,
        available: Mapping[int, Bytes2D],
        wanted: Sequence[int],
        out: Bytes2D | None = None,
    ) -> Bytes2D:
        code = self.code(k, total)
        usable = {
            index: _contiguous(fragment)
            for index, fragment in available.items()
            if 0 <= index < total
        }
        length = next(iter(usable.values())).shape if usable else ()
        if len(length) != 1 or length[0] < 1:
            raise EncodingError("all fragments must be 1-D, non-empty and of the same length")
        if any(fragment.shape != length for fragment in usable.values()):
            raise EncodingError("all fragments must be 1-D, non-empty and of the same length")
        return code.decode(usable, wanted, out)


def _contiguous(fragment: Bytes2D) -> Bytes2D:
    array = np.asarray(fragment)
    if array.dtype != np.uint8:
        raise EncodingError(f"fragments must be uint8 arrays, not {array.dtype}")
    if array.ndim == 1 and array.shape[0] > 1 and array.strides[0] != 1:
        array = np.ascontiguousarray(array)
    return array
