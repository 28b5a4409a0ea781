"""Committees: shard weight, quorums, and the shard assignment (docs/design.md §5).

Owner: the core of membership. A committee is the set of storage peers of one epoch, each with a
weight, and a map from every shard (0..n-1) to the one peer that stores it. Everything here counts
**shards**, never peers: a peer's voting power is the number of shards it holds.

Quorum arithmetic (n shards, w shards of weight that answered):

- quorum: ``3w >= 2n + 1`` -- two quorums intersect in at least one honest shard (n = 3f + 1 gives
  w >= 2f + 1);
- validity: ``3w >= n + 1`` -- at least one honest shard is among them (f + 1 when n = 3f + 1).

Shard assignment is proportional to weight with the D'Hondt method: seat s goes to the peer with
the largest quotient ``weight / (seats_so_far + 1)``, skipping peers already at the cap. The counts
depend only on the weights, the cap and (to break exact ties) which peers already held how many
shards; the map then moves as few shards as the new counts allow. Every tie is broken by peer id so
that all peers compute the same map.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from walrus_p2p.core import identity
from walrus_p2p.errors import ConfigError
from walrus_p2p.types import Epoch, PeerId, ShardIndex

MIN_SHARDS = 4
MAX_SHARDS = 256


def max_faulty(n_shards: int) -> int:
    """f = (n - 1) // 3: the shard weight the protocol tolerates being faulty."""
    _check_n(n_shards)
    return (n_shards - 1) // 3


def quorum_threshold(n_shards: int) -> int:
    """The least shard weight w with ``3w >= 2n + 1`` (2f + 1 when n = 3f + 1)."""
    _check_n(n_shards)
    return -(-(2 * n_shards + 1) // 3)


def validity_threshold(n_shards: int) -> int:
    """The least shard weight w with ``3w >= n + 1`` (f + 1 when n = 3f + 1)."""
    _check_n(n_shards)
    return -(-(n_shards + 1) // 3)


def is_quorum(weight: int, n_shards: int) -> bool:
    """True when ``weight`` shards are a quorum: ``3w >= 2n + 1``."""
    _check_n(n_shards)
    return 3 * weight >= 2 * n_shards + 1


def is_validity(weight: int, n_shards: int) -> bool:
    """True when ``weight`` shards include at least one honest shard: ``3w >= n + 1``."""
    _check_n(n_shards)
    return 3 * weight >= n_shards + 1


def _check_n(n_shards: int) -> None:
    if not MIN_SHARDS <= n_shards <= MAX_SHARDS:
        raise ConfigError(f"number of shards must be in {MIN_SHARDS}..{MAX_SHARDS}, got {n_shards}")


# --------------------------------------------------------------------------------------------
# Shard assignment


def allocate_shards(
    weights: Mapping[PeerId, int],
    n_shards: int,
    *,
    max_shards_per_peer: int | None = None,
    previous_counts: Mapping[PeerId, int] | None = None,
) -> dict[PeerId, int]:
    """How many shards each peer gets: D'Hondt over ``weights`` with a per-peer cap.

    Seats go to the n largest quotients ``weight / k`` (k = 1..cap). Exact ties are broken first in
    favour of a seat the peer already held (k <= its previous count: it saves a move), then by
    peer id. Peers with weight 0 get nothing. Every peer in ``weights`` appears in the result.
    Raises ``ConfigError`` if the peers cannot fill n shards under the cap.
    """
    _check_n(n_shards)
    cap = n_shards if max_shards_per_peer is None else max_shards_per_peer
    if cap < 1:
        raise ConfigError(f"max shards per peer must be at least 1, got {cap}")
    cap = min(cap, n_shards)
    for peer_id, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ConfigError(f"weight of {peer_id} must be a non-negative integer, got {weight!r}")
    eligible = sorted(peer_id for peer_id, weight in weights.items() if weight > 0)
    if len(eligible) * cap < n_shards:
        raise ConfigError(
            f"{len(eligible)} peers with weight and at most {cap} shards each "
            f"cannot hold {n_shards} shards"
        )
    previous = previous_counts or {}
    counts = dict.fromkeys(weights, 0)

    def key(peer_id: PeerId, seat: int) -> tuple[Fraction, bool, PeerId]:
        # heapq pops the smallest: larger quotient first, then held seats, then lower peer id.
        held = seat <= previous.get(peer_id, 0)
        return (-Fraction(weights[peer_id], seat), not held, peer_id)

    heap = [key(peer_id, 1) for peer_id in eligible]
    heapq.heapify(heap)
    for _ in range(n_shards):
        _, _, peer_id = heapq.heappop(heap)
        counts[peer_id] += 1
        if counts[peer_id] < cap:
            heapq.heappush(heap, key(peer_id, counts[peer_id] + 1))
    return counts


def assign_shards(
    weights: Mapping[PeerId, int],
    n_shards: int,
    *,
    max_shards_per_peer: int | None = None,
    previous: Sequence[PeerId] | None = None,
) -> tuple[PeerId, ...]:
    """The shard map (index = shard, value = peer id) for ``weights``, moving as little as possible.

    The counts are :func:`allocate_shards`. Given the previous map, each peer keeps its previous
    shards up to its new count (the lowest-numbered ones), so shards move only away from peers that
    left or hold more than their new count, and only to peers under their new count. The freed
    shards, in increasing order, go to the peers under their count, in peer id order. Without a
    previous map, peers in peer id order take consecutive runs of shards.
    """
    if previous is not None and len(previous) != n_shards:
        raise ConfigError(f"previous shard map has {len(previous)} shards, expected {n_shards}")
    previous_counts: dict[PeerId, int] = {}
    for owner in previous or ():
        previous_counts[owner] = previous_counts.get(owner, 0) + 1
    counts = allocate_shards(
        weights,
        n_shards,
        max_shards_per_peer=max_shards_per_peer,
        previous_counts=previous_counts,
    )
    shard_map: list[PeerId | None] = [None] * n_shards
    kept = dict.fromkeys(counts, 0)
    for shard, owner in enumerate(previous or ()):
        if kept.get(owner, 0) < counts.get(owner, 0):
            shard_map[shard] = owner
            kept[owner] += 1
    free = iter([shard for shard, owner in enumerate(shard_map) if owner is None])
    for peer_id in sorted(counts):
        for _ in range(counts[peer_id] - kept[peer_id]):
            shard_map[next(free)] = peer_id
    result = tuple(owner for owner in shard_map if owner is not None)
    assert len(result) == n_shards  # the counts sum to n and every free shard was filled
    return result


def count_moves(before: Sequence[PeerId], after: Sequence[PeerId]) -> int:
    """How many shards change owner between two shard maps of the same n."""
    if len(before) != len(after):
        raise ConfigError(f"shard maps differ in size: {len(before)} and {len(after)}")
    return sum(1 for old, new in zip(before, after, strict=True) if old != new)


# --------------------------------------------------------------------------------------------
# The committee value


@dataclass(frozen=True, slots=True)
class Member:
    """A storage peer in a committee: its libp2p peer id, Ed25519 public key, weight, addresses."""

    peer_id: PeerId
    public_key: bytes
    weight: int
    addresses: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.public_key) != identity.PUBLIC_KEY_LENGTH:
            raise ConfigError(
                f"public key of {self.peer_id} must be {identity.PUBLIC_KEY_LENGTH} bytes, "
                f"got {len(self.public_key)}"
            )
        if identity.peer_id_from_public_key(self.public_key) != self.peer_id:
            raise ConfigError(f"peer id {self.peer_id} does not match its public key")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or self.weight < 0:
            raise ConfigError(f"weight of {self.peer_id} must be a non-negative integer")

    @classmethod
    def from_public_key(cls, public_key: bytes, weight: int, addresses: Iterable[str]) -> Member:
        """A member whose peer id is derived from its public key."""
        if len(public_key) != identity.PUBLIC_KEY_LENGTH:
            raise ConfigError(f"public key must be {identity.PUBLIC_KEY_LENGTH} bytes")
        return cls(
            peer_id=identity.peer_id_from_public_key(public_key),
            public_key=bytes(public_key),
            weight=weight,
            addresses=tuple(addresses),
        )


@dataclass(frozen=True, slots=True)
class Committee:
    """The storage peers of one epoch and the shard map (``shard_map[shard]`` is its peer id).

    Members are kept sorted by peer id. Every shard's peer is a member; a member may hold no shard.
    Build one with :meth:`create` (which runs the assignment) or directly from a received record
    (which is then checked for consistency, not recomputed).
    """

    epoch: Epoch
    members: tuple[Member, ...]
    shard_map: tuple[PeerId, ...]
    _by_peer: dict[PeerId, Member] = field(init=False, repr=False, compare=False)
    _shards_by_peer: dict[PeerId, tuple[ShardIndex, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.epoch < 0:
            raise ConfigError(f"epoch must be non-negative, got {self.epoch}")
        _check_n(len(self.shard_map))
        members = tuple(sorted(self.members, key=lambda member: member.peer_id))
        by_peer: dict[PeerId, Member] = {}
        for member in members:
            if member.peer_id in by_peer:
                raise ConfigError(f"peer {member.peer_id} is in the committee twice")
            by_peer[member.peer_id] = member
        shards: dict[PeerId, list[ShardIndex]] = {peer_id: [] for peer_id in by_peer}
        for shard, peer_id in enumerate(self.shard_map):
            if peer_id not in shards:
                raise ConfigError(f"shard {shard} is assigned to {peer_id}, not a member")
            shards[peer_id].append(ShardIndex(shard))
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "_by_peer", by_peer)
        object.__setattr__(
            self, "_shards_by_peer", {peer_id: tuple(s) for peer_id, s in shards.items()}
        )

    @classmethod
    def create(
        cls,
        epoch: Epoch,
        members: Iterable[Member],
        n_shards: int,
        *,
        max_shards_per_peer: int | None = None,
        previous: Committee | None = None,
    ) -> Committee:
        """A committee with the D'Hondt shard map, moving minimally from ``previous``."""
        members = tuple(members)
        weights: dict[PeerId, int] = {}
        for member in members:
            if member.peer_id in weights:
                raise ConfigError(f"peer {member.peer_id} is in the committee twice")
            weights[member.peer_id] = member.weight
        shard_map = assign_shards(
            weights,
            n_shards,
            max_shards_per_peer=max_shards_per_peer,
            previous=None if previous is None else previous.shard_map,
        )
        return cls(epoch=epoch, members=members, shard_map=shard_map)

    @property
    def n_shards(self) -> int:
        return len(self.shard_map)

    @property
    def peer_ids(self) -> tuple[PeerId, ...]:
        return tuple(member.peer_id for member in self.members)

    def member(self, peer_id: PeerId) -> Member:
        """The member with this peer id; ``KeyError`` if it is not in the committee."""
        return self._by_peer[peer_id]

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._by_peer

    def shards_of(self, peer_id: PeerId) -> tuple[ShardIndex, ...]:
        """The shards a peer holds, in increasing order (empty if it holds none or is no member)."""
        return self._shards_by_peer.get(peer_id, ())

    def peer_of(self, shard: int) -> PeerId:
        """The peer that holds a shard; ``IndexError`` outside 0..n-1."""
        if not 0 <= shard < len(self.shard_map):
            raise IndexError(f"shard {shard} out of range 0..{len(self.shard_map) - 1}")
        return self.shard_map[shard]

    def shard_weight(self, peer_ids: Iterable[PeerId]) -> int:
        """The number of shards held by a set of peers (each peer counted once)."""
        return sum(len(self.shards_of(peer_id)) for peer_id in set(peer_ids))

    def is_quorum(self, peer_ids: Iterable[PeerId]) -> bool:
        return is_quorum(self.shard_weight(peer_ids), self.n_shards)

    def is_validity(self, peer_ids: Iterable[PeerId]) -> bool:
        return is_validity(self.shard_weight(peer_ids), self.n_shards)
