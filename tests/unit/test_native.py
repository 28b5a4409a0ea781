"""The C helper (``walrus_p2p/core/_native.c``): its leaf hasher gives the same digests as the
blake3 package, for every length around blake3's block and chunk edges, every lane count and
strided rows; the batched Merkle roots equal the tree-by-tree ones; a helper that disagrees is
refused. (Its ISA-L block loop is tested in test_isal.py.)"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from walrus_p2p.core import isal, merkle

ROOT = Path(__file__).resolve().parents[2]

needs_native = pytest.mark.skipif(
    not merkle.native_leaf_hashing(), reason="the C leaf hasher is not in use on this machine"
)


def reference(key: bytes, buffers: list[bytes]) -> bytes:
    return b"".join(blake3(buffer, key=key).digest() for buffer in buffers)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_helper_is_in_use_where_it_can_be() -> None:
    """A machine with a C compiler and AVX-512 builds and uses it (the install step compiles it
    and a silent build failure would only show up as a slower encode)."""
    wanted = {"avx512f", "avx512vl", "avx512bw", "avx512dq"}
    if sys.platform != "linux" or not wanted <= _cpu_flags() or shutil.which("cc") is None:
        pytest.skip("no AVX-512 or no C compiler here: the blake3 package is used instead")
    if os.environ.get("WALRUS_P2P_NATIVE") == "0":
        pytest.skip("WALRUS_P2P_NATIVE=0 turns the helper off")
    assert merkle.native_leaf_hashing()
    try:
        library = isal.load_library()
    except isal.IsalUnavailableError:  # pragma: no cover - depends on the machine
        return
    assert isal._block_driver(library) is not None


@needs_native
@pytest.mark.parametrize(
    "length",
    [1, 2, 63, 64, 65, 127, 128, 1000, 1023, 1024, 1025, 2047, 2048, 2049, 3072, 4097, 8191,
     16384, 16385, 56190, 65536, 65537, 200_003],
)  # fmt: skip
@pytest.mark.parametrize("count", [2, 15, 16, 17, 33, 100])
def test_same_digests_as_blake3(length: int, count: int) -> None:
    rng = np.random.default_rng(length * 1000 + count)
    rows = rng.integers(0, 256, (count, length), dtype=np.uint8)
    expected = reference(merkle.LEAF_KEY, [row.tobytes() for row in rows])
    assert merkle.leaf_hashes_of_rows(rows) == expected
    assert merkle.leaf_hashes_of_symbols(rows.tobytes(), length) == expected


@needs_native
def test_strided_rows_and_several_arrays() -> None:
    matrix = np.random.default_rng(7).integers(0, 256, (40, 3000), dtype=np.uint8)
    first, second = matrix[::3, 100:2100], matrix[1:20:2, 500:2500]  # row strides 9000, 6000
    expected = reference(merkle.LEAF_KEY, [bytes(row) for row in (*first, *second)])
    assert merkle.leaf_hashes_of_rows(first, second) == expected


@needs_native
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_lengths_and_contents(data: st.DataObject) -> None:
    length = data.draw(st.integers(1, 5000), label="length")
    count = data.draw(st.integers(2, 40), label="count")
    blob = data.draw(st.binary(min_size=length * count, max_size=length * count), label="blob")
    expected = reference(
        merkle.LEAF_KEY, [blob[i * length : (i + 1) * length] for i in range(count)]
    )
    assert merkle.leaf_hashes_of_symbols(blob, length) == expected


@needs_native
def test_a_flipped_bit_changes_only_its_own_digest() -> None:
    rows = np.zeros((20, 5000), dtype=np.uint8)
    before = merkle.leaf_hashes_of_rows(rows)
    rows[13, 4321] ^= 0x10
    after = merkle.leaf_hashes_of_rows(rows)
    changed = [i for i in range(20) if before[32 * i : 32 * i + 32] != after[32 * i : 32 * i + 32]]
    assert changed == [13]


def test_rows_must_be_contiguous_and_of_one_length() -> None:
    matrix = np.zeros((4, 10), dtype=np.uint8)
    with pytest.raises(ValueError):
        merkle.leaf_hashes_of_rows(matrix[:, ::2])
    with pytest.raises(ValueError):
        merkle.leaf_hashes_of_rows(matrix[:, :4], matrix[:, :5])
    with pytest.raises(ValueError):
        merkle.leaf_hashes_of_rows(matrix.reshape(-1))
    assert merkle.leaf_hashes_of_rows(matrix[:0]) == b""


@pytest.mark.parametrize("native", [True, False], ids=["c-leaf-hasher", "blake3-package"])
@pytest.mark.parametrize(("trees", "leaves"), [(1, 1), (3, 2), (5, 7), (100, 100), (2, 33)])
def test_roots_of_trees_equal_tree_by_tree_roots(
    trees: int, leaves: int, native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not native:
        monkeypatch.setattr(merkle, "_NATIVE", None)
    hashes = np.random.default_rng(trees * leaves).integers(
        0, 256, (trees, leaves, 32), dtype=np.uint8
    )
    expected = [merkle.root_of_leaf_hashes(tree.tobytes()) for tree in hashes]
    assert merkle.roots_of_trees(hashes) == expected
    # and columns of a matrix (a strided view) as in the metadata
    square = hashes[:, : min(trees, leaves)]
    columns = square.transpose(1, 0, 2)
    assert merkle.roots_of_trees(columns) == [
        merkle.root_of_leaf_hashes(column.tobytes()) for column in columns
    ]
    with pytest.raises(ValueError):
        merkle.roots_of_trees(hashes[:, :0])


def test_a_helper_that_disagrees_is_refused() -> None:
    def wrong(addresses: int, count: int, length: int, key: bytes, out: int) -> int:
        ctypes.memset(out, 0, 32 * count)  # "succeeds" with zero digests
        return 0

    def unsupported(addresses: int, count: int, length: int, key: bytes, out: int) -> int:
        return -1

    assert not merkle._native_agrees(wrong)
    assert not merkle._native_agrees(unsupported)


def test_environment_switch_turns_the_helper_off() -> None:
    code = "from walrus_p2p.core import merkle; print(merkle.native_leaf_hashing())"
    environment = {**os.environ, "WALRUS_P2P_NATIVE": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "False"
