"""Typed ids and their text forms, shared by every layer."""

from __future__ import annotations

import base64
import binascii
import enum
from typing import NewType

from walrus_p2p.errors import WireError

BlobId = NewType("BlobId", bytes)
"""32-byte commitment to a blob's metadata."""

ShardIndex = NewType("ShardIndex", int)
Epoch = NewType("Epoch", int)
PeerId = NewType("PeerId", str)
"""A libp2p peer id in its base58 text form."""


class SliverKind(enum.Enum):
    """Which sliver of a pair: primary (a row of the expanded matrix) or secondary (a column).

    The values are the codes used on the wire; never renumber them.
    """

    PRIMARY = 0
    SECONDARY = 1


BLOB_ID_LENGTH = 32
BLOB_ID_TEXT_LENGTH = 43


def blob_id_to_text(blob_id: bytes) -> str:
    """URL-safe base64 without padding: 43 characters for 32 bytes."""
    if len(blob_id) != BLOB_ID_LENGTH:
        raise WireError(f"blob id must be {BLOB_ID_LENGTH} bytes, got {len(blob_id)}")
    return base64.urlsafe_b64encode(blob_id).rstrip(b"=").decode("ascii")


def blob_id_from_text(text: str) -> BlobId:
    """Parse a blob id; anything but 43 URL-safe base64 characters raises ``WireError``."""
    if len(text) != BLOB_ID_TEXT_LENGTH:
        raise WireError(f"blob id must be {BLOB_ID_TEXT_LENGTH} characters, got {len(text)}")
    try:
        raw = base64.urlsafe_b64decode(text + "=")
    except (binascii.Error, ValueError) as error:
        raise WireError(f"blob id is not URL-safe base64: {text!r}") from error
    if len(raw) != BLOB_ID_LENGTH or blob_id_to_text(raw) != text:
        raise WireError(f"blob id is not canonical URL-safe base64: {text!r}")
    return BlobId(raw)


def short_id(value: bytes | str) -> str:
    """A short form of an id for logs."""
    text = blob_id_to_text(value) if isinstance(value, bytes) and len(value) == 32 else str(value)
    return text[:8]
