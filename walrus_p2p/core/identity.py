"""Peer identities: Ed25519 keys, domain-separated signatures and libp2p peer ids.

Owner: every signature in the system goes through :meth:`Identity.sign` and
:meth:`PublicKey.verify`, which prefix the message with a context string, so a signature made for
one purpose (a confirmation, an epoch vote, a blob record) can never be replayed as another.

Ed25519 comes from PyNaCl, the library py-libp2p itself uses for its Ed25519 keys, so the 32-byte
seed kept here gives the same key pair as ``libp2p.crypto.ed25519.create_new_key_pair(seed)``.
The peer id is computed here without libp2p (core stays free of it): the protobuf
``PublicKey{Type: Ed25519, Data: <32 bytes>}`` is 36 bytes, short enough to be inlined in an
identity multihash, whose base58btc text is the familiar ``12D3KooW...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import base58
import nacl.exceptions
import nacl.signing

from walrus_p2p.errors import ConfigError, VerificationError, WireError
from walrus_p2p.types import PeerId

SEED_LENGTH = 32
PUBLIC_KEY_LENGTH = 32
SIGNATURE_LENGTH = 64

SIGNATURE_DOMAIN = b"walrus-p2p/signature/v1\x00"
"""Prefix of every signed message, before the context."""

MAX_CONTEXT_LENGTH = 255

# protobuf PublicKey: field 1 (KeyType, varint) = 1 (Ed25519); field 2 (Data, bytes) length 32.
_PROTOBUF_ED25519_PREFIX = bytes([0x08, 0x01, 0x12, PUBLIC_KEY_LENGTH])
# multihash: code 0x00 (identity), length 36.
_IDENTITY_MULTIHASH_PREFIX = bytes([0x00, len(_PROTOBUF_ED25519_PREFIX) + PUBLIC_KEY_LENGTH])


def signed_bytes(context: str, message: bytes) -> bytes:
    """The bytes actually signed: domain prefix, length-prefixed ASCII context, then the message.

    The length prefix makes the split unambiguous: no (context, message) pair can produce the
    bytes of another.
    """
    raw_context = _context_bytes(context)
    return SIGNATURE_DOMAIN + bytes([len(raw_context)]) + raw_context + message


def _context_bytes(context: str) -> bytes:
    if not context or not context.isascii() or len(context) > MAX_CONTEXT_LENGTH:
        raise ValueError(f"signature context must be 1..{MAX_CONTEXT_LENGTH} ASCII characters")
    return context.encode("ascii")


def peer_id_from_public_key(public_key: bytes) -> PeerId:
    """The libp2p peer id (base58btc text) of a 32-byte Ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_LENGTH:
        raise ValueError(f"Ed25519 public key must be {PUBLIC_KEY_LENGTH} bytes")
    multihash = _IDENTITY_MULTIHASH_PREFIX + _PROTOBUF_ED25519_PREFIX + bytes(public_key)
    return PeerId(base58.b58encode(multihash).decode("ascii"))


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 public key inlined in a peer id; ``WireError`` if it is not such a peer id."""
    try:
        raw = base58.b58decode(peer_id.encode("ascii"))
    except ValueError as error:
        raise WireError(f"peer id is not base58: {peer_id[:60]!r}") from error
    prefix = _IDENTITY_MULTIHASH_PREFIX + _PROTOBUF_ED25519_PREFIX
    if len(raw) != len(prefix) + PUBLIC_KEY_LENGTH or not raw.startswith(prefix):
        raise WireError(f"peer id is not an inlined Ed25519 key: {peer_id[:60]!r}")
    public_key = raw[len(prefix) :]
    if peer_id_from_public_key(public_key) != peer_id:  # rejects non-canonical base58
        raise WireError(f"peer id is not canonical: {peer_id[:60]!r}")
    return public_key


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A 32-byte Ed25519 public key."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != PUBLIC_KEY_LENGTH:
            raise ValueError(f"Ed25519 public key must be {PUBLIC_KEY_LENGTH} bytes")

    @property
    def peer_id(self) -> PeerId:
        return peer_id_from_public_key(self.raw)

    def hex(self) -> str:
        return self.raw.hex()

    def verify(self, context: str, message: bytes, signature: bytes) -> None:
        """Check a signature made with ``context``; ``VerificationError`` if it does not hold."""
        if not self.is_valid_signature(context, message, signature):
            raise VerificationError(f"bad {context} signature from {self.peer_id}")

    def is_valid_signature(self, context: str, message: bytes, signature: bytes) -> bool:
        if len(signature) != SIGNATURE_LENGTH:
            return False
        try:
            nacl.signing.VerifyKey(self.raw).verify(signed_bytes(context, message), signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class Identity:
    """An Ed25519 key pair made from a 32-byte seed (the secret; never printed or logged).

    Core has no randomness: callers pass the seed (``secrets.token_bytes(32)`` for a new peer).
    The libp2p key pair for the host is ``libp2p.crypto.ed25519.create_new_key_pair(seed)``.
    """

    seed: bytes = field(repr=False)
    public_key: PublicKey = field(init=False)
    _signing_key: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_LENGTH:
            raise ConfigError(f"Ed25519 seed must be {SEED_LENGTH} bytes, got {len(self.seed)}")
        signing_key = nacl.signing.SigningKey(bytes(self.seed))
        object.__setattr__(self, "_signing_key", signing_key)
        object.__setattr__(self, "public_key", PublicKey(bytes(signing_key.verify_key)))

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        return cls(seed=bytes(seed))

    @property
    def peer_id(self) -> PeerId:
        return self.public_key.peer_id

    def sign(self, context: str, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``message`` for the purpose named by ``context``."""
        return self._signing_key.sign(signed_bytes(context, message)).signature

    def __repr__(self) -> str:
        return f"Identity(peer_id={self.peer_id!r})"
