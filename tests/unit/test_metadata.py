"""Commitments: metadata, blob id, sliver and symbol verification, inconsistency proofs, reads."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walrus_p2p.core import encoding, merkle
from walrus_p2p.core import metadata as meta
from walrus_p2p.core.encoding import EncodingConfig, SliverType
from walrus_p2p.core.metadata import Metadata, RecoverySymbol, SliverPairMetadata
from walrus_p2p.errors import EncodingError, InconsistentBlobError, VerificationError
from walrus_p2p.types import BlobId

PRIMARY, SECONDARY = SliverType.PRIMARY, SliverType.SECONDARY


def pattern(length: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(length)


def flip_bit(value: bytes, bit: int) -> bytes:
    changed = bytearray(value)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def metadata_of_matrix(matrix: np.ndarray, length: int) -> Metadata:
    """Independent commitment computation from a full expanded matrix (as a writer would)."""
    n = matrix.shape[0]
    row_roots = [merkle.MerkleTree.from_leaves(list(matrix[row])).root for row in range(n)]
    column_roots = [merkle.MerkleTree.from_leaves(list(matrix[:, col])).root for col in range(n)]
    pairs = tuple(SliverPairMetadata(row_roots[p], column_roots[n - 1 - p]) for p in range(n))
    return Metadata(meta.ENCODING_RED_STUFF, length, pairs)


class Written:
    """A blob as a writer encoded it, with helpers to act as peers."""

    def __init__(self, n: int, blob: bytes) -> None:
        self.config = EncodingConfig.for_shards(n)
        self.blob = blob
        result = meta.encode_blob(blob, self.config)
        self.encoded = result.encoded
        self.metadata = result.metadata
        self.blob_id = result.blob_id

    def sliver(self, sliver_type: SliverType, index: int) -> bytes:
        return bytes(self.encoded.sliver(sliver_type, index))

    def symbols_for(
        self, target_type: SliverType, target: int, helpers: list[int]
    ) -> list[RecoverySymbol]:
        return [
            meta.make_recovery_symbol(
                self.metadata,
                target_type.other,
                helper,
                self.sliver(target_type.other, helper),
                target,
            )
            for helper in helpers
        ]


@pytest.fixture(scope="module")
def written() -> Written:
    return Written(7, pattern(1000, seed=7))


# ------------------------------------------------------------------------------ metadata


@pytest.mark.parametrize(("n", "symbol_size"), [(4, 4), (7, 4), (10, 4), (256, 4), (4, 8192)])
def test_metadata_equals_an_independent_computation(n: int, symbol_size: int) -> None:
    """Large symbols take the multi-threaded hashing path; the reference is single-threaded."""
    config = EncodingConfig.for_shards(n)
    blob = pattern((symbol_size - 2) * config.kp * config.ks + 1, seed=n)
    result = meta.encode_blob(blob, config)
    matrix = encoding.expanded_matrix(config, blob)
    assert result.encoded.symbol_size == symbol_size
    assert result.metadata == metadata_of_matrix(matrix, len(blob))
    assert result.metadata.shards == n
    meta.verify_metadata(result.metadata, result.blob_id)
    assert meta.blob_id_of(blob, config) == result.blob_id


def test_blob_id_depends_on_every_input() -> None:
    config = EncodingConfig.for_shards(4)
    ids = {
        meta.blob_id_of(b"", config),
        meta.blob_id_of(b"\x00", config),
        meta.blob_id_of(b"\x00\x00", config),
        meta.blob_id_of(b"a", config),
        meta.blob_id_of(b"a", EncodingConfig.for_shards(5)),
    }
    assert len(ids) == 5  # zero padding never hides the length; n changes the id


def test_any_flipped_bit_in_metadata_or_blob_id_is_detected(written: Written) -> None:
    metadata, blob_id = written.metadata, written.blob_id
    for pair_index, pair in enumerate(metadata.hashes):
        for field in ("primary_hash", "secondary_hash"):
            for bit in range(256):
                changed_pair = dataclasses.replace(
                    pair, **{field: flip_bit(getattr(pair, field), bit)}
                )
                hashes = list(metadata.hashes)
                hashes[pair_index] = changed_pair
                changed = dataclasses.replace(metadata, hashes=tuple(hashes))
                with pytest.raises(VerificationError):
                    meta.verify_metadata(changed, blob_id)
    for bit in range(64):
        length = metadata.unencoded_length ^ (1 << bit)
        with pytest.raises(VerificationError):
            meta.verify_metadata(dataclasses.replace(metadata, unencoded_length=length), blob_id)
    for bit in range(8):
        encoding_type = metadata.encoding_type ^ (1 << bit)
        with pytest.raises(VerificationError):
            meta.verify_metadata(
                dataclasses.replace(metadata, encoding_type=encoding_type), blob_id
            )
    for bit in range(256):
        with pytest.raises(VerificationError):
            meta.verify_metadata(metadata, flip_bit(blob_id, bit))


def test_malformed_metadata_is_rejected(written: Written) -> None:
    metadata = written.metadata
    swapped = dataclasses.replace(metadata, hashes=metadata.hashes[::-1])
    with pytest.raises(VerificationError):
        meta.verify_metadata(swapped, written.blob_id)
    short_hash = SliverPairMetadata(b"\x00" * 31, metadata.hashes[0].secondary_hash)
    with pytest.raises(VerificationError):
        meta.check_metadata_form(
            dataclasses.replace(metadata, hashes=(short_hash, *metadata.hashes[1:]))
        )
    with pytest.raises(VerificationError):
        meta.check_metadata_form(dataclasses.replace(metadata, hashes=metadata.hashes[:3]))
    with pytest.raises(VerificationError):
        meta.check_metadata_form(dataclasses.replace(metadata, unencoded_length=-1))
    with pytest.raises(VerificationError):
        meta.verify_metadata(metadata, written.blob_id[:31])


# ------------------------------------------------------------------------------ slivers


def test_every_sliver_verifies_and_only_at_its_own_index(written: Written) -> None:
    n = written.config.n
    for sliver_type in (PRIMARY, SECONDARY):
        for index in range(n):
            sliver = written.sliver(sliver_type, index)
            meta.verify_sliver(written.metadata, sliver_type, index, sliver)
            with pytest.raises(VerificationError):
                meta.verify_sliver(written.metadata, sliver_type, (index + 1) % n, sliver)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_flipped_bit_in_any_sliver_is_detected(written: Written, data: st.DataObject) -> None:
    sliver_type = data.draw(st.sampled_from([PRIMARY, SECONDARY]))
    index = data.draw(st.integers(min_value=0, max_value=written.config.n - 1))
    sliver = written.sliver(sliver_type, index)
    bit = data.draw(st.integers(min_value=0, max_value=8 * len(sliver) - 1))
    with pytest.raises(VerificationError):
        meta.verify_sliver(written.metadata, sliver_type, index, flip_bit(sliver, bit))


def test_truncated_or_padded_sliver_is_rejected(written: Written) -> None:
    sliver = written.sliver(PRIMARY, 0)
    with pytest.raises(VerificationError):
        meta.verify_sliver(written.metadata, PRIMARY, 0, sliver[:-2])
    with pytest.raises(VerificationError):
        meta.verify_sliver(written.metadata, PRIMARY, 0, sliver + b"\x00\x00")


# ------------------------------------------------------------------------------ symbols


def test_recovery_symbols_verify_and_every_sliver_recovers(written: Written) -> None:
    config = written.config
    rng = random.Random(1)
    for target_type in (PRIMARY, SECONDARY):
        for target in range(config.n):
            helpers = rng.sample(range(config.n), config.source_symbols(target_type))
            symbols = written.symbols_for(target_type, target, helpers)
            for symbol in symbols:
                meta.verify_recovery_symbol(written.metadata, symbol)
            rebuilt = meta.recover_sliver(written.metadata, target_type, target, symbols)
            assert rebuilt == written.sliver(target_type, target)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_flipped_bit_in_a_symbol_or_its_proof_is_detected(
    written: Written, data: st.DataObject
) -> None:
    n = written.config.n
    target_type = data.draw(st.sampled_from([PRIMARY, SECONDARY]))
    target = data.draw(st.integers(min_value=0, max_value=n - 1))
    helper = data.draw(st.integers(min_value=0, max_value=n - 1))
    (symbol,) = written.symbols_for(target_type, target, [helper])
    meta.verify_recovery_symbol(written.metadata, symbol)
    part = data.draw(st.sampled_from(["symbol", "proof"]))
    if part == "symbol":
        bit = data.draw(st.integers(min_value=0, max_value=8 * len(symbol.symbol) - 1))
        changed = dataclasses.replace(symbol, symbol=flip_bit(symbol.symbol, bit))
    else:
        level = data.draw(st.integers(min_value=0, max_value=len(symbol.proof.siblings) - 1))
        bit = data.draw(st.integers(min_value=0, max_value=255))
        siblings = list(symbol.proof.siblings)
        siblings[level] = flip_bit(siblings[level], bit)
        changed = dataclasses.replace(symbol, proof=merkle.MerkleProof(tuple(siblings)))
    with pytest.raises(VerificationError):
        meta.verify_recovery_symbol(written.metadata, changed)
    with pytest.raises(VerificationError):
        meta.recover_sliver(written.metadata, target_type, target, [changed])


def test_symbol_with_wrong_indices_is_rejected(written: Written) -> None:
    (symbol,) = written.symbols_for(SECONDARY, 2, [1])
    for changed in (
        dataclasses.replace(symbol, target_index=3),
        dataclasses.replace(symbol, source_index=0),
        dataclasses.replace(symbol, target_type=PRIMARY),
        dataclasses.replace(symbol, target_index=7),
        dataclasses.replace(symbol, symbol=symbol.symbol + b"\x00\x00"),
    ):
        with pytest.raises(VerificationError):
            meta.verify_recovery_symbol(written.metadata, changed)


def test_recovery_needs_enough_distinct_helpers(written: Written) -> None:
    symbols = written.symbols_for(SECONDARY, 0, [1, 1, 2])  # kp = 3, but only 2 distinct helpers
    with pytest.raises(EncodingError):
        meta.recover_sliver(written.metadata, SECONDARY, 0, symbols)
    with pytest.raises(VerificationError):
        meta.recover_sliver(written.metadata, SECONDARY, 1, symbols)  # symbols for another target


def test_helper_with_a_rotten_sliver_refuses_to_help(written: Written) -> None:
    rotten = flip_bit(written.sliver(PRIMARY, 3), 5)
    with pytest.raises(VerificationError):
        meta.make_recovery_symbol(written.metadata, PRIMARY, 3, rotten, 0)


# ------------------------------------------------------------------------------ inconsistency


def lying_writer(
    n: int, liar: int, seed: int, liar_type: SliverType = PRIMARY
) -> tuple[EncodingConfig, np.ndarray, Metadata]:
    """A writer that replaces one sliver's row (primary) or column (secondary) by other data,
    re-expanded so that the row or column itself is a valid codeword, and then commits honestly
    to the resulting (no longer consistent) matrix."""
    config = EncodingConfig.for_shards(n)
    blob = pattern(config.kp * config.ks * 4, seed=seed)
    matrix = encoding.expanded_matrix(config, blob).copy()
    size = matrix.shape[2]
    fake = pattern(config.source_symbols(liar_type) * size, seed=seed + 1)
    expanded = encoding.expand_sliver(config, liar_type, fake, size)
    if liar_type is PRIMARY:
        matrix[liar] = expanded
    else:
        matrix[:, liar] = expanded
    return config, matrix, metadata_of_matrix(matrix, len(blob))


def symbols_from_matrix(
    metadata: Metadata, matrix: np.ndarray, target_type: SliverType, target: int, helpers: list[int]
) -> list[RecoverySymbol]:
    """Helpers answer from the slivers the writer gave them (their rows / columns of ``matrix``)."""
    config = metadata.config
    symbols = []
    for helper in helpers:
        if target_type is SECONDARY:  # helpers hold primary slivers (rows)
            held = matrix[helper, : config.ks].tobytes()
        else:
            held = matrix[: config.kp, helper].tobytes()
        symbols.append(meta.make_recovery_symbol(metadata, target_type.other, helper, held, target))
    return symbols


@pytest.mark.parametrize(
    ("n", "liar", "liar_type"),
    [
        (4, 3, PRIMARY),
        (7, 0, PRIMARY),
        (7, 5, PRIMARY),
        (10, 9, PRIMARY),
        (4, 0, SECONDARY),
        (7, 6, SECONDARY),
        (10, 2, SECONDARY),
    ],
)
def test_inconsistent_blob_yields_a_verifiable_inconsistency_proof(
    n: int, liar: int, liar_type: SliverType
) -> None:
    config, matrix, metadata = lying_writer(n, liar, seed=n + liar, liar_type=liar_type)
    blob_id = meta.compute_blob_id(metadata)
    rng = random.Random(n)
    # The liar's own row (column) is a codeword and verifies, and so does every row (column)
    # parallel to it, so those helpers can serve; a peer rebuilding any sliver of the other
    # type from them gets one that contradicts its committed (non-codeword) hash.
    target_type = liar_type.other
    target = rng.randrange(n)
    helpers = rng.sample(range(n), config.source_symbols(target_type))
    symbols = symbols_from_matrix(metadata, matrix, target_type, target, helpers)
    with pytest.raises(meta.InconsistentSliverError) as caught:
        meta.recover_sliver(metadata, target_type, target, symbols)
    proof = caught.value.proof
    assert isinstance(caught.value, InconsistentBlobError)
    meta.verify_inconsistency_proof(blob_id, metadata, proof)

    # Tampered proofs are rejected.
    with pytest.raises(VerificationError):
        meta.verify_inconsistency_proof(
            blob_id, metadata, dataclasses.replace(proof, symbols=proof.symbols[:-1])
        )
    first = proof.symbols[0]
    bad_symbol = dataclasses.replace(first, symbol=flip_bit(first.symbol, 0))
    with pytest.raises(VerificationError):
        meta.verify_inconsistency_proof(
            blob_id, metadata, dataclasses.replace(proof, symbols=(bad_symbol, *proof.symbols[1:]))
        )
    duplicate = (proof.symbols[0], *proof.symbols[:-1])
    with pytest.raises(VerificationError):
        meta.verify_inconsistency_proof(
            blob_id, metadata, dataclasses.replace(proof, symbols=duplicate)
        )
    with pytest.raises(VerificationError):
        meta.verify_inconsistency_proof(flip_bit(blob_id, 3), metadata, proof)


def test_consistent_blob_never_yields_an_inconsistency_proof(written: Written) -> None:
    config = written.config
    rng = random.Random(5)
    for target_type in (PRIMARY, SECONDARY):
        for target in range(config.n):
            for _ in range(3):
                helpers = rng.sample(range(config.n), config.source_symbols(target_type))
                symbols = written.symbols_for(target_type, target, helpers)
                meta.recover_sliver(written.metadata, target_type, target, symbols)  # no raise
                forged = meta.InconsistencyProof(target_type, target, tuple(symbols))
                with pytest.raises(VerificationError, match="no inconsistency"):
                    meta.verify_inconsistency_proof(written.blob_id, written.metadata, forged)


# ------------------------------------------------------------------------------ reads


def test_read_consistency_checks_pass_for_a_consistent_blob(written: Written) -> None:
    config = written.config
    primaries = {index: written.sliver(PRIMARY, index) for index in (6, 2, 4)}
    blob = meta.decode_blob(written.metadata, PRIMARY, primaries)
    assert blob == written.blob
    meta.check_read_consistency(written.metadata, blob)
    meta.check_read_consistency(written.metadata, blob, strict=True)
    secondaries = {index: written.sliver(SECONDARY, index) for index in range(2, 2 + config.ks)}
    assert meta.decode_blob(written.metadata, SECONDARY, secondaries, strict=True) == blob
    with pytest.raises(VerificationError):
        meta.check_read_consistency(written.metadata, bytes(blob) + b"\x00")


def test_read_check_on_several_threads_agrees(
    written: Written, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check spreads rows over threads for big rows; forced here on a small blob."""
    monkeypatch.setattr(meta, "_PARALLEL_CHECK_ROW_BYTES", 0)
    meta.check_read_consistency(written.metadata, written.blob)
    for position in (0, len(written.blob) - 1):
        with pytest.raises(InconsistentBlobError):
            meta.check_read_consistency(written.metadata, flip_bit(written.blob, 8 * position))


def test_read_check_hashes_only_rows_it_has_no_verified_sliver_for(
    written: Written, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = written.config
    hashed: list[bytes] = []
    real_root = meta.sliver_root

    def counting_root(*args: object, **kwargs: object) -> bytes:
        root = real_root(*args, **kwargs)  # type: ignore[arg-type]
        hashed.append(root)
        return root

    monkeypatch.setattr(meta, "sliver_root", counting_root)
    plain = {row: written.sliver(PRIMARY, row) for row in range(config.kp)}
    meta.check_read_consistency(written.metadata, written.blob, verified_primaries=plain)
    assert hashed == []  # every row equals its verified sliver: one memcmp each
    some = {row: plain[row] for row in range(1, config.kp)}
    meta.check_read_consistency(written.metadata, written.blob, verified_primaries=some)
    assert hashed == [written.metadata.sliver_hash(PRIMARY, 0)]
    # A row that differs from the sliver said to be verified is hashed, and so caught.
    for position in (0, len(written.blob) - 1):
        hashed.clear()
        damaged = flip_bit(written.blob, 8 * position)
        with pytest.raises(InconsistentBlobError):
            meta.check_read_consistency(written.metadata, damaged, verified_primaries=plain)
        assert len(hashed) == 1
    # Nonzero bytes in a sliver's padding (past the blob's end) send that row to hashing.
    row_length = config.ks * written.metadata.symbol_size
    last_row, used = divmod(len(written.blob), row_length)
    if used and last_row < config.kp:
        hashed.clear()
        padded = bytearray(plain[last_row])
        padded[-1] ^= 1
        meta.check_read_consistency(
            written.metadata, written.blob, verified_primaries={**plain, last_row: bytes(padded)}
        )
        assert hashed == [written.metadata.sliver_hash(PRIMARY, last_row)]
    # decode_blob passes its (verified) primary slivers on.
    hashed.clear()
    assert meta.decode_blob(written.metadata, PRIMARY, plain) == written.blob
    assert hashed == [written.metadata.sliver_hash(PRIMARY, row) for row in range(config.kp)]


def test_read_of_an_inconsistent_blob_is_reported() -> None:
    n, liar_row = 7, 6
    config, matrix, metadata = lying_writer(n, liar_row, seed=11, liar_type=PRIMARY)
    rows = {row: matrix[row, : config.ks].tobytes() for row in range(n)}
    # Reading with the liar's sliver: the decoded plain rows contradict the metadata.
    subset = {row: rows[row] for row in (liar_row, 1, 2)}
    with pytest.raises(InconsistentBlobError):
        meta.decode_blob(metadata, PRIMARY, subset)
    # Reading only plain slivers: the default check passes (the plain rows are committed)...
    plain = {row: rows[row] for row in range(config.kp)}
    blob = meta.decode_blob(metadata, PRIMARY, plain)
    # ... but strict mode re-encodes and finds the blob id differs, as every reader will.
    with pytest.raises(InconsistentBlobError):
        meta.check_read_consistency(metadata, blob, strict=True)


def test_decode_blob_rejects_a_corrupt_sliver(written: Written) -> None:
    primaries = {index: written.sliver(PRIMARY, index) for index in (0, 1, 2)}
    primaries[1] = flip_bit(primaries[1], 9)
    with pytest.raises(VerificationError):
        meta.decode_blob(written.metadata, PRIMARY, primaries)


def test_sliver_hash_lookup_follows_the_pairing(written: Written) -> None:
    metadata = written.metadata
    n = metadata.shards
    for pair in range(n):
        assert metadata.sliver_hash(PRIMARY, pair) == metadata.hashes[pair].primary_hash
        assert metadata.sliver_hash(SECONDARY, n - 1 - pair) == metadata.hashes[pair].secondary_hash
    with pytest.raises(VerificationError):
        metadata.sliver_hash(PRIMARY, n)


def test_blob_id_type_is_bytes_of_32(written: Written) -> None:
    blob_id: BlobId = written.blob_id
    assert isinstance(blob_id, bytes)
    assert len(blob_id) == 32


def test_batch_of_recovery_symbols_equals_single_ones(written: Written) -> None:
    sliver = written.sliver(SECONDARY, 4)
    targets = [0, 3, 6, 3]
    batch = meta.make_recovery_symbols(written.metadata, SECONDARY, 4, sliver, targets)
    singles = [
        meta.make_recovery_symbol(written.metadata, SECONDARY, 4, sliver, target)
        for target in targets
    ]
    assert batch == singles
    assert [symbol.target_type for symbol in batch] == [PRIMARY] * 4
    assert [symbol.symbol for symbol in batch] == [
        encoding.recovery_symbol(written.config, len(written.blob), SECONDARY, sliver, target)
        for target in targets
    ]
