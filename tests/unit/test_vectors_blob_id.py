"""Golden blob ids: any change to the encoding, the commitments or the hashing shows up here.

The blob id is what users write down and what every peer must agree on, so its format is
frozen by these vectors. If a change is intended, regenerate with
``python tests/unit/test_vectors_blob_id.py --write`` and say why in the changelog.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3
from pyeclib.ec_iface import ECDriver

from walrus_p2p.core.encoding import EncodingConfig, ErasureCodec, PyeclibCodec, default_codec
from walrus_p2p.core.metadata import blob_id_of
from walrus_p2p.types import blob_id_from_text, blob_id_to_text

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "blob_ids.json"
SHARD_COUNTS = [4, 10, 20, 100, 256]


def input_bytes(name: str) -> bytes:
    """The fixed inputs; the pattern is ``(31*i + 7) mod 251`` so it has no short period."""
    if name == "empty":
        return b""
    if name == "a":
        return b"a"
    kind, _, size = name.partition("-")
    if kind == "pattern":
        return bytes((31 * index + 7) % 251 for index in range(int(size)))
    raise ValueError(f"unknown vector input {name!r}")


INPUTS = ["empty", "a", "pattern-1000", "pattern-100000"]


def compute_vectors() -> dict[str, Any]:
    return {
        "description": "blob ids (URL-safe base64, no padding) of fixed inputs; "
        "pattern-N is bytes((31*i + 7) % 251 for i in range(N))",
        "vectors": [
            {
                "input": name,
                "length": len(input_bytes(name)),
                "shards": shards,
                "blob_id": blob_id_to_text(
                    blob_id_of(input_bytes(name), EncodingConfig.for_shards(shards))
                ),
            }
            for name in INPUTS
            for shards in SHARD_COUNTS
        ],
    }


def load_vectors() -> list[dict[str, Any]]:
    if not VECTORS.exists():  # only while writing them the first time
        return []
    vectors: list[dict[str, Any]] = json.loads(VECTORS.read_text())["vectors"]
    return vectors


def test_vector_file_covers_every_input_and_shard_count() -> None:
    vectors = load_vectors()
    assert {(vector["input"], vector["shards"]) for vector in vectors} == {
        (name, shards) for name in INPUTS for shards in SHARD_COUNTS
    }
    texts = [vector["blob_id"] for vector in vectors]
    assert len(set(texts)) == len(texts)
    for text in texts:
        assert len(text) == 43
        assert blob_id_to_text(blob_id_from_text(text)) == text


CODECS: list[ErasureCodec] = [PyeclibCodec()]
if default_codec().name != PyeclibCodec.name:
    CODECS.append(default_codec())


@pytest.mark.parametrize("codec", CODECS, ids=lambda codec: codec.name)
@pytest.mark.parametrize(
    "vector", load_vectors(), ids=lambda vector: f"{vector['input']}-n{vector['shards']}"
)
def test_blob_id_matches_golden_vector(vector: dict[str, Any], codec: ErasureCodec) -> None:
    """Every codec backend must give the same blob id: the public pyeclib API is the reference."""
    data = input_bytes(vector["input"])
    assert len(data) == vector["length"]
    config = EncodingConfig.for_shards(vector["shards"])
    assert blob_id_to_text(blob_id_of(data, config, codec=codec)) == vector["blob_id"]


def reference_blob_id(blob: bytes, n: int) -> str:
    """docs/commitments.md written out naively, sharing no code with walrus_p2p.core: one pyeclib
    call per column and per row, lists of symbols, hashes straight from blake3."""

    def key(purpose: str) -> bytes:
        return bytes(blake3(b"", derive_key_context="walrus-p2p v1 " + purpose).digest())

    def hash_with(purpose: str, data: bytes) -> bytes:
        return bytes(blake3(data, key=key(purpose)).digest())

    empty = hash_with("merkle empty node", b"")

    def root(hashes: list[bytes]) -> bytes:
        while len(hashes) > 1:
            if len(hashes) % 2:
                hashes = [*hashes, empty]
            hashes = [
                hash_with("merkle inner node", hashes[i] + hashes[i + 1])
                for i in range(0, len(hashes), 2)
            ]
        return hashes[0]

    def expand(k: int, symbols: list[bytes]) -> list[bytes]:
        driver = ECDriver(k=k, m=n - k, ec_type="isa_l_rs_cauchy")
        return [bytes(fragment[80:]) for fragment in driver.encode(b"".join(symbols))]

    f = (n - 1) // 3
    kp, ks, length = n - 2 * f, n - f, len(blob)
    size = max(1, -(-length // (kp * ks)))
    size += size % 2
    padded = blob + bytes(kp * ks * size - length)
    matrix = [[b""] * n for _ in range(n)]
    for r in range(kp):
        for c in range(ks):
            start = size * (ks * r + c)
            matrix[r][c] = padded[start : start + size]
    for c in range(ks):
        column = expand(kp, [matrix[r][c] for r in range(kp)])
        for r in range(n):
            matrix[r][c] = column[r]
    for r in range(n):
        matrix[r] = expand(ks, matrix[r][:ks])
    leaves = [[hash_with("merkle leaf", symbol) for symbol in row] for row in matrix]
    rows = [root(leaves[r]) for r in range(n)]
    columns = [root([leaves[r][c] for r in range(n)]) for c in range(n)]
    pairs = [hash_with("sliver pair hash", rows[p] + columns[n - 1 - p]) for p in range(n)]
    blob_id = hash_with("blob id", struct.pack("<BQ", 1, length) + root(pairs))
    return base64.urlsafe_b64encode(blob_id).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "vector",
    [
        vector
        for vector in load_vectors()
        if vector["shards"] <= 20 and (vector["length"] <= 1000 or vector["shards"] == 4)
    ],
    ids=lambda vector: f"{vector['input']}-n{vector['shards']}",
)
def test_vectors_agree_with_a_naive_reference_of_the_documented_format(
    vector: dict[str, Any],
) -> None:
    assert reference_blob_id(input_bytes(vector["input"]), vector["shards"]) == vector["blob_id"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/unit/test_vectors_blob_id.py --write")
    VECTORS.write_text(json.dumps(compute_vectors(), indent=2) + "\n")
