"""Blake3 hashing with domain separation and the Merkle trees of sliver hashes (docs/design.md §4).

Every hash in the commitments is a *keyed* blake3 hash whose 32-byte key is derived, with blake3's
own ``derive_key`` mode, from a context string naming its purpose. Keyed mode costs nothing per
call (no prefix block to hash) and makes a leaf hash, an inner node hash, a pair hash and a blob id
impossible to confuse: changing the purpose changes the key, so no value can be replayed as another.

Tree shape, fixed for every peer: the leaves are leaf hashes, a level with an odd number of nodes
is padded with the constant :data:`EMPTY_NODE_HASH`, and an inner node is
``inner_hash(left, right)``. A tree of ``m`` leaves therefore has depth ``ceil(log2(m))``, and a
proof is exactly that many sibling hashes. Verifying a proof checks its length against the leaf
count, so the proof also pins the leaf's position.

Levels are kept as one ``bytes`` object of concatenated 32-byte hashes: one inner hash is then a
single blake3 call over a 64-byte slice, with no list of small objects to build.
"""

from __future__ import annotations

import ctypes
import hmac
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from blake3 import blake3

from walrus_p2p.core import native
from walrus_p2p.errors import VerificationError

HASH_LENGTH = 32
"""Every hash, root and id is 32 bytes."""

BytesLike = bytes | bytearray | memoryview


def derive_domain_key(purpose: str) -> bytes:
    """The blake3 key for one purpose; the context string is part of the protocol (never change)."""
    return bytes(blake3(b"", derive_key_context=f"walrus-p2p v1 {purpose}").digest())


LEAF_KEY = derive_domain_key("merkle leaf")
"""Key of a Merkle leaf hash (a symbol of the expanded matrix)."""
INNER_KEY = derive_domain_key("merkle inner node")
"""Key of a Merkle inner node hash; differs from the leaf key so a leaf cannot pose as a node."""
EMPTY_KEY = derive_domain_key("merkle empty node")
"""Key of the padding node that completes a level with an odd number of nodes."""

EMPTY_NODE_HASH = bytes(blake3(b"", key=EMPTY_KEY).digest())
"""The padding node: a fixed value that is neither a leaf hash nor an inner hash of any input."""

_LEAF_HASHER = blake3(key=LEAF_KEY)
_INNER_HASHER = blake3(key=INNER_KEY)
"""Keyed hashers never updated, only copied: copying one costs half of setting up a keyed hasher,
which is most of the cost of hashing 64 bytes (the ~n*n inner nodes of an encode). Loops over
many inputs copy once and ``reset()`` after each digest (back to the keyed initial state), which
halves the cost again (``bench/encode.py`` shows the encode time this serves)."""


def keyed_hash(key: bytes, data: BytesLike) -> bytes:
    """Blake3 keyed hash of ``data`` under a purpose key (see :func:`derive_domain_key`)."""
    return bytes(blake3(data, key=key).digest())


def leaf_hash(data: BytesLike) -> bytes:
    """Hash of one leaf's content (one symbol)."""
    hasher = _LEAF_HASHER.copy()
    hasher.update(data)
    return bytes(hasher.digest())


def inner_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an inner node from its two children."""
    hasher = _INNER_HASHER.copy()
    hasher.update(left)
    hasher.update(right)
    return bytes(hasher.digest())


# -- many leaves at once ---------------------------------------------------------------------
#
# Leaf hashes are most of the hashing of an encode (every symbol of the n x n expanded matrix)
# and of a sliver check (n symbols). The C helper (:mod:`walrus_p2p.core.native`) hashes many
# symbols of one length per call, sixteen at a time in AVX-512 lanes, without the GIL; without
# it the blake3 package hashes one symbol per Python call. Both give the same bytes: the helper
# is checked against the blake3 package when loaded, and not used if it differs, is missing, or
# the CPU lacks AVX-512 (WALRUS_P2P_NATIVE=0 in the environment turns it off).

NATIVE_LANES = 16
"""Symbols the C helper hashes side by side (one AVX-512 vector of 32-bit words)."""

_NATIVE_MIN_SYMBOLS = 2
"""Hash through the helper from this many symbols: one symbol gains nothing from its lanes."""


def _load_native() -> Callable[..., int] | None:
    library = native.library()
    if library is None:
        return None
    try:
        function = library.walrus_leaf_hashes
    except AttributeError:
        return None
    function.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.c_char_p,
        ctypes.c_void_p,
    ]
    function.restype = ctypes.c_int
    return function if _native_agrees(function) else None


def _native_call(
    function: Callable[..., int], addresses: npt.NDArray[np.uint64], length: int, key: bytes
) -> bytes | None:
    output = np.empty(len(addresses) * HASH_LENGTH, dtype=np.uint8)
    status = function(addresses.ctypes.data, len(addresses), length, key, output.ctypes.data)
    return output.tobytes() if status == 0 else None


def _native_agrees(function: Callable[..., int]) -> bool:
    """The helper's digests equal the blake3 package's, around every chunk and block edge."""
    data = bytes(range(256)) * 40  # 10,240 bytes, not periodic at 64 or 1,024
    for length in (0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 3073, 5000):
        count = 17  # one full group of sixteen lanes and one part-empty group
        buffers = [data[start : start + length] for start in range(count)]
        arrays = [np.frombuffer(buffer, dtype=np.uint8) for buffer in buffers]
        addresses = np.array(
            [array.ctypes.data if length else 0 for array in arrays], dtype=np.uint64
        )
        for key in (LEAF_KEY, INNER_KEY):
            got = _native_call(function, addresses, length, key)
            if got is None:  # no AVX-512 here
                return False
            if got != b"".join(keyed_hash(key, buffer) for buffer in buffers):
                return False
    return True


_NATIVE = _load_native()


def native_leaf_hashing() -> bool:
    """Whether leaf hashes go through the C helper here (see the comment above)."""
    return _NATIVE is not None


_WHOLE_GROUPS_FROM = 16 * 1024
"""From this symbol size, symbols left over after the last full group of lanes are hashed one
by one with the blake3 package, which fills its own lanes with the chunks of one symbol (from
16 chunks on): a group of c < 16 symbols costs the helper a whole group's time, so below 14
of 16 lanes it is slower per symbol than the blake3 package (measured 5.6 against 4.7 GB/s
per core for full lanes). Smaller symbols all go to the helper: there, one Python call per
symbol costs more than empty lanes."""


def leaf_hashes_at(addresses: npt.NDArray[np.uint64], symbol_size: int) -> bytes | None:
    """Leaf hashes of the ``symbol_size``-byte symbols at ``addresses`` (C helper), or None
    when the helper is not in use. The caller keeps the memory alive and unchanged meanwhile."""
    if _NATIVE is None or len(addresses) == 0:
        return None
    addresses = np.ascontiguousarray(addresses, dtype=np.uint64)
    count = len(addresses)
    whole = count
    if symbol_size >= _WHOLE_GROUPS_FROM:
        whole -= count % NATIVE_LANES
    digests = _native_call(_NATIVE, addresses[:whole], symbol_size, LEAF_KEY) if whole else b""
    if digests is None:  # pragma: no cover - the helper was checked on this CPU at load
        return None
    if whole == count:
        return digests
    rest = (
        memoryview((ctypes.c_char * symbol_size).from_address(int(address))).cast("B")
        for address in addresses[whole:]
    )
    return digests + leaf_hashes(rest)


def leaf_hashes_of_rows(*arrays: npt.NDArray[np.uint8]) -> bytes:
    """Leaf hashes of the rows of 2-D uint8 arrays with contiguous rows (any row stride), all
    rows of one length: those of the first array, then the next, concatenated. One call of the
    C helper for all of them, so that its sixteen lanes stay full."""
    lengths = {array.shape[1] for array in arrays if array.ndim == 2}
    if len(lengths) > 1 or any(
        array.ndim != 2 or (array.shape[1] > 1 and array.strides[1] != 1) for array in arrays
    ):
        raise ValueError("rows must be 2-D arrays of contiguous rows of one length")
    count = sum(array.shape[0] for array in arrays)
    size = lengths.pop() if lengths else 0
    if count >= _NATIVE_MIN_SYMBOLS and size:
        addresses = np.concatenate(
            [
                array.ctypes.data
                + np.arange(array.shape[0], dtype=np.uint64) * np.uint64(array.strides[0])
                for array in arrays
            ]
        )
        digests = leaf_hashes_at(addresses, size)
        if digests is not None:
            return digests
    return leaf_hashes(row.data for array in arrays for row in array)


def leaf_hashes_of_symbols(buffer: BytesLike, symbol_size: int) -> bytes:
    """Leaf hashes of consecutive ``symbol_size``-byte symbols in ``buffer``, concatenated.

    Through the C helper when it is in use; otherwise this is a Python loop over the symbols,
    so it works on a memoryview and appends digests to one ``bytearray`` instead of building a
    list of small objects.
    """
    view = memoryview(buffer).cast("B")
    if symbol_size <= 0 or len(view) % symbol_size:
        raise ValueError("buffer length must be a positive multiple of the symbol size")
    if _NATIVE is not None:
        rows = np.frombuffer(view, dtype=np.uint8).reshape(-1, symbol_size)
        return leaf_hashes_of_rows(rows)
    output = bytearray()
    hasher = _LEAF_HASHER.copy()
    update, digest, reset = hasher.update, hasher.digest, hasher.reset
    for start in range(0, len(view), symbol_size):
        update(view[start : start + symbol_size])
        output += digest()
        reset()
    return bytes(output)


def leaf_hashes(symbols: Iterable[BytesLike]) -> bytes:
    """Leaf hashes of separate symbol buffers (for example the rows of a strided array),
    concatenated; like :func:`leaf_hashes_of_symbols` for symbols that are not adjacent."""
    output = bytearray()
    hasher = _LEAF_HASHER.copy()
    update, digest, reset = hasher.update, hasher.digest, hasher.reset
    for symbol in symbols:
        update(symbol)
        output += digest()
        reset()
    return bytes(output)


def tree_depth(leaf_count: int) -> int:
    """Number of levels above the leaves: the length of every proof in such a tree."""
    if leaf_count < 1:
        raise ValueError("a Merkle tree needs at least one leaf")
    return (leaf_count - 1).bit_length()


def _next_level(level: bytes) -> bytes:
    """Hash pairs of nodes of one level (32-byte hashes, concatenated) into the level above."""
    if (len(level) // HASH_LENGTH) % 2:
        level += EMPTY_NODE_HASH
    view = memoryview(level)
    output = bytearray()
    hasher = _INNER_HASHER.copy()
    update, digest, reset = hasher.update, hasher.digest, hasher.reset
    for start in range(0, len(level), 2 * HASH_LENGTH):
        update(view[start : start + 2 * HASH_LENGTH])
        output += digest()
        reset()
    return bytes(output)


def _check_level(leaf_hashes: BytesLike) -> bytes:
    level = bytes(leaf_hashes)
    if not level or len(level) % HASH_LENGTH:
        raise ValueError("leaf hashes must be a non-empty concatenation of 32-byte hashes")
    return level


def root_of_leaf_hashes(leaf_hashes: BytesLike) -> bytes:
    """Merkle root over concatenated 32-byte leaf hashes, without keeping the levels."""
    level = _check_level(leaf_hashes)
    while len(level) > HASH_LENGTH:
        level = _next_level(level)
    return level


def roots_of_trees(leaf_hashes: npt.NDArray[np.uint8]) -> list[bytes]:
    """Merkle roots of ``T`` trees of ``L`` leaves each, from a ``(T, L, 32)`` uint8 array.

    Same roots as :func:`root_of_leaf_hashes` tree by tree; with the C helper, each level of all
    the trees is one call (a level's inner nodes are keyed hashes of 64-byte inputs), so the 2n
    trees of a blob's metadata cost a few calls instead of ~2n^2 Python-level hashes.
    """
    if leaf_hashes.ndim != 3 or leaf_hashes.shape[2] != HASH_LENGTH or leaf_hashes.shape[1] < 1:
        raise ValueError("leaf hashes must have shape (trees, leaves >= 1, 32)")
    trees = leaf_hashes.shape[0]
    if _NATIVE is None or trees == 0:
        return [root_of_leaf_hashes(tree.tobytes()) for tree in leaf_hashes]
    level = np.ascontiguousarray(leaf_hashes, dtype=np.uint8)
    empty = np.frombuffer(EMPTY_NODE_HASH, dtype=np.uint8)
    while level.shape[1] > 1:
        if level.shape[1] % 2:
            padding = np.broadcast_to(empty, (trees, 1, HASH_LENGTH))
            level = np.concatenate((level, padding), axis=1)
        pairs = trees * level.shape[1] // 2
        addresses = level.ctypes.data + np.arange(pairs, dtype=np.uint64) * np.uint64(
            2 * HASH_LENGTH
        )
        digests = _native_call(_NATIVE, addresses, 2 * HASH_LENGTH, INNER_KEY)
        if digests is None:  # pragma: no cover - the helper was checked on this CPU at load
            return [root_of_leaf_hashes(tree.tobytes()) for tree in leaf_hashes]
        level = np.frombuffer(digests, dtype=np.uint8).reshape(trees, -1, HASH_LENGTH)
    return [tree.tobytes() for tree in level[:, 0, :]]


@dataclass(frozen=True, slots=True)
class MerkleProof:
    """The sibling hashes from a leaf up to the root, lowest level first.

    Iterating yields the siblings, so ``tuple(proof)`` is its wire form and
    ``MerkleProof(tuple(items))`` reads it back.
    """

    siblings: tuple[bytes, ...]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.siblings)

    def __len__(self) -> int:
        return len(self.siblings)


class MerkleTree:
    """A complete tree kept level by level so that proofs for any leaf are cheap."""

    __slots__ = ("_levels", "leaf_count")

    def __init__(self, leaf_hashes: BytesLike) -> None:
        """Build from concatenated 32-byte leaf hashes."""
        level = _check_level(leaf_hashes)
        self.leaf_count = len(level) // HASH_LENGTH
        levels = [level]
        while len(level) > HASH_LENGTH:
            level = _next_level(level)
            levels.append(level)
        self._levels = levels

    @classmethod
    def from_leaves(cls, leaves: Sequence[BytesLike]) -> MerkleTree:
        """Build from leaf contents (each hashed with the leaf key)."""
        return cls(b"".join(leaf_hash(leaf) for leaf in leaves))

    @property
    def root(self) -> bytes:
        return self._levels[-1]

    def leaf_hash(self, index: int) -> bytes:
        start = index * HASH_LENGTH
        return self._levels[0][start : start + HASH_LENGTH]

    def proof(self, index: int) -> MerkleProof:
        """Proof that leaf ``index`` is under :attr:`root`."""
        if not 0 <= index < self.leaf_count:
            raise IndexError(f"leaf {index} out of range 0..{self.leaf_count - 1}")
        siblings = []
        position = index
        for level in self._levels[:-1]:
            sibling = position ^ 1
            start = sibling * HASH_LENGTH
            if start >= len(level):
                siblings.append(EMPTY_NODE_HASH)
            else:
                siblings.append(level[start : start + HASH_LENGTH])
            position >>= 1
        return MerkleProof(tuple(siblings))


def proof_is_valid(
    root: bytes, leaf_count: int, index: int, leaf_digest: bytes, proof: MerkleProof
) -> bool:
    """Whether ``proof`` shows that ``leaf_digest`` is leaf ``index`` of a tree with ``root``.

    The proof must have exactly the depth of a tree with ``leaf_count`` leaves, and a sibling
    that falls on a padding position must be the padding node: so exactly one proof is valid
    for each leaf, and a proof for one position never passes for another.
    """
    if leaf_count < 1 or not 0 <= index < leaf_count:
        return False
    if len(proof.siblings) != tree_depth(leaf_count) or len(leaf_digest) != HASH_LENGTH:
        return False
    node = leaf_digest
    position = index
    width = leaf_count
    for sibling in proof.siblings:
        if len(sibling) != HASH_LENGTH:
            return False
        if position ^ 1 >= width and sibling != EMPTY_NODE_HASH:
            return False
        node = inner_hash(node, sibling) if position % 2 == 0 else inner_hash(sibling, node)
        position >>= 1
        width = (width + 1) // 2
    return hmac.compare_digest(node, root)


def verify_proof(
    root: bytes, leaf_count: int, index: int, leaf_digest: bytes, proof: MerkleProof
) -> None:
    """Raise :class:`VerificationError` unless :func:`proof_is_valid`."""
    if not proof_is_valid(root, leaf_count, index, leaf_digest, proof):
        raise VerificationError(f"merkle proof for leaf {index} does not match the root")
