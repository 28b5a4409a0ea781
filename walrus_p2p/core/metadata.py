"""Blob metadata and the blob id (design §4).

Owner: the core pipeline. The data classes below are the shared vocabulary that wire.py
serialises; the functions that compute and verify them live here too.
"""

from __future__ import annotations

from dataclasses import dataclass

ENCODING_RED_STUFF = 1
"""The only encoding type: RedStuff over Reed-Solomon (isa_l_rs_cauchy)."""


@dataclass(frozen=True, slots=True)
class SliverPairMetadata:
    """The two sliver hashes of sliver pair p: Merkle roots over n expanded symbols each."""

    primary_hash: bytes
    secondary_hash: bytes


@dataclass(frozen=True, slots=True)
class Metadata:
    """Encoding type, unencoded length and the n sliver pair hashes; the blob id commits to it."""

    encoding_type: int
    unencoded_length: int
    hashes: tuple[SliverPairMetadata, ...]

    @property
    def shards(self) -> int:
        return len(self.hashes)
