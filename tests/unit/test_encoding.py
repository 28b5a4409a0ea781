"""RedStuff encoding: layout, round trips, any-subset decoding and single-sliver recovery."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyeclib.ec_iface import ECDriver

from walrus_p2p.core import encoding, merkle
from walrus_p2p.core.encoding import EncodingConfig, PyeclibCodec, SliverType
from walrus_p2p.core.metadata import compute_metadata
from walrus_p2p.errors import EncodingError

SMALL_SHARDS = [4, 5, 7, 10, 13, 20]

CODECS: list[encoding.ErasureCodec] = [PyeclibCodec()]
"""The public-API reference backend, and the default one when it is another (ISA-L direct)."""
if encoding.default_codec().name != PyeclibCodec.name:
    CODECS.append(encoding.default_codec())
with_each_codec = pytest.mark.parametrize("codec", CODECS, ids=lambda codec: codec.name)


def pattern(length: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(length)


# ------------------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("n", "f", "kp", "ks"),
    [
        (4, 1, 2, 3),
        (5, 1, 3, 4),
        (7, 2, 3, 5),
        (10, 3, 4, 7),
        (100, 33, 34, 67),
        (256, 85, 86, 171),
    ],
)
def test_parameters_follow_from_n(n: int, f: int, kp: int, ks: int) -> None:
    config = EncodingConfig.for_shards(n)
    assert (config.n, config.f, config.kp, config.ks) == (n, f, kp, ks)


@pytest.mark.parametrize("n", [-1, 0, 3, 257, 1000])
def test_invalid_shard_counts_are_rejected(n: int) -> None:
    with pytest.raises(EncodingError):
        EncodingConfig.for_shards(n)


def test_non_integer_shard_count_is_rejected() -> None:
    with pytest.raises(EncodingError):
        EncodingConfig.for_shards(True)
    with pytest.raises(EncodingError):
        EncodingConfig.for_shards(4.0)  # type: ignore[arg-type]


def test_symbol_size_rounds_up_to_even_and_never_caps() -> None:
    config = EncodingConfig.for_shards(10)  # kp * ks = 28
    assert config.symbol_size(0) == 2
    assert config.symbol_size(1) == 2
    assert config.symbol_size(56) == 2
    assert config.symbol_size(57) == 4  # ceil(57/28) = 3 -> 4
    assert config.symbol_size(28 * 4) == 4
    assert config.symbol_size(28 * 4 + 1) == 6
    assert config.symbol_size(28 * 100_000) == 100_000  # beyond Walrus's 65534 cap
    assert config.encoded_length(1000) == 10 * (4 + 7) * 36
    assert config.symbol_size(2**64 - 1) % 2 == 0
    with pytest.raises(EncodingError):
        config.symbol_size(2**64)
    with pytest.raises(EncodingError):
        config.symbol_size(-1)


def test_pair_to_shard_is_a_rotation_by_the_blob_id() -> None:
    blob_id = bytes(range(32))
    for n in (4, 10, 256):
        shards = [encoding.pair_to_shard(blob_id, pair, n) for pair in range(n)]
        assert sorted(shards) == list(range(n))
        offset = int.from_bytes(blob_id, "big") % n
        assert shards[0] == offset
        for pair, shard in enumerate(shards):
            assert encoding.shard_to_pair(blob_id, shard, n) == pair
    assert encoding.pair_to_shard(b"\x00" * 31 + b"\x05", 0, 4) == 1


# ------------------------------------------------------------------------------ the codec


def test_pyeclib_payloads_are_our_rows_and_headers_are_reproduced() -> None:
    """The framing facts PyeclibCodec relies on, checked against pyeclib itself."""
    codec = PyeclibCodec()
    for k, m in [(2, 2), (34, 66), (171, 85)]:
        driver = ECDriver(k=k, m=m, ec_type="isa_l_rs_cauchy")
        for length in (1, 2, 17, 300):
            data = pattern(k * length, seed=k + length)
            fragments = driver.encode(data)
            _, template = codec._driver(k, k + m)
            for index, fragment in enumerate(fragments):
                assert len(fragment) == 80 + length
                assert fragment[:80] == codec._header(template, index, length, k)
                if index < k:
                    assert fragment[80:] == data[index * length : (index + 1) * length]
            rows = np.frombuffer(data, dtype=np.uint8).reshape(k, length)
            parity = codec.encode(k, k + m, rows)
            for index in range(m):
                assert parity[index].tobytes() == fragments[k + index][80:]


@pytest.mark.parametrize(("k", "total"), [(2, 4), (3, 7), (34, 100), (171, 256)])
def test_codec_decodes_and_reconstructs_from_any_k_fragments(k: int, total: int) -> None:
    codec = PyeclibCodec()
    rng = random.Random(total)
    data = np.frombuffer(pattern(k * 9, seed=k), dtype=np.uint8).reshape(k, 9)
    full = np.concatenate([data, codec.encode(k, total, data)])
    for _ in range(5):
        chosen = rng.sample(range(total), k)
        available = {index: full[index] for index in chosen}
        assert np.array_equal(codec.decode(k, total, available), data)
        wanted = rng.sample(range(total), 3)
        assert np.array_equal(codec.reconstruct(k, total, available, wanted), full[wanted])
    with pytest.raises(EncodingError):
        codec.decode(k, total, {index: full[index] for index in range(1, k)})


@with_each_codec
def test_codec_reconstructs_into_a_given_buffer(codec: encoding.ErasureCodec) -> None:
    k, total = 5, 9
    data = np.frombuffer(pattern(k * 11, seed=3), dtype=np.uint8).reshape(k, 11)
    full = np.concatenate([data, codec.encode(k, total, data)])
    available = {index: full[index] for index in (1, 3, 6, 7, 8)}
    wanted = [0, 1, 2, 4]
    out = np.zeros((len(wanted), 11), dtype=np.uint8)
    assert codec.reconstruct(k, total, available, wanted, out=out) is out
    assert np.array_equal(out, full[wanted])
    with pytest.raises(EncodingError):
        codec.reconstruct(k, total, available, wanted, out=np.zeros((3, 11), dtype=np.uint8))


def test_codec_rejects_bad_parameters_and_ragged_fragments() -> None:
    codec = PyeclibCodec()
    rows = np.zeros((3, 4), dtype=np.uint8)
    with pytest.raises(EncodingError):
        codec.encode(3, 257, rows)
    with pytest.raises(EncodingError):
        codec.encode(4, 6, rows)
    with pytest.raises(EncodingError):
        codec.encode(2, 4, [np.zeros(3, dtype=np.uint8), np.zeros(4, dtype=np.uint8)])
    with pytest.raises(EncodingError):
        codec.decode(2, 4, {0: np.zeros(3, dtype=np.uint8), 3: np.zeros(4, dtype=np.uint8)})


def test_default_codec_is_selectable() -> None:
    original = encoding.default_codec()
    replacement = PyeclibCodec()
    try:
        encoding.set_default_codec(replacement)
        assert encoding.default_codec() is replacement
        with pytest.raises(TypeError):
            encoding.set_default_codec(object())  # type: ignore[arg-type]
    finally:
        encoding.set_default_codec(original)


# ------------------------------------------------------------------------------ layout


def check_layout(config: EncodingConfig, blob: bytes, codec: encoding.ErasureCodec) -> None:
    """Slivers are exactly the slices of the expanded matrix the design names."""
    encoded = encoding.encode(blob, config, codec=codec)
    matrix = encoding.expanded_matrix(config, blob, codec=PyeclibCodec())
    size = encoded.symbol_size
    assert matrix.shape == (config.n, config.n, size)
    padded = blob + bytes(config.kp * config.ks * size - len(blob))
    assert matrix[: config.kp, : config.ks].tobytes() == padded  # row-major source
    for index in range(config.n):
        assert bytes(encoded.primary_sliver(index)) == matrix[index, : config.ks].tobytes()
        assert bytes(encoded.secondary_sliver(index)) == matrix[: config.kp, index].tobytes()
        pair = encoded.sliver_pair(index)
        assert pair.secondary == encoded.secondary_sliver(config.n - 1 - index)
    assert encoded.symbol_hashes is not None
    for row in range(config.n):
        for column in range(config.n):
            digest = merkle.leaf_hash(matrix[row, column].tobytes())
            assert encoded.symbol_hashes[row, column].tobytes() == digest


@with_each_codec
@pytest.mark.parametrize("n", [4, 7, 10])
@pytest.mark.parametrize("length", [0, 1, 100, 1000])
def test_slivers_are_slices_of_the_expanded_matrix(
    n: int, length: int, codec: encoding.ErasureCodec
) -> None:
    check_layout(EncodingConfig.for_shards(n), pattern(length, seed=n), codec)


@with_each_codec
def test_layout_at_256_shards(codec: encoding.ErasureCodec) -> None:
    check_layout(EncodingConfig.for_shards(256), pattern(5000), codec)


@with_each_codec
@pytest.mark.parametrize("n", [4, 7, 20, 256])
def test_rows_first_and_columns_first_expansion_agree(n: int, codec: encoding.ErasureCodec) -> None:
    config = EncodingConfig.for_shards(n)
    blob = pattern(3 * config.kp * config.ks + 5, seed=n)
    columns_first = encoding.expanded_matrix(config, blob, codec=codec)
    rows_first = encoding.expanded_matrix(config, blob, rows_first=True, codec=codec)
    assert np.array_equal(columns_first, rows_first)
    # the parity part is not trivially zero, so the comparison means something
    assert columns_first[config.kp :, config.ks :].any()


@with_each_codec
@pytest.mark.parametrize("n", [4, 7, 10, 20])
@pytest.mark.parametrize("extra", [0, 1, 37])
@pytest.mark.parametrize("native", [True, False], ids=["c-leaf-hasher", "blake3-package"])
def test_column_by_column_encoder_gives_the_same_bytes(
    n: int,
    extra: int,
    native: bool,
    codec: encoding.ErasureCodec,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Big symbols take the cache-blocked path (hash each column as it is made): same layout,
    same hashes, same blob id as the whole-matrix path, padded tail or not, with the C leaf
    hasher (where it is built and the CPU has AVX-512) and without it."""
    if not native:
        monkeypatch.setattr(merkle, "_NATIVE", None)
    config = EncodingConfig.for_shards(n)
    blob = pattern(config.kp * config.ks * 40 - extra, seed=n + extra)
    monkeypatch.setattr(encoding, "_BY_COLUMN_MIN_SYMBOL", 1 << 62)
    reference = encoding.encode(blob, config, codec=codec)
    monkeypatch.setattr(encoding, "_BY_COLUMN_MIN_SYMBOL", 2)
    monkeypatch.setattr(encoding, "_BY_COLUMN_MIN_LENGTH", 0)
    check_layout(config, blob, codec)
    by_columns = encoding.encode(blob, config, codec=codec)
    assert reference.symbol_hashes is not None and by_columns.symbol_hashes is not None
    assert np.array_equal(reference.symbol_hashes, by_columns.symbol_hashes)
    assert np.array_equal(reference.secondary_columns, by_columns.secondary_columns)
    for mine, theirs in zip(reference.primary_rows, by_columns.primary_rows, strict=True):
        assert np.array_equal(mine, theirs)
    assert reference.column_roots is None
    expected_roots = tuple(
        merkle.root_of_leaf_hashes(reference.symbol_hashes[:, column].tobytes())
        for column in range(n)
    )
    if merkle.native_leaf_hashing():  # roots are left to the metadata, all in a few calls
        assert by_columns.column_roots is None
    else:
        assert by_columns.column_roots == expected_roots
    assert compute_metadata(by_columns) == compute_metadata(reference)
    assert tuple(pair.secondary_hash for pair in compute_metadata(by_columns).hashes) == tuple(
        expected_roots[encoding.pair_secondary_index(pair, n)] for pair in range(n)
    )


def test_output_buffers_are_reused_only_when_nothing_refers_to_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encoding, "_BY_COLUMN_MIN_SYMBOL", 2)
    monkeypatch.setattr(encoding, "_BY_COLUMN_MIN_LENGTH", 0)
    monkeypatch.setattr(encoding, "_REUSE_MIN_BYTES", 1)
    monkeypatch.setattr(encoding, "_output_buffers", encoding._ReusedBuffer())
    config = EncodingConfig.for_shards(7)
    first_blob, second_blob = pattern(20_000, seed=1), pattern(20_000, seed=2)
    expected = bytes(encoding.encode(first_blob, config).secondary_sliver(6))
    expected_second = bytes(encoding.encode(second_blob, config).secondary_sliver(6))

    def buffer_of(encoded: encoding.EncodedBlob) -> int:
        base = encoded.secondary_columns.base
        assert base is not None
        return id(base)

    first = encoding.encode(first_blob, config)  # the previous result is gone: reused
    first_buffer = buffer_of(first)
    sliver = first.secondary_sliver(6)
    del first
    second = encoding.encode(second_blob, config)  # ``sliver`` still refers to the buffer
    assert buffer_of(second) != first_buffer
    assert bytes(sliver) == expected
    assert bytes(second.secondary_sliver(6)) == expected_second
    del sliver, second
    third = encoding.encode(second_blob, config)
    assert buffer_of(third) == first_buffer
    encoding.release_encoder_buffers()
    assert bytes(third.secondary_sliver(6)) == expected_second  # still valid after the release
    del third
    assert encoding._output_buffers._buffer is None


def test_encoding_does_not_copy_full_source_rows() -> None:
    config = EncodingConfig.for_shards(4)
    blob = bytearray(pattern(config.kp * config.ks * 8))
    encoded = encoding.encode(bytes(blob), config)
    assert all(not row.flags.owndata for row in encoded.primary_rows[: config.kp])


# ------------------------------------------------------------------------------ round trips


@settings(max_examples=30, deadline=None)
@given(
    n=st.sampled_from(SMALL_SHARDS),
    length=st.integers(min_value=0, max_value=3000),
    seed=st.integers(min_value=0, max_value=2**32),
    codec=st.sampled_from(CODECS),
)
def test_any_kp_primary_or_ks_secondary_slivers_decode(
    n: int, length: int, seed: int, codec: encoding.ErasureCodec
) -> None:
    config = EncodingConfig.for_shards(n)
    blob = pattern(length, seed)
    encoded = encoding.encode(blob, config, hash_symbols=False, codec=codec)
    rng = random.Random(seed)
    primaries = rng.sample(range(n), config.kp)
    secondaries = rng.sample(range(n), config.ks)
    got_primary = encoding.decode_primary(
        config, length, {index: encoded.primary_sliver(index) for index in primaries}, codec=codec
    )
    got_secondary = encoding.decode_secondary(
        config,
        length,
        {index: encoded.secondary_sliver(index) for index in secondaries},
        codec=codec,
    )
    assert got_primary == blob
    assert got_secondary == blob


def boundary_lengths(config: EncodingConfig) -> list[int]:
    cells = config.kp * config.ks
    lengths = {0, 1, 2, 3}
    for size in (2, 4, 6):
        for delta in (-1, 0, 1):
            lengths.add(cells * size + delta)
    return sorted(lengths)


@pytest.mark.parametrize("n", [4, 10, 256])
def test_round_trip_at_symbol_size_boundaries(n: int) -> None:
    config = EncodingConfig.for_shards(n)
    rng = random.Random(n)
    for length in boundary_lengths(config):
        blob = pattern(length, seed=length)
        encoded = encoding.encode(blob, config, hash_symbols=False)
        assert encoded.symbol_size == config.symbol_size(length)
        primaries = rng.sample(range(n), config.kp)
        secondaries = rng.sample(range(n), config.ks)
        assert (
            encoding.decode(
                config,
                length,
                SliverType.PRIMARY,
                {index: encoded.primary_sliver(index) for index in primaries},
            )
            == blob
        )
        assert (
            encoding.decode(
                config,
                length,
                SliverType.SECONDARY,
                {index: encoded.secondary_sliver(index) for index in secondaries},
            )
            == blob
        )


def test_parity_only_primary_slivers_decode() -> None:
    config = EncodingConfig.for_shards(10)
    blob = pattern(777)
    encoded = encoding.encode(blob, config, hash_symbols=False)
    parity = {index: encoded.primary_sliver(index) for index in range(config.n - config.kp, 10)}
    assert encoding.decode_primary(config, len(blob), parity) == blob


@with_each_codec
@pytest.mark.parametrize("n", [4, 7, 10])
def test_decoding_straight_into_an_owned_buffer(
    n: int, codec: encoding.ErasureCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big results are written straight into an array behind the returned read-only view (here
    at any size)."""
    monkeypatch.setattr(encoding, "_MIN_OWNED_RESULT", 1)
    config = EncodingConfig.for_shards(n)
    rng = random.Random(n)
    for length in boundary_lengths(config):
        blob = pattern(length, seed=length)
        encoded = encoding.encode(blob, config, hash_symbols=False, codec=codec)
        for primaries in (range(config.kp), rng.sample(range(n), config.kp)):
            slivers = {index: encoded.primary_sliver(index) for index in primaries}
            decoded = encoding.decode_primary(config, length, slivers, codec=codec)
            assert type(decoded) is memoryview and decoded.readonly and decoded == blob
        secondaries = rng.sample(range(n), config.ks)
        slivers = {index: encoded.secondary_sliver(index) for index in secondaries}
        decoded = encoding.decode_secondary(config, length, slivers, codec=codec)
        assert type(decoded) is memoryview and decoded.readonly and decoded == blob


def test_a_big_blob_round_trips_into_a_read_only_view() -> None:
    """Big enough for the owned huge-page result and the parallel copy into the secondary
    slivers (both only above a few MB). The view behaves like ``bytes``: equal, read-only,
    one C-contiguous byte buffer."""
    config = EncodingConfig.for_shards(4)
    length = encoding._MIN_OWNED_RESULT + 12_345
    blob = pattern(length, seed=4)
    encoded = encoding.encode(blob, config, hash_symbols=False)
    primary = {index: encoded.primary_sliver(index) for index in (1, 3)}
    decoded = encoding.decode_primary(config, length, primary)
    assert type(decoded) is memoryview and decoded == blob
    assert decoded.readonly and decoded.format == "B" and decoded.c_contiguous
    with pytest.raises(TypeError):
        decoded[0] = 1
    secondary = {index: encoded.secondary_sliver(index) for index in (0, 1, 2)}
    assert encoding.decode_secondary(config, length, secondary) == blob


def test_decoding_rejects_too_few_or_malformed_slivers() -> None:
    config = EncodingConfig.for_shards(7)
    blob = pattern(500)
    encoded = encoding.encode(blob, config, hash_symbols=False)
    slivers = {index: encoded.primary_sliver(index) for index in range(config.kp)}
    with pytest.raises(EncodingError):
        encoding.decode_primary(config, len(blob), dict(list(slivers.items())[:-1]))
    with pytest.raises(EncodingError):
        encoding.decode_primary(config, len(blob), {**slivers, 0: bytes(3)})
    with pytest.raises(EncodingError):
        encoding.decode_primary(config, len(blob), {**slivers, 7: encoded.primary_sliver(0)})
    with pytest.raises(EncodingError):
        encoding.decode_secondary(config, len(blob), slivers)


# ------------------------------------------------------------------------------ recovery


@with_each_codec
@pytest.mark.parametrize("n", [4, 7, 10])
def test_every_sliver_rebuilds_exactly_from_symbols(n: int, codec: encoding.ErasureCodec) -> None:
    config = EncodingConfig.for_shards(n)
    blob = pattern(config.kp * config.ks * 6 - 3, seed=n)
    length = len(blob)
    encoded = encoding.encode(blob, config, hash_symbols=False, codec=codec)
    rng = random.Random(n)
    for target in range(n):
        # lost primary sliver `target`: ks helpers holding secondary slivers
        helpers = rng.sample(range(n), config.ks)
        symbols = {
            column: encoding.recovery_symbol(
                config,
                length,
                SliverType.SECONDARY,
                encoded.secondary_sliver(column),
                target,
                codec=codec,
            )
            for column in helpers
        }
        rebuilt = encoding.rebuild_sliver(config, length, SliverType.PRIMARY, symbols, codec=codec)
        assert rebuilt == bytes(encoded.primary_sliver(target))
        # lost secondary sliver `target`: kp helpers holding primary slivers
        helpers = rng.sample(range(n), config.kp)
        symbols = {
            row: encoding.recovery_symbol(
                config, length, SliverType.PRIMARY, encoded.primary_sliver(row), target, codec=codec
            )
            for row in helpers
        }
        rebuilt = encoding.rebuild_sliver(
            config, length, SliverType.SECONDARY, symbols, codec=codec
        )
        assert rebuilt == bytes(encoded.secondary_sliver(target))


def test_recovery_symbols_are_the_matrix_cells() -> None:
    config = EncodingConfig.for_shards(7)
    blob = pattern(200)
    encoded = encoding.encode(blob, config, hash_symbols=False)
    matrix = encoding.expanded_matrix(config, blob)
    for row in range(7):
        for column in range(7):
            cell = matrix[row, column].tobytes()
            from_row = encoding.recovery_symbol(
                config, len(blob), SliverType.PRIMARY, encoded.primary_sliver(row), column
            )
            from_column = encoding.recovery_symbol(
                config, len(blob), SliverType.SECONDARY, encoded.secondary_sliver(column), row
            )
            assert from_row == cell
            assert from_column == cell


def test_expand_sliver_rejects_wrong_length() -> None:
    config = EncodingConfig.for_shards(4)
    with pytest.raises(EncodingError):
        encoding.expand_sliver(config, SliverType.PRIMARY, bytes(7), 2)
    with pytest.raises(EncodingError):
        encoding.recovery_symbol(config, 10, SliverType.SECONDARY, bytes(5), 1)
    with pytest.raises(EncodingError):
        encoding.recovery_symbol(config, 10, SliverType.SECONDARY, bytes(4), 4)


def test_header_layout_constants() -> None:
    """Our header patch writes the fields where liberasurecode reads them."""
    codec = PyeclibCodec()
    _, template = codec._driver(3, 5)
    header = codec._header(template, 4, 10, 3)
    assert struct.unpack_from("<IIIQ", header, 0) == (4, 10, 0, 30)
