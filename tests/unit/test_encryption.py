"""Client-side encryption (walrus_p2p/client/encryption.py, docs/encryption.md): round trips,
wrong secrets, every kind of tampering, and range reads that fetch only their chunks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
from nacl import pwhash

from walrus_p2p.client.encryption import (
    HEADER_SIZE,
    MAX_MEMLIMIT,
    TAG_SIZE,
    DecryptionError,
    Header,
    Secret,
    decrypt,
    decrypt_range,
    encrypt,
    looks_encrypted,
    new_key,
    read_key_file,
    write_key_file,
)

CHUNK_LOG2 = 10  # 1 KiB chunks: many chunks from small blobs
CHUNK = 1 << CHUNK_LOG2
CHEAP = {"opslimit": pwhash.argon2id.OPSLIMIT_MIN, "memlimit": pwhash.argon2id.MEMLIMIT_MIN}
KEY = Secret(key=bytes(range(32)))
PASSPHRASE = Secret(passphrase=b"correct horse battery staple")


def sealed(plaintext: bytes, secret: Secret = KEY) -> bytes:
    return bytes(encrypt(plaintext, secret, chunk_log2=CHUNK_LOG2, **CHEAP))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 17])
@pytest.mark.parametrize("secret", [KEY, PASSPHRASE], ids=["key", "passphrase"])
def test_round_trip(size: int, secret: Secret) -> None:
    plaintext = random.Random(size).randbytes(size)
    blob = sealed(plaintext, secret)
    chunks = max(1, -(-size // CHUNK))
    assert len(blob) == HEADER_SIZE + size + chunks * TAG_SIZE
    assert looks_encrypted(blob)
    if size >= 16:  # a shorter plaintext may occur in random bytes by chance
        assert plaintext not in blob
    assert bytes(decrypt(blob, secret)) == plaintext
    # Fresh randomness each time: the same plaintext never gives the same blob (or blob id).
    assert sealed(plaintext, secret) != blob


def test_wrong_secrets_are_refused_clearly() -> None:
    blob = sealed(b"secret data" * 100)
    with pytest.raises(DecryptionError, match="wrong key or passphrase"):
        decrypt(blob, Secret(key=new_key()))
    with pytest.raises(DecryptionError, match="key file, not a passphrase"):
        decrypt(blob, PASSPHRASE)
    by_passphrase = sealed(b"secret data", PASSPHRASE)
    with pytest.raises(DecryptionError, match="wrong key or passphrase"):
        decrypt(by_passphrase, Secret(passphrase=b"Correct horse battery staple"))
    with pytest.raises(DecryptionError, match="passphrase, not a key file"):
        decrypt(by_passphrase, KEY)
    with pytest.raises(DecryptionError, match="not a blob encrypted"):
        decrypt(b"plain old bytes, long enough to hold a header if it were one" * 2, KEY)


def test_every_altered_byte_is_detected() -> None:
    plaintext = random.Random(1).randbytes(3 * CHUNK + 5)
    blob = sealed(plaintext)
    for position in range(len(blob)):
        altered = bytearray(blob)
        altered[position] ^= 0x01
        with pytest.raises(DecryptionError):
            decrypt(altered, KEY)


def test_cut_extended_reordered_and_spliced_blobs_are_refused() -> None:
    plaintext = random.Random(2).randbytes(4 * CHUNK)
    blob = sealed(plaintext)
    step = CHUNK + TAG_SIZE
    with pytest.raises(DecryptionError, match="header says"):
        decrypt(blob[: HEADER_SIZE + 3 * step], KEY)  # cut at a chunk boundary
    with pytest.raises(DecryptionError, match="header says"):
        decrypt(blob + b"\x00" * step, KEY)
    chunks = [blob[HEADER_SIZE + i * step : HEADER_SIZE + (i + 1) * step] for i in range(4)]
    swapped = blob[:HEADER_SIZE] + chunks[1] + chunks[0] + chunks[2] + chunks[3]
    with pytest.raises(DecryptionError):
        decrypt(swapped, KEY)
    # A chunk of another blob under the same key (another nonce prefix) does not fit.
    other = sealed(random.Random(3).randbytes(4 * CHUNK))
    spliced = blob[: HEADER_SIZE + step] + other[HEADER_SIZE + step : HEADER_SIZE + 2 * step]
    with pytest.raises(DecryptionError):
        decrypt(spliced + blob[HEADER_SIZE + 2 * step :], KEY)
    # A shorter header claiming fewer chunks, so that the blob would end early: the header is
    # authenticated by every chunk.
    header = Header.from_bytes(blob)
    short = Header(
        header.kdf,
        header.chunk_log2,
        header.opslimit,
        header.memlimit,
        header.salt,
        header.nonce_prefix,
        3 * CHUNK,
    )
    with pytest.raises(DecryptionError):
        decrypt(short.to_bytes() + b"".join(chunks[:3]), KEY)


def test_hostile_headers_are_refused_before_any_work() -> None:
    header = Header.from_bytes(sealed(b"x", PASSPHRASE))
    for bad in (
        Header(7, 16, 0, 0, bytes(16), bytes(15), 1),  # unknown key derivation
        Header(0, 40, 0, 0, bytes(16), bytes(15), 1),  # 1 TiB chunks
        Header(1, 16, header.opslimit, MAX_MEMLIMIT + 1, bytes(16), bytes(15), 1),
    ):
        with pytest.raises(DecryptionError, match=r"out of range|unknown"):
            Header.from_bytes(bad.to_bytes())


async def test_ranges_read_only_their_chunks() -> None:
    plaintext = random.Random(4).randbytes(7 * CHUNK + 100)
    blob = sealed(plaintext)
    reads: list[tuple[int, int]] = []

    async def read_range(start: int, length: int) -> bytes:
        assert start >= 0 and start + length <= len(blob)
        reads.append((start, length))
        await trio.sleep(0)
        return blob[start : start + length]

    rng = random.Random(5)
    cases = [(0, 1), (CHUNK - 1, 2), (0, len(plaintext)), (len(plaintext) - 1, 10)]
    cases += [(len(plaintext), 5), (3 * CHUNK + 7, 0)]
    cases += [(rng.randrange(len(plaintext)), rng.randrange(3 * CHUNK)) for _ in range(40)]
    for start, length in cases:
        reads.clear()
        got, total = await decrypt_range(read_range, len(blob), KEY, start, length)
        assert total == len(plaintext)
        assert got == plaintext[start : start + length], (start, length)
        if start < len(plaintext) and length:
            end = min(start + length, len(plaintext))
            covering = (end - 1) // CHUNK - start // CHUNK + 1
            assert reads[0] == (0, HEADER_SIZE)
            assert sum(size for _, size in reads[1:]) <= covering * (CHUNK + TAG_SIZE)
    with pytest.raises(DecryptionError, match="header says"):
        await decrypt_range(read_range, len(blob) - 1, KEY, 0, 1)
    with pytest.raises(DecryptionError, match="wrong key"):
        await decrypt_range(read_range, len(blob), Secret(key=new_key()), 0, 1)


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "blob.key"
    key = write_key_file(path)
    assert read_key_file(path) == key
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        write_key_file(path)  # never overwrites a key
    path.write_text("abc\n")
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        read_key_file(path)
    path.write_text("zz" * 32)
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        read_key_file(path)
    with pytest.raises(ValueError, match="cannot read"):
        read_key_file(tmp_path / "missing.key")
    with pytest.raises(ValueError):
        Secret(key=b"short")
    with pytest.raises(ValueError):
        Secret(passphrase=b"")
    with pytest.raises(ValueError):
        Secret()
