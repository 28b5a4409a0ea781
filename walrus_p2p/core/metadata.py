"""Blob metadata and the blob id (docs/design.md §4).

Owner: the core pipeline. The data classes below are the shared vocabulary that wire.py
serialises; the functions that compute and verify them live here too.

Commitments, fixed for every peer (all hashes are keyed blake3, see :mod:`merkle`):

* sliver hash: Merkle root over the ``n`` symbols of the *expanded* row (primary sliver) or
  column (secondary sliver), so that any single symbol can be proven to its sliver hash;
* ``Metadata.hashes[p]`` belongs to sliver pair ``p``: the hash of primary sliver ``p`` and the
  hash of secondary sliver ``n-1-p``;
* pair hash: ``keyed_hash(PAIR_KEY, primary_hash || secondary_hash)``;
* blob id: ``keyed_hash(BLOB_ID_KEY, u8 encoding type || u64 little-endian length || root)``
  where ``root`` is the Merkle root with the ``n`` pair hashes as its leaves.

Everything received from others is verified before use: metadata against the blob id, a sliver
against its hash (re-expanded to ``n`` symbols), a recovery symbol against its Merkle proof. A
sliver rebuilt from verified symbols that contradicts its hash proves the writer encoded the blob
inconsistently; :class:`InconsistencyProof` carries that evidence so anyone can check it.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from walrus_p2p.core import isal, memory, merkle
from walrus_p2p.core.encoding import (
    ByteArray,
    BytesLike,
    EncodedBlob,
    EncodingConfig,
    ErasureCodec,
    SliverType,
    decode,
    encode,
    expand_sliver,
    pair_secondary_index,
    rebuild_sliver,
    source_rows,
)
from walrus_p2p.errors import EncodingError, InconsistentBlobError, VerificationError
from walrus_p2p.types import BLOB_ID_LENGTH, BlobId

ENCODING_RED_STUFF = 1
"""The only encoding type: RedStuff over Reed-Solomon (isa_l_rs_cauchy)."""

PAIR_KEY = merkle.derive_domain_key("sliver pair hash")
"""Key of a sliver pair hash (a leaf of the tree the blob id commits to)."""
BLOB_ID_KEY = merkle.derive_domain_key("blob id")
"""Key of the blob id hash."""


@dataclass(frozen=True, slots=True)
class SliverPairMetadata:
    """The two sliver hashes of sliver pair p: Merkle roots over n expanded symbols each."""

    primary_hash: bytes
    secondary_hash: bytes


@dataclass(frozen=True, slots=True)
class Metadata:
    """Encoding type, unencoded length and the n sliver pair hashes; the blob id commits to it."""

    encoding_type: int
    unencoded_length: int
    hashes: tuple[SliverPairMetadata, ...]

    @property
    def shards(self) -> int:
        return len(self.hashes)

    @property
    def config(self) -> EncodingConfig:
        """The encoding parameters (raises :class:`EncodingError` for an invalid shard count)."""
        return EncodingConfig.for_shards(self.shards)

    @property
    def symbol_size(self) -> int:
        return self.config.symbol_size(self.unencoded_length)

    def sliver_hash(self, sliver_type: SliverType, index: int) -> bytes:
        """The committed hash of primary sliver ``index`` or secondary sliver ``index``.

        Secondary sliver ``c`` belongs to pair ``n-1-c``, so its hash sits there.
        """
        if not 0 <= index < self.shards:
            raise VerificationError(f"sliver index {index} out of range 0..{self.shards - 1}")
        if sliver_type is SliverType.PRIMARY:
            return self.hashes[index].primary_hash
        return self.hashes[pair_secondary_index(index, self.shards)].secondary_hash


# --------------------------------------------------------------------------------------------
# Computing commitments
# --------------------------------------------------------------------------------------------


def pair_hash(pair: SliverPairMetadata) -> bytes:
    """The leaf of the blob id tree for one sliver pair."""
    return merkle.keyed_hash(PAIR_KEY, pair.primary_hash + pair.secondary_hash)


def check_metadata_form(metadata: Metadata) -> None:
    """Reject metadata that cannot be valid whatever the blob id: wrong type, sizes or counts.

    Run before anything else touches metadata from the network (it bounds ``n`` and the length,
    and makes sure every hash has 32 bytes).
    """
    if not isinstance(metadata.hashes, tuple):
        raise VerificationError("metadata hashes must be a tuple")
    if metadata.encoding_type != ENCODING_RED_STUFF or isinstance(metadata.encoding_type, bool):
        raise VerificationError(f"unknown encoding type {metadata.encoding_type!r}")
    try:
        metadata.config.check_length(metadata.unencoded_length)
    except EncodingError as error:
        raise VerificationError(f"invalid metadata: {error.message}") from error
    for pair in metadata.hashes:
        for value in (pair.primary_hash, pair.secondary_hash):
            if not isinstance(value, bytes) or len(value) != merkle.HASH_LENGTH:
                raise VerificationError("a sliver hash must be 32 bytes")


def compute_blob_id(metadata: Metadata) -> BlobId:
    """The blob id that commits to ``metadata`` (checks its form first)."""
    check_metadata_form(metadata)
    root = merkle.root_of_leaf_hashes(b"".join(pair_hash(pair) for pair in metadata.hashes))
    header = struct.pack("<BQ", metadata.encoding_type, metadata.unencoded_length)
    return BlobId(merkle.keyed_hash(BLOB_ID_KEY, header + root))


def compute_metadata(encoded: EncodedBlob) -> Metadata:
    """Metadata from an encoding made with ``hash_symbols=True``: 2n trees over shared leaves."""
    if encoded.symbol_hashes is None:
        raise EncodingError("the blob was encoded without symbol hashes")
    n = encoded.config.n
    hashes = encoded.symbol_hashes
    row_roots = merkle.roots_of_trees(hashes)
    column_roots = encoded.column_roots or merkle.roots_of_trees(hashes.transpose(1, 0, 2))
    pairs = tuple(
        SliverPairMetadata(row_roots[pair], column_roots[pair_secondary_index(pair, n)])
        for pair in range(n)
    )
    return Metadata(ENCODING_RED_STUFF, encoded.length, pairs)


@dataclass(frozen=True, slots=True, eq=False)
class EncodedBlobWithMetadata:
    """What a writer needs to store a blob: slivers, metadata and blob id."""

    encoded: EncodedBlob
    metadata: Metadata
    blob_id: BlobId


def encode_blob(
    blob: BytesLike, config: EncodingConfig, *, codec: ErasureCodec | None = None
) -> EncodedBlobWithMetadata:
    """Encode a blob and compute its metadata and blob id (the whole write-side pipeline)."""
    encoded = encode(blob, config, codec=codec)
    metadata = compute_metadata(encoded)
    return EncodedBlobWithMetadata(encoded, metadata, compute_blob_id(metadata))


def blob_id_of(
    blob: BytesLike, config: EncodingConfig, *, codec: ErasureCodec | None = None
) -> BlobId:
    """The blob id of ``blob`` for ``n`` shards (offline ``blob-id`` command, strict reads)."""
    return encode_blob(blob, config, codec=codec).blob_id


def sliver_root(
    config: EncodingConfig,
    sliver_type: SliverType,
    sliver: BytesLike,
    symbol_size: int,
    *,
    codec: ErasureCodec | None = None,
) -> bytes:
    """The hash a sliver must have: root over its ``n`` expanded symbols.

    The expansion is only hashed, so it goes to this thread's scratch array
    (:func:`memory.scratch`): checking a sliver does not fault in ``n * S`` fresh bytes."""
    out = memory.scratch(config.n * symbol_size)
    expanded = expand_sliver(config, sliver_type, sliver, symbol_size, codec=codec, out=out)
    return merkle.root_of_leaf_hashes(
        merkle.leaf_hashes_of_symbols(expanded.reshape(-1).data, symbol_size)
    )


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def verify_metadata(metadata: Metadata, blob_id: bytes) -> None:
    """Raise :class:`VerificationError` unless ``metadata`` is the one ``blob_id`` commits to."""
    if len(blob_id) != BLOB_ID_LENGTH:
        raise VerificationError(f"blob id must be {BLOB_ID_LENGTH} bytes")
    if not hmac.compare_digest(compute_blob_id(metadata), blob_id):
        raise VerificationError("metadata does not match the blob id")


def verify_sliver(
    metadata: Metadata,
    sliver_type: SliverType,
    index: int,
    sliver: BytesLike,
    *,
    codec: ErasureCodec | None = None,
) -> None:
    """Raise :class:`VerificationError` unless ``sliver`` hashes to its entry in ``metadata``.

    ``metadata`` must already be verified against the blob id.
    """
    config = metadata.config
    expected = metadata.sliver_hash(sliver_type, index)
    size = metadata.symbol_size
    if len(memoryview(sliver).cast("B")) != config.sliver_length(
        sliver_type, metadata.unencoded_length
    ):
        raise VerificationError(f"{sliver_type.value} sliver {index} has the wrong length")
    actual = sliver_root(config, sliver_type, sliver, size, codec=codec)
    if not hmac.compare_digest(actual, expected):
        raise VerificationError(f"{sliver_type.value} sliver {index} does not match its hash")


# --------------------------------------------------------------------------------------------
# Recovery symbols
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecoverySymbol:
    """One symbol a helper sends towards rebuilding sliver ``(target_type, target_index)``.

    The helper holds the sliver ``(target_type.other, source_index)``; the symbol is the one
    where that sliver crosses the target (``E[source, target]`` for a secondary target,
    ``E[target, source]`` for a primary target) and the proof is the path of leaf
    ``target_index`` in the tree of the helper's own sliver hash.
    """

    target_type: SliverType
    target_index: int
    source_index: int
    symbol: bytes
    proof: merkle.MerkleProof

    @property
    def source_type(self) -> SliverType:
        return self.target_type.other


def make_recovery_symbols(
    metadata: Metadata,
    source_type: SliverType,
    source_index: int,
    sliver: BytesLike,
    target_indices: Sequence[int],
    *,
    codec: ErasureCodec | None = None,
) -> list[RecoverySymbol]:
    """Recovery symbols from the helper's sliver for several targets (one expansion, one tree).

    The helper's sliver is checked against its own hash on the way: a helper whose disk has
    rotted must not send symbols that fail at the receiver.
    """
    config = metadata.config
    size = metadata.symbol_size
    for target in target_indices:
        config.check_index(target, "target sliver index")
    expanded = expand_sliver(config, source_type, sliver, size, codec=codec)
    tree = merkle.MerkleTree(merkle.leaf_hashes_of_symbols(expanded.reshape(-1).data, size))
    if not hmac.compare_digest(tree.root, metadata.sliver_hash(source_type, source_index)):
        raise VerificationError(f"own {source_type.value} sliver {source_index} does not match")
    return [
        RecoverySymbol(
            target_type=source_type.other,
            target_index=target,
            source_index=source_index,
            symbol=expanded[target].tobytes(),
            proof=tree.proof(target),
        )
        for target in target_indices
    ]


def make_recovery_symbol(
    metadata: Metadata,
    source_type: SliverType,
    source_index: int,
    sliver: BytesLike,
    target_index: int,
    *,
    codec: ErasureCodec | None = None,
) -> RecoverySymbol:
    """One recovery symbol with its proof (see :func:`make_recovery_symbols`)."""
    return make_recovery_symbols(
        metadata, source_type, source_index, sliver, [target_index], codec=codec
    )[0]


def verify_recovery_symbol(metadata: Metadata, recovery_symbol: RecoverySymbol) -> None:
    """Raise :class:`VerificationError` unless the symbol is proven against the helper's hash."""
    n = metadata.shards
    if not (0 <= recovery_symbol.target_index < n and 0 <= recovery_symbol.source_index < n):
        raise VerificationError("recovery symbol index out of range")
    if recovery_symbol.target_type not in (SliverType.PRIMARY, SliverType.SECONDARY):
        raise VerificationError("recovery symbol has an unknown sliver type")
    symbol = recovery_symbol.symbol
    if not isinstance(symbol, bytes) or len(symbol) != metadata.symbol_size:
        raise VerificationError("recovery symbol has the wrong size")
    root = metadata.sliver_hash(recovery_symbol.source_type, recovery_symbol.source_index)
    merkle.verify_proof(
        root,
        n,
        recovery_symbol.target_index,
        merkle.leaf_hash(recovery_symbol.symbol),
        recovery_symbol.proof,
    )


# --------------------------------------------------------------------------------------------
# Recovery and inconsistency proofs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InconsistencyProof:
    """Evidence that the writer encoded a blob inconsistently.

    Exactly as many verified symbols as the target sliver needs (``ks`` for a primary sliver,
    ``kp`` for a secondary one), from distinct helpers, that decode to a sliver whose hash is
    not the one in the metadata. Nobody can build one for a consistently encoded blob: proven
    symbols are the true symbols, and those decode to the true sliver.
    """

    target_type: SliverType
    target_index: int
    symbols: tuple[RecoverySymbol, ...]


class InconsistentSliverError(InconsistentBlobError):
    """A sliver rebuilt from verified symbols contradicts the metadata; ``proof`` shows it."""

    def __init__(self, message: str, *, proof: InconsistencyProof) -> None:
        super().__init__(message)
        self.proof = proof


def _select_symbols(
    metadata: Metadata,
    target_type: SliverType,
    target_index: int,
    symbols: Iterable[RecoverySymbol],
) -> tuple[RecoverySymbol, ...]:
    """Verify symbols for one target and keep the first one from each of enough helpers."""
    needed = metadata.config.source_symbols(target_type)
    chosen: dict[int, RecoverySymbol] = {}
    for recovery_symbol in symbols:
        if (recovery_symbol.target_type, recovery_symbol.target_index) != (
            target_type,
            target_index,
        ):
            raise VerificationError("recovery symbol is for another sliver")
        verify_recovery_symbol(metadata, recovery_symbol)
        chosen.setdefault(recovery_symbol.source_index, recovery_symbol)
        if len(chosen) == needed:
            break
    if len(chosen) < needed:
        raise EncodingError(f"need {needed} recovery symbols from distinct helpers")
    return tuple(chosen[index] for index in sorted(chosen))


def _rebuilt_root(
    metadata: Metadata,
    target_type: SliverType,
    symbols: Sequence[RecoverySymbol],
    codec: ErasureCodec | None,
) -> tuple[bytes, bytes]:
    """Decode the target sliver from the symbols; return it and its recomputed hash."""
    config = metadata.config
    length = metadata.unencoded_length
    sliver = rebuild_sliver(
        config,
        length,
        target_type,
        {symbol.source_index: symbol.symbol for symbol in symbols},
        codec=codec,
    )
    return sliver, sliver_root(config, target_type, sliver, metadata.symbol_size, codec=codec)


def recover_sliver(
    metadata: Metadata,
    target_type: SliverType,
    target_index: int,
    symbols: Iterable[RecoverySymbol],
    *,
    codec: ErasureCodec | None = None,
) -> bytes:
    """Rebuild a lost sliver from recovery symbols and check it against the metadata.

    ``metadata`` must already be verified against the blob id. Every symbol is verified; a
    rebuilt sliver that contradicts its hash raises :class:`InconsistentSliverError` carrying
    the :class:`InconsistencyProof` to sign and spread.
    """
    metadata.config.check_index(target_index, "target sliver index")
    chosen = _select_symbols(metadata, target_type, target_index, symbols)
    sliver, root = _rebuilt_root(metadata, target_type, chosen, codec)
    if not hmac.compare_digest(root, metadata.sliver_hash(target_type, target_index)):
        proof = InconsistencyProof(target_type, target_index, chosen)
        raise InconsistentSliverError(
            f"{target_type.value} sliver {target_index} rebuilt from verified symbols "
            "contradicts the metadata",
            proof=proof,
        )
    return sliver


def verify_inconsistency_proof(
    blob_id: bytes,
    metadata: Metadata,
    proof: InconsistencyProof,
    *,
    codec: ErasureCodec | None = None,
) -> None:
    """Raise :class:`VerificationError` unless ``proof`` shows the blob is inconsistent."""
    verify_metadata(metadata, blob_id)
    config = metadata.config
    needed = config.source_symbols(proof.target_type)
    if not 0 <= proof.target_index < config.n:
        raise VerificationError("inconsistency proof target out of range")
    if len(proof.symbols) != needed:
        raise VerificationError(f"inconsistency proof needs exactly {needed} symbols")
    if len({symbol.source_index for symbol in proof.symbols}) != needed:
        raise VerificationError("inconsistency proof symbols must come from distinct helpers")
    chosen = _select_symbols(metadata, proof.target_type, proof.target_index, proof.symbols)
    _, root = _rebuilt_root(metadata, proof.target_type, chosen, codec)
    if hmac.compare_digest(root, metadata.sliver_hash(proof.target_type, proof.target_index)):
        raise VerificationError("the symbols decode to the committed sliver: no inconsistency")


# --------------------------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------------------------


_PARALLEL_CHECK_ROW_BYTES = 4 << 20
"""Check rows on several threads only when an expanded row is this big. Smaller rows ran slower
in parallel here (1-16 MB blobs): the expanded row is a fresh array, which in a pool thread
glibc served with fresh pages each time, while the calling thread reused its heap."""


def check_read_consistency(
    metadata: Metadata,
    blob: BytesLike,
    *,
    strict: bool = False,
    codec: ErasureCodec | None = None,
    verified_primaries: Mapping[int, BytesLike] | None = None,
) -> None:
    """Check a decoded blob against ``metadata`` (already verified against the blob id).

    Default: the ``kp`` plain primary slivers (the padded blob's rows) must hash to the
    metadata, which is cheap and catches a reader that decoded an inconsistent blob from a
    lucky subset. ``strict``: re-encode the whole blob and recompute the blob id, so that every
    honest reader of an inconsistent blob reaches the same verdict whatever slivers it used.
    Raises :class:`InconsistentBlobError`.

    ``verified_primaries`` (index -> primary sliver already verified against ``metadata``)
    spares the default check the hashing of rows it already knows: a padded row byte-equal to
    its verified sliver has that sliver's hash, so one ``memcmp`` (and a zero test of the
    sliver's padding) replaces expanding and hashing it. A row that differs (nonzero padding
    in the sliver, say) is hashed as before.
    """
    config = metadata.config
    length = len(memoryview(blob).cast("B"))
    if length != metadata.unencoded_length:
        raise VerificationError("decoded blob has the wrong length")
    if strict:
        if encode_blob(blob, config, codec=codec).blob_id != compute_blob_id(metadata):
            raise InconsistentBlobError("re-encoding the blob gives a different blob id")
        return
    size = metadata.symbol_size

    def root(values: ByteArray) -> bytes:
        return sliver_root(config, SliverType.PRIMARY, values.data, size, codec=codec)

    known = verified_primaries or {}
    data = np.frombuffer(blob, dtype=np.uint8)
    row_length = config.ks * size

    def same_as_verified(row: int) -> bool:
        """Row ``row`` of the zero-padded blob equals its verified sliver (no padded copy)."""
        if row not in known:
            return False
        sliver = np.frombuffer(known[row], dtype=np.uint8)
        start = min(row * row_length, length)
        stop = min(start + row_length, length)
        return (
            sliver.size == row_length
            and memory.same_bytes(data[start:stop], sliver[: stop - start])
            and not sliver[stop - start :].any()
        )

    unchecked = [row for row in range(config.kp) if not same_as_verified(row)]
    if not unchecked:
        return
    rows = source_rows(config, blob, size)
    if config.n * size >= _PARALLEL_CHECK_ROW_BYTES and len(unchecked) > 1:
        # one row per task, over the codec threads
        roots = isal.parallel_map(root, [rows[row] for row in unchecked])
    else:
        roots = [root(rows[row]) for row in unchecked]
    for row, actual in zip(unchecked, roots, strict=True):
        if not hmac.compare_digest(actual, metadata.sliver_hash(SliverType.PRIMARY, row)):
            raise InconsistentBlobError(f"plain primary sliver {row} does not match the metadata")


def decode_blob(
    metadata: Metadata,
    sliver_type: SliverType,
    slivers: Mapping[int, BytesLike],
    *,
    strict: bool = False,
    verify_slivers: bool = True,
    codec: ErasureCodec | None = None,
) -> memoryview:
    """The read pipeline after fetching: verify slivers, decode, check consistency. The blob
    comes back as the decoder's read-only ``memoryview`` (:func:`encoding.decode`).

    ``metadata`` must already be verified against the blob id. Pass ``verify_slivers=False``
    only for slivers that were verified as they arrived.
    """
    if verify_slivers:
        for index, sliver in slivers.items():
            verify_sliver(metadata, sliver_type, index, sliver, codec=codec)
    blob = decode(metadata.config, metadata.unencoded_length, sliver_type, slivers, codec=codec)
    # Every sliver here is verified (above, or by the caller as it arrived).
    verified = slivers if sliver_type is SliverType.PRIMARY else None
    check_read_consistency(metadata, blob, strict=strict, codec=codec, verified_primaries=verified)
    return blob
