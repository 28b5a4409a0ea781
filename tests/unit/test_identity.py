"""Ed25519 identities, domain-separated signatures, and peer ids equal to libp2p's."""

from __future__ import annotations

import pytest
from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
from libp2p.peer.id import ID

from walrus_p2p.core import identity
from walrus_p2p.core.identity import Identity, PublicKey
from walrus_p2p.errors import ConfigError, VerificationError, WireError

SEEDS = [bytes(32), bytes(range(32)), b"\xff" * 32, bytes.fromhex("9d" * 32)]

# Golden vectors: change them only together with a deliberate format change.
ZERO_SEED_PEER_ID = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
ZERO_SEED_PUBLIC_KEY = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
ZERO_SEED_SIGNATURE_TEST_HELLO = (
    "30ca74f225d263a1233fbdb30eb32cd368fc363db2373a028c1fea2c36ed9bd1"
    "5d256505a3360c37aa3188d3665cef43a7a35935f259a53c2271ac9c7dab5c0d"
)


@pytest.mark.parametrize("seed", SEEDS)
def test_peer_id_equals_libp2p(seed: bytes) -> None:
    ours = Identity.from_seed(seed)
    key_pair = create_new_key_pair(seed)
    assert key_pair.public_key.to_bytes() == ours.public_key.raw
    assert ID.from_pubkey(key_pair.public_key).to_base58() == ours.peer_id
    assert identity.peer_id_from_public_key(ours.public_key.raw) == ours.peer_id
    assert ours.peer_id.startswith("12D3KooW")


def test_golden_vectors() -> None:
    zero = Identity.from_seed(bytes(32))
    assert zero.peer_id == ZERO_SEED_PEER_ID
    assert zero.public_key.hex() == ZERO_SEED_PUBLIC_KEY
    assert zero.sign("test", b"hello").hex() == ZERO_SEED_SIGNATURE_TEST_HELLO


def test_sign_and_verify_with_context() -> None:
    alice = Identity.from_seed(SEEDS[1])
    signature = alice.sign("confirmation", b"blob")
    alice.public_key.verify("confirmation", b"blob", signature)
    assert alice.public_key.is_valid_signature("confirmation", b"blob", signature)
    # another context, message, key or a flipped bit: all rejected
    assert not alice.public_key.is_valid_signature("epoch-vote", b"blob", signature)
    assert not alice.public_key.is_valid_signature("confirmation", b"blob!", signature)
    bob = Identity.from_seed(SEEDS[2])
    assert not bob.public_key.is_valid_signature("confirmation", b"blob", signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not alice.public_key.is_valid_signature("confirmation", b"blob", flipped)
    assert not alice.public_key.is_valid_signature("confirmation", b"blob", signature[:-1])
    with pytest.raises(VerificationError):
        alice.public_key.verify("epoch-vote", b"blob", signature)


def test_context_split_is_unambiguous() -> None:
    assert identity.signed_bytes("ab", b"c") != identity.signed_bytes("a", b"bc")
    with pytest.raises(ValueError):
        identity.signed_bytes("", b"x")
    with pytest.raises(ValueError):
        identity.signed_bytes("é", b"x")


def test_signature_is_plain_ed25519_over_signed_bytes() -> None:
    # What libp2p verifies, given our domain-separated bytes, is the same signature.
    alice = Identity.from_seed(SEEDS[3])
    signature = alice.sign("record", b"payload")
    libp2p_key = Ed25519PublicKey.from_bytes(alice.public_key.raw)
    assert libp2p_key.verify(identity.signed_bytes("record", b"payload"), signature)
    assert not libp2p_key.verify(b"payload", signature)


def test_public_key_from_peer_id() -> None:
    alice = Identity.from_seed(SEEDS[1])
    assert identity.public_key_from_peer_id(alice.peer_id) == alice.public_key.raw
    for bad in ["", "not-base58-0OIl", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "12D3"]:
        with pytest.raises(WireError):
            identity.public_key_from_peer_id(bad)


def test_seed_is_not_shown_and_must_be_32_bytes() -> None:
    alice = Identity.from_seed(SEEDS[1])
    assert SEEDS[1].hex() not in repr(alice)
    assert alice.peer_id in repr(alice)
    with pytest.raises(ConfigError):
        Identity.from_seed(b"short")
    with pytest.raises(ValueError):
        PublicKey(b"\x00" * 31)
