"""Big buffers without a page fault per 4 KiB: fresh ``bytes`` on huge pages, reused scratch.

Why: CPython and numpy take every big buffer from glibc's ``mmap``; the first touch of each
4 KiB page then faults into the kernel. Here (a 2-core VM) a fault costs 3 µs on a quiet
machine and about 10 µs among 20 busy peer processes, so receiving a 100 MiB blob into fresh
4 KiB pages and checking its slivers cost a reading client 0.3-0.6 CPU-s of system time, more
than the user time of the whole read. Three remedies, all used on hot paths only:

* :func:`new_bytes`: a ``bytes`` object for the caller to fill, on transparent huge pages (the
  kernel's THP mode here is ``madvise``): one fault per 2 MiB. :class:`BytesPool` makes its
  new objects with it.
* :func:`scratch`: a per-thread array reused from call to call, for results that are hashed
  and dropped (a sliver's expansion to ``n`` symbols when it is checked).
* :class:`BytesPool`: ``bytes`` objects for big received frames
  (:func:`walrus_p2p.net.framing.read_exactly`) and decoded blobs, reused once nobody holds
  them. On this VM fresh memory is dear even on huge pages: the balloon driver reports freed
  2 MiB blocks to the host (``page_reporting_order`` 9), and taking them back costs a host
  fault; decoding a 100 MiB blob into fresh pages took 57-225 ms of system time inside a
  reading client against 11 ms in a quiet process.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading

import numpy as np
from numpy.typing import NDArray

HUGE_PAGE = 2 << 20
MIN_HUGE_BYTES = 4 << 20
"""From this size :func:`new_bytes` asks for huge pages, and framing pools received frames;
below it callers allocate as usual (huge pages would round small buffers up, and faults cost
little)."""
SCRATCH_MAX_BYTES = 64 << 20
"""A thread keeps at most this much scratch; bigger requests get a fresh array each time."""

_libc: ctypes.CDLL | None = None


def advise_huge_pages(address: int, length: int) -> None:
    """``madvise(MADV_HUGEPAGE)`` on the 2 MiB-aligned part of a range; only a hint, so
    failures (no THP, no ``madvise``) are ignored."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    start = -(-address // HUGE_PAGE) * HUGE_PAGE
    stop = (address + length) // HUGE_PAGE * HUGE_PAGE
    library = _c_library()
    if advice is None or stop <= start or library is None:
        return
    library.madvise(start, stop - start, advice)


def _c_library() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _libc.madvise.restype = ctypes.c_int
            _libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            _libc.memcmp.restype = ctypes.c_int
        except (OSError, AttributeError):
            return None
    return _libc


def same_bytes(
    first: bytes | bytearray | memoryview | NDArray[np.uint8],
    second: bytes | bytearray | memoryview | NDArray[np.uint8],
) -> bool:
    """Whether two contiguous buffers hold the same bytes: one ``memcmp`` (about 1 ms per
    13 MiB here, where ``memoryview ==`` compares element by element in 22 ms)."""
    left = np.frombuffer(first, dtype=np.uint8)
    right = np.frombuffer(second, dtype=np.uint8)
    if left.size != right.size:
        return False
    if left.size == 0:
        return True
    library = _c_library()
    if library is None:
        return bool(np.array_equal(left, right))
    return int(library.memcmp(int(left.ctypes.data), int(right.ctypes.data), left.size)) == 0


def fills_in_place() -> bool:
    """:func:`new_bytes` writes into a ``bytes`` object, which only CPython allows safely."""
    return sys.implementation.name == "cpython"


def new_bytes(length: int) -> tuple[bytes, NDArray[np.uint8]]:
    """A new ``bytes`` of ``length`` bytes and a writable array over it, for the caller to fill.

    ``bytes(length)`` comes from ``calloc``, which leaves fresh pages untouched; before anything
    touches them we ask for transparent huge pages, and the caller writes its data straight into
    the object: no fault per 4 KiB page and no copy out of a temporary buffer.

    Writing into a ``bytes`` is sound only because nobody else has seen the object yet (C code
    does the same after ``PyBytes_FromStringAndSize(NULL, n)``); the caller must fill all of it
    (or drop it) before letting anyone else see it, and then drop the array. CPython only
    (:func:`fills_in_place`), and only for ``length >= 2``: CPython shares its empty and
    1-byte ``bytes`` objects, so those raise ``ValueError``.
    """
    if length < 2:
        # CPython hands out shared objects for b"" and the 1-byte strings: never write those.
        raise ValueError(f"new_bytes is for big buffers, not {length} bytes")
    result = bytes(length)
    array = _writable(result)
    if length >= MIN_HUGE_BYTES:
        advise_huge_pages(int(array.ctypes.data), length)
    return result, array


def _writable(result: bytes) -> NDArray[np.uint8]:
    """A writable array over the data of a ``bytes`` object that nobody else sees."""
    address = int(np.frombuffer(result, dtype=np.uint8).ctypes.data)
    writable = (ctypes.c_uint8 * len(result)).from_address(address)
    return np.frombuffer(memoryview(writable), dtype=np.uint8)


_HASH_OFFSET = bytes.__basicsize__ - 1 - ctypes.sizeof(ctypes.c_ssize_t)
"""Where CPython keeps a ``bytes`` object's cached hash (``ob_shash``, just before the data)."""


class BytesPool:
    """``bytes`` objects of exact sizes, handed out again once only the pool refers to them.

    :meth:`take` returns a ``bytes`` and a writable array over it, as :func:`new_bytes` does;
    the caller fills all of it before anyone else sees it. An object comes back out of the
    pool only when its reference count shows that nothing but the pool holds it (so nobody can
    see it change) and its length is the one asked for; its cached hash is reset first. Up to
    ``max_bytes`` are kept, oldest dropped first (a dropped object just lives on with its
    users). CPython only (:func:`fills_in_place`); callers fall back to :func:`new_bytes`.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: list[bytes] = []
        self._lock = threading.Lock()
        self.reused = 0
        """How many times an object was handed out again (for tests and figures)."""

    def _idle(self, position: int) -> bool:
        # References: the pool's list and getrefcount's argument; no local name holds it.
        return sys.getrefcount(self._items[position]) == 2

    def take(self, length: int) -> tuple[bytes, NDArray[np.uint8]]:
        with self._lock:
            for position in range(len(self._items) - 1, -1, -1):
                if len(self._items[position]) == length and self._idle(position):
                    result = self._items.pop(position)
                    self._items.append(result)
                    ctypes.c_ssize_t.from_address(id(result) + _HASH_OFFSET).value = -1
                    self.reused += 1
                    return result, _writable(result)
            result, array = new_bytes(length)
            if length <= self.max_bytes:
                self._items.append(result)
                total = sum(len(item) for item in self._items)
                while total > self.max_bytes:
                    total -= len(self._items.pop(0))
            return result, array

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class _Scratch(threading.local):
    array: NDArray[np.uint8] | None = None


_scratch = _Scratch()


def scratch(length: int) -> NDArray[np.uint8]:
    """An uninitialised array of ``length`` bytes, reused by this thread's next call.

    The caller must be done with it before it calls :func:`scratch` again on the same thread
    (nothing it returns may refer to it). Up to :data:`SCRATCH_MAX_BYTES` is kept per thread;
    above that every call gets a fresh array.
    """
    if length > SCRATCH_MAX_BYTES:
        return np.empty(length, dtype=np.uint8)
    held = _scratch.array
    if held is None or len(held) < length:
        held = None
        _scratch.array = None  # unmap the smaller one first
        size = max(length, MIN_HUGE_BYTES)
        held = np.empty(size, dtype=np.uint8)
        advise_huge_pages(int(held.ctypes.data), size)
        _scratch.array = held
    return held[:length]


__all__ = [
    "HUGE_PAGE",
    "MIN_HUGE_BYTES",
    "SCRATCH_MAX_BYTES",
    "BytesPool",
    "advise_huge_pages",
    "fills_in_place",
    "new_bytes",
    "same_bytes",
    "scratch",
]
