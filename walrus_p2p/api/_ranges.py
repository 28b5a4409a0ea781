"""Parsing the HTTP ``Range`` request header (RFC 9110 §14) against a blob of known size.

Pure functions, no I/O: the gateway asks the network for the blob size first, then decides here
whether to answer 206 with one range, 416, or ignore the header and send the whole blob.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# At most 18 digits: bounds the work of int() on hostile input and stays far below 2**63.
_RANGE_SPEC = re.compile(r"^(?P<first>\d{1,18})?-(?P<last>\d{1,18})?$")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range ``first..last`` that lies inside the blob."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.first}-{self.last}/{size}"


class UnsatisfiableRangeError(Exception):
    """The header is well formed but no byte of the range lies inside the blob (answer 416)."""


def parse_range_header(value: str, size: int) -> ByteRange | None:
    """Resolve a ``Range`` header for a blob of ``size`` bytes.

    Returns the single range to serve, or ``None`` when the header must be ignored and the whole
    blob served with 200: another unit than ``bytes``, a syntax error, or several ranges (RFC 9110
    lets a server ignore Range; multipart/byteranges is not worth its complexity for blobs).
    Raises :class:`UnsatisfiableRangeError` when the range starts at or past the end of the blob.
    """
    unit, separator, specs = value.partition("=")
    if not separator or unit.strip().lower() != "bytes":
        return None
    spec_list = [spec.strip() for spec in specs.split(",")]
    if len(spec_list) != 1:
        return None
    match = _RANGE_SPEC.match(spec_list[0])
    if match is None:
        return None
    first_text, last_text = match.group("first"), match.group("last")
    if first_text is None:
        if last_text is None:
            return None
        # Suffix range: the last N bytes.
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise UnsatisfiableRangeError(f"suffix range of {suffix} bytes on a {size}-byte blob")
        return ByteRange(max(0, size - suffix), size - 1)
    first = int(first_text)
    if last_text is not None and int(last_text) < first:
        return None
    if first >= size:
        raise UnsatisfiableRangeError(f"range starts at {first}, blob has {size} bytes")
    last = size - 1 if last_text is None else min(int(last_text), size - 1)
    return ByteRange(first, last)
