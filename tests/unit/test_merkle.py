"""Merkle trees: every proof verifies, and every change to a leaf, index or proof is caught."""

from __future__ import annotations

import numpy as np
import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from walrus_p2p.core import merkle
from walrus_p2p.errors import VerificationError


def leaves(count: int) -> list[bytes]:
    return [bytes([index % 256]) * (index % 5 + 1) for index in range(count)]


def naive_root(hashes: list[bytes]) -> bytes:
    """An independent recursive definition of the tree shape (pad odd levels)."""
    if len(hashes) == 1:
        return hashes[0]
    if len(hashes) % 2:
        hashes = [*hashes, merkle.EMPTY_NODE_HASH]
    parents = [
        blake3(hashes[index] + hashes[index + 1], key=merkle.INNER_KEY).digest()
        for index in range(0, len(hashes), 2)
    ]
    return naive_root(parents)


@pytest.mark.parametrize("count", [*range(1, 18), 100, 256])
def test_every_proof_verifies_and_root_matches_naive(count: int) -> None:
    tree = merkle.MerkleTree.from_leaves(leaves(count))
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves(count)]
    assert tree.root == naive_root(hashes)
    assert tree.root == merkle.root_of_leaf_hashes(b"".join(hashes))
    for index, leaf in enumerate(leaves(count)):
        proof = tree.proof(index)
        assert len(proof.siblings) == merkle.tree_depth(count)
        assert merkle.proof_is_valid(tree.root, count, index, merkle.leaf_hash(leaf), proof)


@pytest.mark.parametrize("count", [2, 3, 5, 7, 10])
def test_proof_for_one_leaf_fails_everywhere_else(count: int) -> None:
    tree = merkle.MerkleTree.from_leaves(leaves(count))
    for index in range(count):
        proof = tree.proof(index)
        digest = tree.leaf_hash(index)
        for other in range(-1, count + 1):
            if other != index:
                assert not merkle.proof_is_valid(tree.root, count, other, digest, proof)
        # a tree of another size must not accept it either
        assert not merkle.proof_is_valid(tree.root, 2 * count + 1, index, digest, proof)
        # the leaf content, not its hash, is not a valid leaf digest
        assert not merkle.proof_is_valid(tree.root, count, index, merkle.leaf_hash(b"x"), proof)


@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(min_value=2, max_value=40),
    data=st.data(),
)
def test_any_flipped_bit_in_proof_leaf_or_root_is_detected(count: int, data: st.DataObject) -> None:
    tree = merkle.MerkleTree.from_leaves(leaves(count))
    index = data.draw(st.integers(min_value=0, max_value=count - 1))
    proof = tree.proof(index)
    digest = tree.leaf_hash(index)
    bit = data.draw(st.integers(min_value=0, max_value=255))
    target = data.draw(st.sampled_from(["leaf", "root", "sibling"]))

    def flip(value: bytes) -> bytes:
        changed = bytearray(value)
        changed[bit // 8] ^= 1 << (bit % 8)
        return bytes(changed)

    root = tree.root
    if target == "leaf":
        digest = flip(digest)
    elif target == "root":
        root = flip(root)
    else:
        level = data.draw(st.integers(min_value=0, max_value=len(proof.siblings) - 1))
        siblings = list(proof.siblings)
        siblings[level] = flip(siblings[level])
        proof = merkle.MerkleProof(tuple(siblings))
    assert not merkle.proof_is_valid(root, count, index, digest, proof)
    with pytest.raises(VerificationError):
        merkle.verify_proof(root, count, index, digest, proof)


def test_truncated_or_extended_proof_is_rejected() -> None:
    tree = merkle.MerkleTree.from_leaves(leaves(8))
    proof = tree.proof(3)
    digest = tree.leaf_hash(3)
    short = merkle.MerkleProof(proof.siblings[:-1])
    long = merkle.MerkleProof((*proof.siblings, merkle.EMPTY_NODE_HASH))
    assert not merkle.proof_is_valid(tree.root, 8, 3, digest, short)
    assert not merkle.proof_is_valid(tree.root, 8, 3, digest, long)


def test_padding_sibling_must_be_the_empty_node() -> None:
    tree = merkle.MerkleTree.from_leaves(leaves(5))
    proof = tree.proof(4)
    assert proof.siblings[0] == merkle.EMPTY_NODE_HASH
    forged = merkle.MerkleProof((tree.leaf_hash(4), *proof.siblings[1:]))
    assert not merkle.proof_is_valid(tree.root, 5, 4, tree.leaf_hash(4), forged)


def test_domain_separation_between_leaf_inner_and_plain_hashes() -> None:
    left, right = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    assert merkle.inner_hash(left, right) != merkle.leaf_hash(left + right)
    assert merkle.leaf_hash(b"a") != blake3(b"a").digest()
    keys = {merkle.LEAF_KEY, merkle.INNER_KEY, merkle.EMPTY_KEY}
    assert len(keys) == 3
    assert merkle.EMPTY_NODE_HASH not in {merkle.leaf_hash(b""), merkle.inner_hash(b"", b"")}


def test_leaf_hashes_of_symbols_hashes_each_symbol() -> None:
    buffer = bytes(range(12))
    digests = merkle.leaf_hashes_of_symbols(buffer, 4)
    assert digests == b"".join(merkle.leaf_hash(buffer[start : start + 4]) for start in (0, 4, 8))
    with pytest.raises(ValueError):
        merkle.leaf_hashes_of_symbols(buffer, 5)


def test_leaf_hashes_of_separate_buffers() -> None:
    matrix = np.arange(60, dtype=np.uint8).reshape(3, 20)
    symbols = [row.data for row in matrix[:, 4:12]]  # rows of a strided view
    expected = b"".join(merkle.leaf_hash(bytes(symbol)) for symbol in symbols)
    assert merkle.leaf_hashes(symbols) == expected
    assert merkle.leaf_hashes([]) == b""


def test_bad_inputs_to_tree_are_rejected() -> None:
    with pytest.raises(ValueError):
        merkle.MerkleTree(b"")
    with pytest.raises(ValueError):
        merkle.root_of_leaf_hashes(b"\x00" * 33)
    with pytest.raises(IndexError):
        merkle.MerkleTree.from_leaves(leaves(3)).proof(3)


def test_proof_iterates_over_its_siblings_for_the_wire() -> None:
    tree = merkle.MerkleTree.from_leaves(leaves(6))
    proof = tree.proof(5)
    assert tuple(proof) == proof.siblings
    assert len(proof) == merkle.tree_depth(6) == 3
    assert merkle.MerkleProof(tuple(proof)) == proof
