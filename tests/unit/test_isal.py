"""The direct ISA-L codec gives byte-identical results to pyeclib's public ``isa_l_rs_cauchy``.

pyeclib is the reference: every fragment payload (after its 80-byte header) must equal what
:class:`ReedSolomon` computes, for encode, decode and single-fragment computation, across code
sizes up to k + m = 256 and lengths that are not multiples of any SIMD width.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from pyeclib.ec_iface import ECDriver

from walrus_p2p.core import encoding, isal, merkle, metadata
from walrus_p2p.errors import EncodingError

HEADER = 80  # bytes of liberasurecode header in front of each pyeclib fragment

# (k, m): tiny, RedStuff's n=4/10/100/256 shapes (kp→n and ks→n), and k+m = 256 at the extremes.
CODES = [
    (1, 1),
    (2, 2),
    (3, 1),
    (4, 6),
    (7, 3),
    (34, 66),
    (67, 33),
    (86, 170),
    (171, 85),
    (128, 128),
    (1, 255),
    (255, 1),
    (200, 56),
]
LENGTHS = [1, 63, 64, 65, 1000, 4099]


@pytest.fixture(autouse=True)
def _library_or_skip() -> Iterator[None]:
    try:
        isal.load_library()
    except isal.IsalUnavailableError as error:  # pragma: no cover - depends on the machine
        pytest.skip(f"ISA-L not loadable here: {error}")
    yield


def _reference(k: int, m: int, data: np.ndarray) -> tuple[ECDriver, list[bytes]]:
    driver = ECDriver(k=k, m=m, ec_type="isa_l_rs_cauchy")
    fragments = driver.encode(data.tobytes())
    assert [len(fragment) - HEADER for fragment in fragments] == [data.shape[1]] * (k + m)
    return driver, fragments


@pytest.mark.parametrize(("k", "m"), CODES)
def test_encode_matches_pyeclib(k: int, m: int) -> None:
    rng = np.random.default_rng(k * 1000 + m)
    code = isal.ReedSolomon(k, m)
    for length in LENGTHS:
        data = rng.integers(0, 256, (k, length), dtype=np.uint8)
        _, fragments = _reference(k, m, data)
        parity = code.encode(data)
        assert parity.shape == (m, length)
        for i in range(k):
            assert fragments[i][HEADER:] == data[i].tobytes()
        for i in range(m):
            assert parity[i].tobytes() == fragments[k + i][HEADER:], (k, m, length, i)


@pytest.mark.parametrize(("k", "m"), CODES)
def test_decode_matches_pyeclib(k: int, m: int) -> None:
    rng = np.random.default_rng(k * 7 + m)
    code = isal.ReedSolomon(k, m)
    data = rng.integers(0, 256, (k, 777), dtype=np.uint8)
    driver, fragments = _reference(k, m, data)
    codeword = np.concatenate([data, code.encode(data)])
    for _ in range(4):
        subset = sorted(rng.choice(k + m, size=k, replace=False).tolist())
        decoded = code.decode({i: codeword[i] for i in subset})
        assert decoded.tobytes() == data.tobytes()
        assert driver.decode([fragments[i] for i in subset]) == decoded.tobytes()
        # Rebuild some fragments that were not given, data and parity alike.
        absent = [i for i in range(k + m) if i not in subset]
        wanted = rng.choice(absent, size=min(5, len(absent)), replace=False).tolist()
        if wanted:
            rebuilt = code.decode({i: codeword[i] for i in subset}, wanted)
            for row, index in zip(rebuilt, wanted, strict=True):
                assert row.tobytes() == fragments[index][HEADER:]
            reference = driver.reconstruct([fragments[i] for i in subset], wanted)
            assert sorted(fragment[HEADER:] for fragment in reference) == sorted(
                row.tobytes() for row in rebuilt
            )


@pytest.mark.parametrize(("k", "m"), CODES)
def test_single_fragment_matches_pyeclib(k: int, m: int) -> None:
    rng = np.random.default_rng(k + 31 * m)
    code = isal.ReedSolomon(k, m)
    data = rng.integers(0, 256, (k, 333), dtype=np.uint8)
    _, fragments = _reference(k, m, data)
    indexes = {0, k - 1, k, k + m - 1, *rng.integers(0, k + m, 4).tolist()}
    for index in sorted(indexes):
        assert code.fragment(index, data).tobytes() == fragments[index][HEADER:]


def test_batched_and_strided_fragments() -> None:
    """A batch of codewords in one call equals one call per codeword, whatever the row stride."""
    rng = np.random.default_rng(5)
    k, m, batch, length = 13, 7, 9, 3001
    code = isal.ReedSolomon(k, m)
    # Fragment j of codeword b is matrix[b, j]: the layout of a RedStuff row expansion.
    matrix = np.zeros((batch, k + m, length), dtype=np.uint8)
    matrix[:, :k] = rng.integers(0, 256, (batch, k, length), dtype=np.uint8)
    code.encode(matrix[:, :k], out=matrix[:, k:])
    for b in range(batch):
        assert np.array_equal(matrix[b, k:], code.encode(np.ascontiguousarray(matrix[b, :k])))
        assert np.array_equal(code.fragment(k + 3, matrix[b, :k]), matrix[b, k + 3])
    rebuilt = code.decode({i: matrix[:, i] for i in range(m, k + m)}, wanted=[0, 1, k + 1])
    assert rebuilt.shape == (batch, 3, length)
    assert np.array_equal(rebuilt, matrix[:, [0, 1, k + 1]])
    single = code.fragment(k + 2, matrix[:, :k])
    assert np.array_equal(single, matrix[:, k + 2])


def test_large_buffers_use_threads_and_agree() -> None:
    """Big enough to be cut into blocks and split over threads: still equals one thread."""
    rng = np.random.default_rng(11)
    k, m, length = 10, 20, 300_001
    data = rng.integers(0, 256, (k, length), dtype=np.uint8)
    single = isal.ReedSolomon(k, m, threads=1).encode(data)
    double = isal.ReedSolomon(k, m, threads=2).encode(data)
    assert np.array_equal(single, double)
    _, fragments = _reference(k, m, data)
    assert double[m - 1].tobytes() == fragments[k + m - 1][HEADER:]


def test_output_buffers_are_reused() -> None:
    code = isal.ReedSolomon(4, 2)
    data = np.arange(4 * 100, dtype=np.uint8).reshape(4, 100)
    out = np.full((2, 100), 0xAA, dtype=np.uint8)
    assert code.encode(data, out=out) is out
    assert np.array_equal(out, code.encode(data))


def test_gf_arithmetic_matches_library() -> None:
    library = isal.load_library()
    rng = np.random.default_rng(3)
    left = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    right = rng.integers(0, 256, (6, 4), dtype=np.uint8)
    expected = np.zeros((5, 4), dtype=np.uint8)
    for i in range(5):
        for j in range(4):
            value = 0
            for t in range(6):
                value ^= library.gf_mul(int(left[i, t]), int(right[t, j]))
            expected[i, j] = value
    assert np.array_equal(isal.gf_matmul(left, right), expected)


def test_rejects_bad_input() -> None:
    with pytest.raises(EncodingError):
        isal.ReedSolomon(200, 57)
    with pytest.raises(EncodingError):
        isal.ReedSolomon(0, 3)
    code = isal.ReedSolomon(3, 2)
    data = np.zeros((3, 10), dtype=np.uint8)
    with pytest.raises(EncodingError):
        code.decode({0: data[0], 4: data[1]})
    with pytest.raises(EncodingError):
        code.decode({0: data[0], 1: data[1], 9: data[2]})
    with pytest.raises(EncodingError):
        code.encode(np.zeros((2, 10), dtype=np.uint8))
    with pytest.raises(EncodingError):
        code.fragment(5, data)
    with pytest.raises(EncodingError):
        code.encode(data, out=np.zeros((2, 11), dtype=np.uint8))
    shared = np.zeros((5, 10), dtype=np.uint8)
    with pytest.raises(EncodingError):  # parity written over the data it is computed from
        code.encode(shared[:3], out=shared[2:4])
    code.encode(shared[:3], out=shared[3:])  # adjacent, not overlapping: fine
    with pytest.raises(EncodingError):
        code.encode(np.zeros((3, 10), dtype=np.int16))


def test_unavailable_library_raises_catchable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isal, "_library", None)
    monkeypatch.setattr(isal, "_library_error", None)
    monkeypatch.setenv("WALRUS_P2P_ISAL", "/nonexistent/libisal.so.2")
    with pytest.raises(isal.IsalUnavailableError):
        isal.ReedSolomon(3, 2)
    with pytest.raises(EncodingError):  # the error is part of the package's tree
        isal.load_library()
    monkeypatch.setattr(isal, "_library_error", None)
    monkeypatch.setenv("WALRUS_P2P_ISAL", "off")
    with pytest.raises(isal.IsalUnavailableError):
        isal.load_library()


# ------------------------------------------------------------------------------ through RedStuff


def _both_codecs() -> tuple[isal.IsalCodec, encoding.PyeclibCodec]:
    return isal.IsalCodec(), encoding.PyeclibCodec()


@pytest.mark.parametrize(
    ("n", "length"),
    [(4, 0), (4, 1001), (10, 140_000), (20, 9_999), (100, 50_001), (256, 70_000)],
)
def test_redstuff_is_identical_through_both_backends(n: int, length: int) -> None:
    """Slivers, symbol hashes, metadata and blob id do not depend on the backend.

    (10, 140_000) has 5 KB symbols, so the encoder hashes on several threads.
    """
    fast, public = _both_codecs()
    config = encoding.EncodingConfig.for_shards(n)
    blob = np.random.default_rng(n).integers(0, 256, length, dtype=np.uint8).tobytes()
    mine = metadata.encode_blob(blob, config, codec=fast)
    reference = metadata.encode_blob(blob, config, codec=public)
    assert mine.blob_id == reference.blob_id
    assert mine.metadata == reference.metadata
    assert mine.encoded.symbol_hashes is not None and reference.encoded.symbol_hashes is not None
    assert np.array_equal(mine.encoded.symbol_hashes, reference.encoded.symbol_hashes)
    for index in range(n):
        assert mine.encoded.primary_sliver(index) == reference.encoded.primary_sliver(index)
        assert mine.encoded.secondary_sliver(index) == reference.encoded.secondary_sliver(index)
    # The encoder's shortcut for E[kp:n, ks:n] (columns, not rows) matches the full matrix.
    matrix = encoding.expanded_matrix(config, blob, codec=public)
    assert np.array_equal(
        mine.encoded.symbol_hashes[n - 1, n - 1],
        np.frombuffer(merkle.leaf_hash(matrix[n - 1, n - 1].tobytes()), dtype=np.uint8),
    )


@pytest.mark.parametrize("n", [7, 20, 100])
def test_redstuff_decode_and_recovery_agree_across_backends(n: int) -> None:
    fast, public = _both_codecs()
    config = encoding.EncodingConfig.for_shards(n)
    length = config.kp * config.ks * 6 + 3
    blob = np.random.default_rng(n + 1).integers(0, 256, length, dtype=np.uint8).tobytes()
    encoded = encoding.encode(blob, config, codec=fast)
    rng = np.random.default_rng(n + 2)
    primaries = rng.choice(n, size=config.kp, replace=False).tolist()
    secondaries = rng.choice(n, size=config.ks, replace=False).tolist()
    primary = {i: encoded.primary_sliver(i) for i in primaries}
    secondary = {i: encoded.secondary_sliver(i) for i in secondaries}
    for codec in (fast, public):
        assert encoding.decode_primary(config, length, primary, codec=codec) == blob
        assert encoding.decode_secondary(config, length, secondary, codec=codec) == blob
    # Every recovery symbol a helper can send, both ways, is the same through both backends.
    target = n - 1
    for source in range(n):
        for sliver_type, sliver in (
            (encoding.SliverType.PRIMARY, encoded.primary_sliver(source)),
            (encoding.SliverType.SECONDARY, encoded.secondary_sliver(source)),
        ):
            assert encoding.recovery_symbol(
                config, length, sliver_type, sliver, target, codec=fast
            ) == encoding.recovery_symbol(config, length, sliver_type, sliver, target, codec=public)
    # A lost primary sliver rebuilt from ks symbols of its row, chosen at random.
    size = encoded.symbol_size
    row = encoding.expand_sliver(
        config, encoding.SliverType.PRIMARY, encoded.primary_sliver(target), size, codec=public
    )
    columns = rng.choice(n, size=config.ks, replace=False).tolist()
    symbols = {c: row[c].tobytes() for c in columns}
    for codec in (fast, public):
        rebuilt = encoding.rebuild_sliver(
            config, length, encoding.SliverType.PRIMARY, symbols, codec=codec
        )
        assert rebuilt == encoded.primary_sliver(target)


def test_isal_is_the_default_codec_when_it_loads() -> None:
    assert encoding.default_codec().name == "isal"
    assert isinstance(isal.IsalCodec(), encoding.ErasureCodec)


def test_parallel_map_keeps_order_and_nests() -> None:
    code = isal.ReedSolomon(4, 4, threads=2)
    data = np.random.default_rng(9).integers(0, 256, (8, 4, 300_000), dtype=np.uint8)

    def parity(index: int) -> np.ndarray:
        # A codec call inside a parallel_map task runs inline (no nested pool use).
        return code.encode(data[index])

    results = isal.parallel_map(parity, list(range(8)))
    for index, result in enumerate(results):
        assert np.array_equal(result, code.encode(data[index]))
    assert isal.parallel_map(lambda x: x * 2, [3]) == [6]
    assert isal.parallel_map(lambda x: x * 2, []) == []


def test_codec_works_in_a_forked_child() -> None:
    """The thread pool of the parent is not inherited half-alive by a forked child."""
    import multiprocessing

    isal.parallel_map(lambda x: x, [1, 2, 3])  # make sure the parent's pool exists
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        assert pool.apply(_encode_in_child) == _encode_in_child()


def _encode_in_child() -> bytes:
    data = np.arange(4 * 400_000, dtype=np.uint32).astype(np.uint8).reshape(4, 400_000)
    result = isal.parallel_map(lambda rows: isal.ReedSolomon(4, 2).encode(rows), [data, data])
    return b"".join(parity.tobytes()[:64] for parity in result)


def test_concurrent_encodes_from_many_threads_agree() -> None:
    """Callers on several threads share the codec pool without deadlock or mixed-up output."""
    from concurrent.futures import ThreadPoolExecutor

    config = encoding.EncodingConfig.for_shards(10)
    blobs = [
        np.random.default_rng(seed).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
        for seed in range(6)
    ]
    expected = [metadata.encode_blob(blob, config).blob_id for blob in blobs]
    with ThreadPoolExecutor(4) as callers:
        results = list(callers.map(lambda blob: metadata.encode_blob(blob, config).blob_id, blobs))
    assert results == expected
    assert len(set(results)) == len(blobs)


@pytest.mark.parametrize(("k", "m"), [(3, 2), (34, 66), (171, 85), (1, 255), (255, 1)])
def test_generator_is_the_cauchy_matrix_pyeclib_uses(k: int, m: int) -> None:
    """Independently of the ISA-L kernels: numpy GF(2^8) math on the matrix gives pyeclib parity."""
    matrix = isal.cauchy_matrix(k, k + m)
    assert np.array_equal(isal.ReedSolomon(k, m).matrix, matrix)
    data = np.random.default_rng(k).integers(0, 256, (k, 40), dtype=np.uint8)
    _, fragments = _reference(k, m, data)
    parity = isal.gf_matmul(matrix[k:], data)
    assert [row.tobytes() for row in parity] == [f[HEADER:] for f in fragments[k:]]


@pytest.mark.parametrize(("k", "m", "batch", "length"), [(34, 66, 1, 100_003), (13, 7, 5, 30_001)])
def test_c_block_loop_gives_the_bytes_of_the_python_loop(
    k: int, m: int, batch: int, length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The helper's block loop (one C call per run of blocks) and the Python loop (one kernel
    call per block) write the same parity, pyeclib's, over many blocks, a short last block and
    batched codewords."""
    library = isal.load_library()
    if isal._block_driver(library) is None:
        pytest.skip("the C helper is not built here")
    rng = np.random.default_rng(k + m + batch)
    data = rng.integers(0, 256, (batch, k, length), dtype=np.uint8)
    code = isal.ReedSolomon(k, m, threads=1)
    with_loop = code.encode(data)
    monkeypatch.setitem(isal._drivers, library.path, None)
    assert isal._block_driver(library) is None
    assert np.array_equal(code.encode(data), with_loop)
    _, fragments = _reference(k, m, data[-1])
    assert with_loop[-1, m - 1].tobytes() == fragments[k + m - 1][HEADER:]


def test_c_block_loop_refuses_bad_arguments() -> None:
    library = isal.load_library()
    driver = isal._block_driver(library)
    if driver is None:
        pytest.skip("the C helper is not built here")
    for k, rows, block in [(0, 1, 64), (1, 0, 64), (257, 1, 64), (1, 1, 0)]:
        with pytest.raises(EncodingError):
            driver.run(0, k, rows, 0, 0, 0, 64, block)
    with pytest.raises(EncodingError):
        driver.run(0, 1, 1, 0, 0, 100, 50, 64)  # start after stop


def test_a_block_loop_that_disagrees_is_refused() -> None:
    library = isal.load_library()

    def wrong(*arguments: object) -> int:
        return 0  # claims success, writes nothing

    assert not isal._driver_agrees(library, isal._BlockDriver(wrong, 1))
