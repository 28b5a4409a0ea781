"""Quilts: many small files in one blob, each readable alone (docs/quilts.md).

A quilt is an ordinary blob laid out as a header, an index, then one *patch* per file; a patch
is its own small header (identifier and tags) followed by the file's bytes. A blob's bytes are
the rows of its matrix, one primary sliver per row, in order (docs/design.md §3), so a patch
lies in a contiguous range of primary slivers, and reading it (a range read, client/read.py)
fetches only those slivers — with the metadata, verified against the blob id like any read. A
patch id is the quilt's blob id plus the patch's byte range, so a patch is read without the
index.

Everything here works over the :class:`~walrus_p2p.client.results.BlobService` operations
``store`` and ``read_range``, so the command line, the agent and the gateway share it.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cbor2

from walrus_p2p.client.results import BlobService, StoreOutcome
from walrus_p2p.errors import NotFoundError, WalrusError
from walrus_p2p.types import BlobId, blob_id_to_text

MAGIC = b"walrusQ1"
"""The first 8 bytes of a quilt of format version 1."""
HEADER = struct.Struct(">8sI")
"""Magic, then the index's length in bytes."""
PATCH_HEADER = struct.Struct(">I")
"""A patch starts with the length of its CBOR header ([identifier, tags])."""
PATCH_ID_VERSION = 1
PATCH_ID = struct.Struct(">32sBQQ")
"""Blob id, version, start and length of the patch in the quilt's bytes."""
INDEX_READ_BYTES = 64 * 1024
"""What a first read of a quilt asks for: its header and, for most quilts, the whole index."""

MAX_PATCHES = 666
"""Files in one quilt (Walrus's limit for its 1000 shards)."""
MAX_IDENTIFIER_BYTES = 256
MAX_TAGS = 32
MAX_TAG_KEY_BYTES = 128
MAX_TAG_VALUE_BYTES = 1024
MAX_INDEX_BYTES = 4 * 1024 * 1024
"""666 patches with the longest identifiers and many tags still fit."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class QuiltError(WalrusError):
    """A quilt that cannot be built (bad identifiers, tags, too many files) or read (a blob
    that is not a quilt, a patch id that names no patch)."""

    def __init__(self, message: str, reason: str = "QUILT_INVALID") -> None:
        super().__init__(message, reason=reason)


@dataclass(frozen=True, slots=True)
class QuiltFile:
    """One file to put in a quilt."""

    identifier: str
    data: bytes
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PatchEntry:
    """A patch as the index lists it; ``start`` and ``length`` cover its header and its bytes."""

    identifier: str
    tags: Mapping[str, str]
    start: int
    length: int

    def patch_id(self, quilt_id: BlobId) -> str:
        return encode_patch_id(quilt_id, self.start, self.length)


@dataclass(frozen=True, slots=True)
class Patch:
    identifier: str
    tags: Mapping[str, str]
    data: bytes


@dataclass(frozen=True, slots=True)
class StoredQuilt:
    outcome: StoreOutcome
    patches: tuple[PatchEntry, ...]

    @property
    def quilt_id(self) -> BlobId:
        return self.outcome.blob_id


# -- identifiers, tags and patch ids ------------------------------------------------------------


def check_identifier(identifier: object) -> str:
    if not isinstance(identifier, str) or not identifier:
        raise QuiltError("a quilt identifier must be a non-empty string")
    if len(identifier.encode()) > MAX_IDENTIFIER_BYTES:
        raise QuiltError(f"identifier {identifier[:40]!r}... is over {MAX_IDENTIFIER_BYTES} bytes")
    if _CONTROL.search(identifier) or identifier.startswith("_"):
        raise QuiltError(
            f"identifier {identifier!r} starts with '_' or has a control character "
            "('_' names are reserved, e.g. the _metadata field of an upload)"
        )
    return identifier


def check_tags(tags: object, identifier: str) -> dict[str, str]:
    if not isinstance(tags, Mapping):
        raise QuiltError(f"tags of {identifier!r} must be a map of strings")
    if len(tags) > MAX_TAGS:
        raise QuiltError(f"{identifier!r} has {len(tags)} tags; at most {MAX_TAGS}")
    checked: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise QuiltError(f"tags of {identifier!r} must map non-empty strings to strings")
        if len(key.encode()) > MAX_TAG_KEY_BYTES or len(value.encode()) > MAX_TAG_VALUE_BYTES:
            raise QuiltError(
                f"a tag of {identifier!r} is too long (keys ≤ {MAX_TAG_KEY_BYTES} bytes, "
                f"values ≤ {MAX_TAG_VALUE_BYTES})"
            )
        if _CONTROL.search(key) or _CONTROL.search(value):
            raise QuiltError(f"a tag of {identifier!r} has a control character")
        checked[key] = value
    return checked


def encode_patch_id(quilt_id: bytes, start: int, length: int) -> str:
    raw = PATCH_ID.pack(bytes(quilt_id), PATCH_ID_VERSION, start, length)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_patch_id(text: str) -> tuple[BlobId, int, int]:
    """(quilt blob id, start, length); ``QuiltError`` (``INVALID_PATCH_ID``) if malformed."""
    problem = QuiltError(
        f"{text[:80]!r} is not a quilt patch id (base64url of a blob id and a byte range)",
        reason="INVALID_PATCH_ID",
    )
    if len(text) != 66 or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise problem
    try:
        raw = base64.urlsafe_b64decode(text + "==")
    except (binascii.Error, ValueError) as error:
        raise problem from error
    if len(raw) != PATCH_ID.size:
        raise problem
    blob_id, version, start, length = PATCH_ID.unpack(raw)
    if version != PATCH_ID_VERSION or length < PATCH_HEADER.size:
        raise problem
    return BlobId(blob_id), start, length


# -- building ------------------------------------------------------------------------------------


def _canonical(value: object) -> bytes:
    return cbor2.dumps(value, canonical=True)


def build_quilt(files: Sequence[QuiltFile]) -> tuple[bytes, tuple[PatchEntry, ...]]:
    """The quilt's bytes and its index; ``QuiltError`` for a set the format does not allow."""
    if not files:
        raise QuiltError("a quilt needs at least one file")
    if len(files) > MAX_PATCHES:
        raise QuiltError(f"{len(files)} files; a quilt holds at most {MAX_PATCHES}")
    seen: set[str] = set()
    heads: list[bytes] = []
    for item in files:
        identifier = check_identifier(item.identifier)
        if identifier in seen:
            raise QuiltError(f"identifier {identifier!r} is given twice")
        seen.add(identifier)
        tags = check_tags(item.tags, identifier)
        head = _canonical([identifier, tags])
        heads.append(PATCH_HEADER.pack(len(head)) + head)
    # The index holds absolute offsets, and its own length moves them: place the patches after
    # an index encoded with provisional offsets, then again until the length stops changing
    # (offsets only grow, so their CBOR lengths do too; bounded by the 9-byte integer size).
    index_length = 0
    for _ in range(16):
        offset = HEADER.size + index_length
        entries = []
        for item, head in zip(files, heads, strict=True):
            length = len(head) + len(item.data)
            entries.append(PatchEntry(item.identifier, dict(item.tags), offset, length))
            offset += length
        index = _canonical(
            [[entry.identifier, dict(entry.tags), entry.start, entry.length] for entry in entries]
        )
        if len(index) == index_length:
            break
        index_length = len(index)
    else:  # pragma: no cover - integer lengths converge in a few steps
        raise RuntimeError("quilt index length did not settle")
    if len(index) > MAX_INDEX_BYTES:
        raise QuiltError(f"the quilt index would be {len(index)} bytes; at most {MAX_INDEX_BYTES}")
    parts = [HEADER.pack(MAGIC, len(index)), index]
    for item, head in zip(files, heads, strict=True):
        parts += [head, item.data]
    return b"".join(parts), tuple(entries)


# -- reading -------------------------------------------------------------------------------------


def _not_a_quilt(quilt_id: bytes, why: str) -> QuiltError:
    return QuiltError(f"blob {blob_id_to_text(BlobId(quilt_id))} is not a quilt: {why}")


def parse_index(quilt_id: bytes, header_and_index: bytes) -> tuple[PatchEntry, ...]:
    """The entries of an index whose header and whole index are ``header_and_index``."""
    _, length = HEADER.unpack_from(header_and_index)
    body = header_and_index[HEADER.size : HEADER.size + length]
    try:
        decoded = cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as error:
        raise _not_a_quilt(quilt_id, f"its index does not decode ({error})") from error
    if not isinstance(decoded, list) or not 0 < len(decoded) <= MAX_PATCHES:
        raise _not_a_quilt(quilt_id, "its index is not a list of 1..666 patches")
    entries: list[PatchEntry] = []
    end = HEADER.size + length
    for item in decoded:
        if (
            not isinstance(item, list)
            or len(item) != 4
            or not isinstance(item[2], int)
            or not isinstance(item[3], int)
        ):
            raise _not_a_quilt(quilt_id, "an index entry is not [identifier, tags, start, length]")
        try:
            identifier = check_identifier(item[0])
            tags = check_tags(item[1], identifier)
        except QuiltError as error:
            raise _not_a_quilt(quilt_id, error.message) from error
        start, size = item[2], item[3]
        if start != end or size < PATCH_HEADER.size:
            raise _not_a_quilt(quilt_id, "its patches do not follow each other")
        end = start + size
        entries.append(PatchEntry(identifier, tags, start, size))
    return tuple(entries)


def parse_patch(data: bytes, where: str) -> Patch:
    """A patch's identifier, tags and bytes; ``QuiltError`` (``INVALID_PATCH_ID``) if ``data``
    (read at a patch id's range) is not a patch."""
    problem = f"{where} does not name a quilt patch"
    if len(data) < PATCH_HEADER.size:
        raise QuiltError(problem, reason="INVALID_PATCH_ID")
    (head_length,) = PATCH_HEADER.unpack_from(data)
    head = data[PATCH_HEADER.size : PATCH_HEADER.size + head_length]
    if len(head) != head_length:
        raise QuiltError(problem, reason="INVALID_PATCH_ID")
    try:
        decoded = cbor2.loads(head)
        if not isinstance(decoded, list) or len(decoded) != 2:
            raise ValueError("not [identifier, tags]")
        identifier = check_identifier(decoded[0])
        tags = check_tags(decoded[1], identifier)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as error:
        raise QuiltError(f"{problem} ({error})", reason="INVALID_PATCH_ID") from error
    except QuiltError as error:
        raise QuiltError(f"{problem} ({error.message})", reason="INVALID_PATCH_ID") from error
    return Patch(identifier, tags, bytes(data[PATCH_HEADER.size + head_length :]))


# -- over a blob service -------------------------------------------------------------------------


async def store_quilt(
    service: BlobService, files: Sequence[QuiltFile], *, epochs: int, permanent: bool
) -> StoredQuilt:
    data, entries = build_quilt(files)
    outcome = await service.store(memoryview(data), epochs=epochs, permanent=permanent)
    return StoredQuilt(outcome, entries)


async def quilt_size(service: BlobService, quilt_id: BlobId, size: int | None = None) -> int:
    """The quilt's size in bytes (``size`` when the caller knows it): reads stay inside it."""
    if size is not None:
        return size
    status = await service.blob_status(quilt_id)
    if status.state != "certified" or status.size is None:
        raise NotFoundError(f"no certified blob {blob_id_to_text(quilt_id)} ({status.state})")
    return status.size


async def read_index(
    service: BlobService, quilt_id: BlobId, size: int | None = None
) -> tuple[PatchEntry, ...]:
    """The quilt's patches, from its first bytes (one range read for most quilts); ``size``:
    the quilt's size if known (else asked for)."""
    size = await quilt_size(service, quilt_id, size)
    first = bytes(await service.read_range(quilt_id, 0, min(size, INDEX_READ_BYTES)))
    if len(first) < HEADER.size or first[: len(MAGIC)] != MAGIC:
        raise _not_a_quilt(quilt_id, "it does not start with a quilt header")
    _, length = HEADER.unpack_from(first)
    if length > MAX_INDEX_BYTES:
        raise _not_a_quilt(quilt_id, f"its index claims {length} bytes")
    needed = HEADER.size + length
    if needed > size:
        raise _not_a_quilt(quilt_id, "its index is cut short")
    if len(first) < needed:
        rest = await service.read_range(quilt_id, len(first), needed - len(first))
        first += bytes(rest)
        if len(first) < needed:
            raise _not_a_quilt(quilt_id, "its index is cut short")
    return parse_index(quilt_id, first)


async def read_patch(service: BlobService, patch_id: str, size: int | None = None) -> Patch:
    """The patch a patch id names: one range read, nothing else. ``size``: the quilt's, if the
    caller knows it (a range past it is refused before reading); otherwise a range read cut
    short at the quilt's end shows the same."""
    quilt_id, start, length = decode_patch_id(patch_id)
    past_end = QuiltError(
        f"patch id {patch_id} reaches past the end of its quilt", reason="INVALID_PATCH_ID"
    )
    if size is not None and start + length > size:
        raise past_end
    data = bytes(await service.read_range(quilt_id, start, length))
    if len(data) != length:
        raise past_end
    return parse_patch(data, f"patch id {patch_id}")


def patch_ids_json(quilt_id: BlobId, entries: Sequence[PatchEntry]) -> list[dict[str, object]]:
    """The patches as Walrus's clients list them (``identifier``, ``quiltPatchId``, ``tags``)."""
    return [
        {
            "identifier": entry.identifier,
            "quiltPatchId": entry.patch_id(quilt_id),
            "tags": dict(entry.tags),
        }
        for entry in entries
    ]


__all__ = [
    "MAX_PATCHES",
    "Patch",
    "PatchEntry",
    "QuiltError",
    "QuiltFile",
    "StoredQuilt",
    "build_quilt",
    "decode_patch_id",
    "encode_patch_id",
    "parse_index",
    "parse_patch",
    "patch_ids_json",
    "read_index",
    "read_patch",
    "store_quilt",
]
