"""Client-side encryption of blobs (docs/encryption.md): the blob the network stores is the
ciphertext, so its id commits to the ciphertext and no storage peer or gateway sees the
plaintext.

The format is chunked authenticated encryption with libsodium's XChaCha20-Poly1305 (PyNaCl), so
that any byte range can be decrypted from the chunks that cover it:

``header = magic (6) | kdf (1) | chunk size log2 (1) | opslimit (4) | memlimit (4) | salt (16)
| nonce prefix (15) | plaintext length (8)`` (55 bytes, integers big-endian), then chunk i of
the plaintext (``chunk size`` bytes, the last one shorter, one empty chunk for an empty blob)
encrypted with nonce ``prefix | last flag (1) | i (8)`` and the whole header as associated data.
The header is therefore authenticated by every chunk; a chunk cannot be moved (its index is in
its nonce) and the blob cannot be cut at a chunk boundary (the last chunk says it is last, and
the header states the length).

Keys: 32 random bytes in a key file (64 hex digits), or a passphrase stretched with Argon2id
(``nacl.pwhash.argon2id``) with the salt and cost stored in the header.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from nacl import bindings, pwhash
from nacl.exceptions import CryptoError

from walrus_p2p.errors import WalrusError

MAGIC = b"WPENC\x01"
HEADER = struct.Struct(">6sBBII16s15sQ")
HEADER_SIZE = HEADER.size
KEY_SIZE = bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES
TAG_SIZE = bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES
DEFAULT_CHUNK_LOG2 = 16
"""64 KiB chunks: 16 bytes of tag per 64 KiB (0.02 %), and a range read decrypts at most 64 KiB
more than it asked for at each end."""
MIN_CHUNK_LOG2 = 10
MAX_CHUNK_LOG2 = 24
KDF_KEY = 0
KDF_ARGON2ID = 1
DEFAULT_OPSLIMIT = pwhash.argon2id.OPSLIMIT_MODERATE
DEFAULT_MEMLIMIT = pwhash.argon2id.MEMLIMIT_MODERATE
"""Argon2id with 3 passes over 256 MiB (libsodium's "moderate"): 0.5 s on the development
machine (AMD EPYC, 2 cores, load 3), so every guess at a passphrase costs an attacker as much
time and memory."""
MAX_MEMLIMIT = 1 << 30
"""A header asking for more memory than this is refused (a hostile blob could ask for all)."""

ReadRange = Callable[[int, int], Awaitable[bytes | memoryview]]


class DecryptionError(WalrusError):
    """The blob cannot be decrypted: wrong key or passphrase, not encrypted, or damaged."""

    reason = "DECRYPTION_FAILED"


@dataclass(frozen=True, slots=True)
class Header:
    kdf: int
    chunk_log2: int
    opslimit: int
    memlimit: int
    salt: bytes
    nonce_prefix: bytes
    length: int

    @property
    def chunk_size(self) -> int:
        return 1 << self.chunk_log2

    @property
    def chunks(self) -> int:
        return max(1, -(-self.length // self.chunk_size))

    @property
    def encrypted_size(self) -> int:
        return HEADER_SIZE + self.length + self.chunks * TAG_SIZE

    def to_bytes(self) -> bytes:
        return HEADER.pack(
            MAGIC,
            self.kdf,
            self.chunk_log2,
            self.opslimit,
            self.memlimit,
            self.salt,
            self.nonce_prefix,
            self.length,
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Header:
        if len(data) < HEADER_SIZE or bytes(data[: len(MAGIC)]) != MAGIC:
            raise DecryptionError("not a blob encrypted by walrus-p2p (no encryption header)")
        magic, kdf, log2, opslimit, memlimit, salt, prefix, length = HEADER.unpack(
            bytes(data[:HEADER_SIZE])
        )
        del magic
        if kdf not in (KDF_KEY, KDF_ARGON2ID):
            raise DecryptionError(f"unknown key derivation {kdf} in the encryption header")
        if not MIN_CHUNK_LOG2 <= log2 <= MAX_CHUNK_LOG2:
            raise DecryptionError(f"chunk size 2^{log2} in the encryption header is out of range")
        if kdf == KDF_ARGON2ID and not (
            pwhash.argon2id.OPSLIMIT_MIN <= opslimit <= pwhash.argon2id.OPSLIMIT_MAX
            and pwhash.argon2id.MEMLIMIT_MIN <= memlimit <= MAX_MEMLIMIT
        ):
            raise DecryptionError("the passphrase cost in the encryption header is out of range")
        return cls(kdf, log2, opslimit, memlimit, salt, prefix, length)


@dataclass(frozen=True, slots=True)
class Secret:
    """What unlocks a blob: a 32-byte key, or a passphrase (stretched per blob with its salt)."""

    key: bytes | None = None
    passphrase: bytes | None = None

    def __post_init__(self) -> None:
        if (self.key is None) == (self.passphrase is None):
            raise ValueError("a secret is a key or a passphrase, exactly one")
        if self.key is not None and len(self.key) != KEY_SIZE:
            raise ValueError(f"a key has {KEY_SIZE} bytes, got {len(self.key)}")
        if self.passphrase is not None and not self.passphrase:
            raise ValueError("the passphrase is empty")

    def key_for(self, header: Header) -> bytes:
        if header.kdf == KDF_KEY:
            if self.key is None:
                raise DecryptionError("this blob was encrypted with a key file, not a passphrase")
            return self.key
        if self.passphrase is None:
            raise DecryptionError("this blob was encrypted with a passphrase, not a key file")
        return bytes(
            pwhash.argon2id.kdf(
                KEY_SIZE,
                self.passphrase,
                header.salt,
                opslimit=header.opslimit,
                memlimit=header.memlimit,
            )
        )


def new_key() -> bytes:
    return secrets.token_bytes(KEY_SIZE)


def write_key_file(path: Path) -> bytes:
    """A new random key in a new file (mode 0600); refuses to overwrite one."""
    key = new_key()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(key.hex() + "\n")
    return key


def read_key_file(path: Path) -> bytes:
    """The key of a key file (64 hex digits); ``ValueError`` saying what is wrong."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the key file ({error})") from error
    try:
        key = bytes.fromhex(text)
    except ValueError as error:
        raise ValueError(f"{path}: a key file holds 64 hexadecimal digits") from error
    if len(key) != KEY_SIZE:
        raise ValueError(f"{path}: a key file holds 64 hexadecimal digits, got {len(text)}")
    return key


def _nonce(header: Header, index: int) -> bytes:
    last = 1 if index == header.chunks - 1 else 0
    return header.nonce_prefix + bytes([last]) + index.to_bytes(8, "big")


def encrypt(
    plaintext: bytes | memoryview,
    secret: Secret,
    *,
    chunk_log2: int = DEFAULT_CHUNK_LOG2,
    opslimit: int = DEFAULT_OPSLIMIT,
    memlimit: int = DEFAULT_MEMLIMIT,
) -> bytearray:
    """The encrypted blob of ``plaintext`` (fresh salt and nonce prefix each time)."""
    passphrase = secret.passphrase is not None
    header = Header(
        kdf=KDF_ARGON2ID if passphrase else KDF_KEY,
        chunk_log2=chunk_log2,
        opslimit=opslimit if passphrase else 0,
        memlimit=memlimit if passphrase else 0,
        salt=secrets.token_bytes(16) if passphrase else bytes(16),
        nonce_prefix=secrets.token_bytes(15),
        length=len(plaintext),
    )
    key = secret.key_for(header)
    aad = header.to_bytes()
    view = memoryview(plaintext)
    out = bytearray(aad)
    size = header.chunk_size
    for index in range(header.chunks):
        piece = bytes(view[index * size : (index + 1) * size])
        out += bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            piece, aad, _nonce(header, index), key
        )
    return out


def _decrypt_chunk(header: Header, key: bytes, aad: bytes, index: int, data: bytes) -> bytes:
    try:
        return bytes(
            bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                data, aad, _nonce(header, index), key
            )
        )
    except CryptoError as error:
        raise DecryptionError(
            "cannot decrypt: wrong key or passphrase, or the blob was altered"
        ) from error


def decrypt(blob: bytes | bytearray | memoryview, secret: Secret) -> bytearray:
    """The plaintext of an encrypted blob; ``DecryptionError`` and no plaintext otherwise."""
    header = Header.from_bytes(blob)
    if len(blob) != header.encrypted_size:
        raise DecryptionError(
            f"the encrypted blob has {len(blob)} bytes, its header says {header.encrypted_size}"
        )
    key = secret.key_for(header)
    aad = header.to_bytes()
    view = memoryview(blob)
    out = bytearray()
    step = header.chunk_size + TAG_SIZE
    for index in range(header.chunks):
        start = HEADER_SIZE + index * step
        out += _decrypt_chunk(header, key, aad, index, bytes(view[start : start + step]))
    return out


def looks_encrypted(blob_start: bytes | memoryview) -> bool:
    """Whether a blob starts like one of ours (for a hint; only decryption proves it)."""
    return bytes(blob_start[: len(MAGIC)]) == MAGIC


async def decrypt_range(
    read_range: ReadRange, size: int, secret: Secret, start: int, length: int
) -> tuple[bytes, int]:
    """``length`` plaintext bytes from ``start`` (cut at the end) of the encrypted blob of
    ``size`` bytes, reading only its header and the chunks that cover them; also the
    plaintext's whole length."""
    if start < 0 or length < 0:
        raise ValueError("start and length are not negative")
    if size < HEADER_SIZE:
        raise DecryptionError("not a blob encrypted by walrus-p2p (shorter than the header)")
    header = Header.from_bytes(await read_range(0, HEADER_SIZE))
    if size != header.encrypted_size:
        raise DecryptionError(
            f"the encrypted blob has {size} bytes, its header says {header.encrypted_size}"
        )
    end = min(start + length, header.length)
    if start >= end:
        return b"", header.length
    key = secret.key_for(header)
    aad = header.to_bytes()
    size = header.chunk_size
    first, last = start // size, (end - 1) // size
    step = size + TAG_SIZE
    offset = HEADER_SIZE + first * step
    stop = min(HEADER_SIZE + (last + 1) * step, header.encrypted_size)
    data = memoryview(bytes(await read_range(offset, stop - offset)))
    plain = bytearray()
    for index in range(first, last + 1):
        at = (index - first) * step
        plain += _decrypt_chunk(header, key, aad, index, bytes(data[at : at + step]))
    skip = start - first * size
    return bytes(plain[skip : skip + (end - start)]), header.length
