"""Shard migration at an epoch change: the pull messages and the "shards in place" report.

Owner: issue 6 item 3 and issue 4 item 6 (docs/design.md §5 transition, §6.4 migration;
``docs/healing.md``, "Shard migration"). When epoch e+1's committee gives shard ``s`` to a peer B
that did not hold it in epoch e, B pulls the slivers of ``s`` from A, the owner of ``s`` in epoch e:

- :class:`PullShardRequest` -- signed by B (context ``walrus-p2p/shard-pull/v1``) over the
  network id, the epoch e+1, the shard, a cursor and a byte budget. A serves it only if B owns
  ``s`` in that epoch by the committee A verified itself, and B is the stream's authenticated
  remote peer. The reply (:class:`PullShardReply`) carries whole slivers in (blob id, kind) order
  up to the budget and the cursor of the next page: the shard is streamed page by page, and B
  verifies every sliver against the blob's metadata before it stores it.
- :class:`ShardsInPlace` -- signed by B once it holds every sliver of its shards for every blob
  stored in the epoch (pulled, or rebuilt from recovery symbols when A failed). Gossiped on the
  ``shards`` topic and served on request (:class:`GetShardsInPlaceRequest`). Until a shard's new
  owner reported it in place, readers ask the previous owner first and the previous owner keeps
  (and serves) the slivers; afterwards it may drop them.

Pure: no I/O. Type ids 67-73.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated

from walrus_p2p.core import identity
from walrus_p2p.core.committee import Committee
from walrus_p2p.core.records import EpochNumber
from walrus_p2p.core.wire import (
    MAX_SHARDS,
    U32,
    BlobIdBytes,
    BytesSpec,
    IntSpec,
    ListSpec,
    Message,
    NetworkIdBytes,
    PairIndex,
    PublicKeyBytes,
    SignatureBytes,
    SliverData,
    record,
    record_spec,
    register,
    signing_bytes,
)
from walrus_p2p.errors import VerificationError, WireError
from walrus_p2p.types import BlobId, PeerId, SliverKind

SHARD_PULL_CONTEXT = "walrus-p2p/shard-pull/v1"
SHARDS_IN_PLACE_CONTEXT = "walrus-p2p/shards-in-place/v1"

CURSOR_LENGTH = 33
"""A pull cursor: the 32-byte blob id and the sliver kind code of the last sliver sent."""
MAX_PULL_SLIVERS = 256
"""Slivers per :class:`PullShardReply` (the server also stops at the byte budget)."""
MIN_PULL_BYTES = 64 * 1024
MAX_PULL_BYTES = 64 * 1024 * 1024

Cursor = Annotated[bytes, BytesSpec.exact(CURSOR_LENGTH)]
ShardSet = Annotated[
    tuple[int, ...],
    ListSpec(IntSpec(0, MAX_SHARDS - 1), MAX_SHARDS, min_length=1, strictly_increasing=True),
]
"""A non-empty set of shard indices, sorted, without repeats."""


def cursor_of(blob_id: bytes, kind: SliverKind) -> bytes:
    """The cursor naming the sliver ``kind`` of ``blob_id`` (pages resume after it)."""
    return bytes(blob_id) + bytes([kind.value])


def _public_key(raw: bytes) -> identity.PublicKey:
    try:
        return identity.PublicKey(raw)
    except (ValueError, TypeError) as error:
        raise VerificationError("malformed public key") from error


def _signed_body(body: Message) -> bytes:
    try:
        return signing_bytes(body)
    except WireError as error:
        raise VerificationError(f"malformed message: {error}") from error


# --------------------------------------------------------------------------------------------
# Pulling a shard


@register(67)
@dataclass(frozen=True, slots=True)
class PullShardBody(Message):
    """What the new owner signs: "send me the slivers of ``shard`` after ``after``"."""

    network_id: NetworkIdBytes
    epoch: EpochNumber
    shard: PairIndex
    after: Cursor | None
    max_bytes: U32


@register(68)
@dataclass(frozen=True, slots=True)
class PullShardRequest(Message):
    """A signed pull; ``public_key`` must be the shard's owner in ``body.epoch``."""

    body: PullShardBody
    public_key: PublicKeyBytes
    signature: SignatureBytes

    @classmethod
    def create(
        cls,
        signer: identity.Identity,
        *,
        network_id: bytes,
        epoch: int,
        shard: int,
        after: bytes | None,
        max_bytes: int,
    ) -> PullShardRequest:
        body = PullShardBody(network_id, EpochNumber(epoch), shard, after, max_bytes)
        signature = signer.sign(SHARD_PULL_CONTEXT, signing_bytes(body))
        return cls(body, signer.public_key.raw, signature)

    @property
    def peer_id(self) -> PeerId:
        return identity.peer_id_from_public_key(self.public_key)

    def verify(self, network_id: bytes, committee: Committee, remote: PeerId) -> None:
        """``VerificationError`` unless this is a well-signed pull by the owner of the shard in
        ``committee``'s epoch, sent by that owner itself (``remote``: the stream's peer)."""
        body = self.body
        if body.network_id != network_id:
            raise VerificationError("pull request is for another network")
        if body.epoch != committee.epoch:
            raise VerificationError(
                f"pull request is for epoch {body.epoch}, not {committee.epoch}"
            )
        if not MIN_PULL_BYTES <= body.max_bytes <= MAX_PULL_BYTES:
            raise VerificationError("pull budget out of range")
        if body.shard >= committee.n_shards:
            raise VerificationError("shard out of range")
        signer = self.peer_id
        if signer != remote:
            raise VerificationError("pull request signed by another peer than the sender")
        if committee.peer_of(body.shard) != signer:
            raise VerificationError(
                f"peer does not own shard {body.shard} in epoch {committee.epoch}"
            )
        _public_key(self.public_key).verify(SHARD_PULL_CONTEXT, _signed_body(body), self.signature)


@record
@dataclass(frozen=True, slots=True)
class ShardSliver:
    """One sliver of the pulled shard: the blob, which sliver of the pair, and its bytes."""

    blob_id: BlobIdBytes
    kind: SliverKind
    data: SliverData


@register(69)
@dataclass(frozen=True, slots=True)
class PullShardReply(Message):
    """One page of slivers in (blob id, kind) order; ``next_after`` is None at the end."""

    slivers: Annotated[
        tuple[ShardSliver, ...], ListSpec(record_spec(ShardSliver), MAX_PULL_SLIVERS)
    ]
    next_after: Cursor | None


# --------------------------------------------------------------------------------------------
# Shards in place


@register(70)
@dataclass(frozen=True, slots=True)
class ShardsInPlaceBody(Message):
    """What a committee member signs: it holds every sliver of ``shards`` in ``epoch``."""

    network_id: NetworkIdBytes
    epoch: EpochNumber
    public_key: PublicKeyBytes
    shards: ShardSet


@register(71)
@dataclass(frozen=True, slots=True)
class ShardsInPlace(Message):
    body: ShardsInPlaceBody
    signature: SignatureBytes

    @classmethod
    def create(
        cls, signer: identity.Identity, *, network_id: bytes, epoch: int, shards: Iterable[int]
    ) -> ShardsInPlace:
        body = ShardsInPlaceBody(
            network_id, EpochNumber(epoch), signer.public_key.raw, tuple(sorted(set(shards)))
        )
        return cls(body, signer.sign(SHARDS_IN_PLACE_CONTEXT, signing_bytes(body)))

    @property
    def peer_id(self) -> PeerId:
        return identity.peer_id_from_public_key(self.body.public_key)

    @property
    def epoch(self) -> int:
        return int(self.body.epoch)

    def verify(self, network_id: bytes, committee: Committee) -> None:
        """``VerificationError`` unless a member of ``committee`` signed it for that committee's
        epoch and owns every shard it names there."""
        body = self.body
        if body.network_id != network_id:
            raise VerificationError("shards-in-place report is for another network")
        if body.epoch != committee.epoch:
            raise VerificationError(f"report is for epoch {body.epoch}, not {committee.epoch}")
        signer = self.peer_id
        if signer not in committee:
            raise VerificationError("report signed by a peer outside the committee")
        if committee.member(signer).public_key != body.public_key:
            raise VerificationError("report key differs from the committee's")
        owned = set(committee.shards_of(signer))
        if not set(body.shards) <= owned:
            raise VerificationError("report names shards the signer does not own")
        _public_key(body.public_key).verify(
            SHARDS_IN_PLACE_CONTEXT, _signed_body(body), self.signature
        )


@register(72)
@dataclass(frozen=True, slots=True)
class GetShardsInPlaceRequest(Message):
    """The verified in-place reports a peer knows for ``epoch``."""

    epoch: EpochNumber


@register(73)
@dataclass(frozen=True, slots=True)
class GetShardsInPlaceReply(Message):
    reports: Annotated[tuple[ShardsInPlace, ...], ListSpec(record_spec(ShardsInPlace), MAX_SHARDS)]


# --------------------------------------------------------------------------------------------
# Which shards move


def moved_shards(previous: Committee, current: Committee) -> dict[int, PeerId]:
    """Shards whose owner changed from ``previous`` to ``current``: shard -> previous owner."""
    if previous.n_shards != current.n_shards:
        raise ValueError("committees of different shard counts")
    return {
        shard: previous.peer_of(shard)
        for shard in range(current.n_shards)
        if previous.peer_of(shard) != current.peer_of(shard)
    }


def gained_shards(previous: Committee, current: Committee, peer_id: PeerId) -> dict[int, PeerId]:
    """Shards ``peer_id`` owns in ``current`` but not in ``previous``, with their old owner."""
    return {
        shard: owner
        for shard, owner in moved_shards(previous, current).items()
        if current.peer_of(shard) == peer_id
    }


def reading_order(
    shard: int,
    current: Committee,
    previous: Committee | None,
    in_place: Sequence[int] | frozenset[int] | set[int],
) -> list[PeerId]:
    """Whom a reader asks for a shard's slivers of an older blob, in order (docs/design.md §5):
    while a moved shard's new owner has not reported it in place, its previous owner first."""
    owner = current.peer_of(shard)
    if previous is None or previous.n_shards != current.n_shards:
        return [owner]
    before = previous.peer_of(shard)
    if before == owner:
        return [owner]
    if shard in in_place:
        return [owner, before]
    return [before, owner]


def cursor_parts(cursor: bytes) -> tuple[BlobId, SliverKind]:
    """The blob id and sliver kind a cursor names; ``WireError`` if malformed."""
    if len(cursor) != CURSOR_LENGTH:
        raise WireError("pull cursor must be 33 bytes")
    try:
        kind = SliverKind(cursor[32])
    except ValueError:
        raise WireError("pull cursor names no sliver kind") from None
    return BlobId(cursor[:32]), kind


__all__ = [
    "CURSOR_LENGTH",
    "MAX_PULL_BYTES",
    "MAX_PULL_SLIVERS",
    "MIN_PULL_BYTES",
    "GetShardsInPlaceReply",
    "GetShardsInPlaceRequest",
    "PullShardBody",
    "PullShardReply",
    "PullShardRequest",
    "ShardSliver",
    "ShardsInPlace",
    "ShardsInPlaceBody",
    "cursor_of",
    "cursor_parts",
    "gained_shards",
    "moved_shards",
    "reading_order",
]
