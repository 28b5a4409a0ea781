"""The economy's arithmetic: units, prices, quorum quantiles, pool splits and the reward payout.

Owner: the pure formulas of docs/economics.md, with exact integer arithmetic. Every function here
either preserves its input sum to the unit or says where the remainder goes, so the ledger
(:mod:`walrus_p2p.core.ledger`) never creates or destroys a unit of WAL:

- storage is priced per 1 MiB of *encoded* size, rounded up (:func:`storage_units`): a storage
  price per unit per epoch and a write price per unit, paid once at registration;
- a payment for epochs [s, e) goes into the pools of those epochs in equal parts, the remainder
  of the division into the pool of epoch s (:func:`split_evenly`);
- the price in force is the lowest price that members holding a quorum of the committee's shards
  voted at or below, the capacity the highest one that a quorum voted at or above
  (:func:`quorum_low`, :func:`quorum_high`);
- an epoch's payout: 3 % burned (rounded down), the rest to the members in proportion to their
  shards, each member's commission (basis points, rounded down) to the member, the rest to its
  stakers in proportion to their stake (:func:`split_payout`); remainders by largest remainder,
  ties by key (:func:`largest_remainder`).

Shard counts from stake reuse :func:`walrus_p2p.core.committee.allocate_shards` (D'Hondt with the
per-member cap).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from walrus_p2p.core.committee import Committee, allocate_shards, is_quorum
from walrus_p2p.core.economy_messages import MAX_COMMISSION_BPS, VoteEntry
from walrus_p2p.core.encoding import EncodingConfig
from walrus_p2p.types import PeerId

MIB = 1 << 20
"""The price unit: one MiB of encoded size."""
FROST_PER_WAL = 10**9
"""Amounts are integers of FROST, WAL's base unit."""
BPS = 10_000
"""Basis points in a whole."""
BURN_BPS = 300
"""The share of each payout that is burned: 3 %."""
COMMISSION_DELAY_EPOCHS = 2
"""A commission voted in the settlement of epoch e applies to the rewards of epoch e + 2."""
DEFAULT_COMMISSION_BPS = 0
"""The commission of a member that never voted one."""
VOTE_OUT_AFTER_EPOCHS = 3
"""A member with shards that goes this many epochs in a row without an availability
certificate (settlements that list who is certified) is voted out (docs/challenges.md)."""
VOTE_OUT_EPOCHS = 3
"""How many committees after that exclude it; then it may join again like a newcomer."""


@dataclass(frozen=True, slots=True)
class VoteSettings:
    """What a storage peer votes each epoch (``peer.toml`` ``[vote]``; docs/economics.md,
    "Votes"): prices in FROST per MiB of encoded size (storage per epoch, write once), the
    capacity it offers in bytes and its commission in basis points (0..10 000)."""

    storage_price: int
    write_price: int
    capacity: int
    commission_bps: int = DEFAULT_COMMISSION_BPS

    def __post_init__(self) -> None:
        for name in ("storage_price", "write_price", "capacity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
                raise ValueError(f"{name} must be an integer in 0..2^63-1, got {value!r}")
        rate = self.commission_bps
        if isinstance(rate, bool) or not isinstance(rate, int) or not 0 <= rate <= BPS:
            raise ValueError(f"commission_bps must be an integer in 0..{BPS}, got {rate!r}")


K = TypeVar("K", bound=str | bytes)
"""Keys of a proportional split: peer ids or stake ids (ordered, so remainders have a rule)."""


def storage_units(encoded_size: int) -> int:
    """MiB of encoded size, rounded up (0 for 0)."""
    if encoded_size < 0:
        raise ValueError(f"encoded size must be non-negative, got {encoded_size}")
    return -(-encoded_size // MIB)


def encoded_size(length: int, n_shards: int) -> int:
    """Bytes stored over all shards for a blob of ``length`` bytes (docs/design.md §3): what
    storage is priced on."""
    return EncodingConfig.for_shards(n_shards).encoded_length(length)


@dataclass(frozen=True, slots=True)
class Prices:
    """Prices in force: FROST per unit (MiB of encoded size) per epoch, and per unit once."""

    storage_price: int
    write_price: int

    def storage_cost(self, units: int, epochs: int) -> int:
        return units * self.storage_price * epochs

    def write_fee(self, units: int) -> int:
        return units * self.write_price


@dataclass(frozen=True, slots=True)
class Quote:
    """What storing a blob costs: the resource (storage) and the registration (write)."""

    units: int
    epochs: int
    storage_cost: int
    write_fee: int

    @property
    def total(self) -> int:
        return self.storage_cost + self.write_fee


def quote(encoded: int, epochs: int, prices: Prices) -> Quote:
    """The cost of ``epochs`` epochs of a blob of ``encoded`` bytes of encoded size."""
    units = storage_units(encoded)
    return Quote(units, epochs, prices.storage_cost(units, epochs), prices.write_fee(units))


def split_evenly(amount: int, start: int, end: int) -> dict[int, int]:
    """``amount`` over the epochs start..end-1 in equal parts; the remainder of the division
    goes to epoch ``start``. The parts sum to ``amount`` exactly."""
    if end <= start or amount < 0:
        raise ValueError(f"cannot split {amount} over epochs [{start}, {end})")
    epochs = end - start
    part, remainder = divmod(amount, epochs)
    parts = dict.fromkeys(range(start, end), part)
    parts[start] += remainder
    return parts


# --------------------------------------------------------------------------------------------
# Quorum quantiles of votes


def _shard_weights(committee: Committee) -> dict[PeerId, int]:
    return {peer_id: len(committee.shards_of(peer_id)) for peer_id in committee.peer_ids}


def quorum_low(votes: Mapping[PeerId, int], committee: Committee) -> int | None:
    """The lowest value v such that members voting at most v hold a quorum of the committee's
    shards (the two-thirds quantile by shard weight, from below); None if the voters do not hold
    a quorum. Votes of non-members and members without shards count for nothing; a member that
    did not vote counts as voting above every value."""
    weights = _shard_weights(committee)
    held = 0
    for value, peer_id in sorted((value, peer_id) for peer_id, value in votes.items()):
        held += weights.get(peer_id, 0)
        if is_quorum(held, committee.n_shards):
            return value
    return None


def quorum_high(votes: Mapping[PeerId, int], committee: Committee) -> int | None:
    """The highest value v such that members voting at least v hold a quorum of the shards
    (capacity is voted "from above"); None if the voters do not hold a quorum."""
    negated = quorum_low({peer_id: -value for peer_id, value in votes.items()}, committee)
    return None if negated is None else -negated


def prices_in_force(votes: Iterable[VoteEntry], committee: Committee, previous: Prices) -> Prices:
    """The prices of the committee's epoch from the votes: each price is :func:`quorum_low`; a
    price without a quorum of voters stays at ``previous``."""
    entries = list(votes)
    storage = quorum_low({vote.peer_id: vote.storage_price for vote in entries}, committee)
    write = quorum_low({vote.peer_id: vote.write_price for vote in entries}, committee)
    return Prices(
        previous.storage_price if storage is None else storage,
        previous.write_price if write is None else write,
    )


def capacity_in_force(votes: Iterable[VoteEntry], committee: Committee) -> int | None:
    """The capacity (bytes) a quorum of shards offers: :func:`quorum_high` of the votes."""
    return quorum_high({vote.peer_id: vote.capacity for vote in votes}, committee)


# --------------------------------------------------------------------------------------------
# Proportional splits and the payout


def largest_remainder(total: int, weights: Mapping[K, int]) -> dict[K, int]:
    """``total`` in proportion to ``weights``, in integers that sum to ``total`` exactly.

    Each key gets ``floor(total * w / W)``; the units left (fewer than the number of keys with
    weight) go one each to the largest remainders ``total * w mod W``, ties to the smaller key.
    Keys of weight 0 get 0. ``ValueError`` if ``total`` is positive and all weights are 0.
    """
    if total < 0 or any(weight < 0 for weight in weights.values()):
        raise ValueError("total and weights must be non-negative")
    whole = sum(weights.values())
    shares = dict.fromkeys(weights, 0)
    if total == 0:
        return shares
    if whole == 0:
        raise ValueError(f"cannot split {total} over zero weight")
    remainders: list[tuple[int, K]] = []
    for key, weight in weights.items():
        share, remainder = divmod(total * weight, whole)
        shares[key] = share
        if weight:
            remainders.append((-remainder, key))
    left = total - sum(shares.values())
    for _, key in sorted(remainders)[:left]:
        shares[key] += 1
    return shares


@dataclass(frozen=True, slots=True)
class PayoutSplit:
    """Where one epoch's payout goes. ``burned + sum(member_rewards) + sum(staker_rewards)`` is
    the payout, exactly.

    - ``member_rewards``: to each member's own account: its commission, or its whole share when
      nobody staked with it;
    - ``staker_rewards``: by stake id, added to the stake (paid out with it on withdrawal);
    - ``burned``: 3 % of the payout, plus the commission of slashed members.
    """

    burned: int
    member_rewards: Mapping[PeerId, int]
    staker_rewards: Mapping[bytes, int]

    @property
    def total(self) -> int:
        return self.burned + sum(self.member_rewards.values()) + sum(self.staker_rewards.values())


def split_payout(
    payout: int,
    committee: Committee,
    *,
    commissions: Mapping[PeerId, int],
    stakes: Mapping[PeerId, Mapping[bytes, int]],
    slashed: Collection[PeerId] = (),
    burn_bps: int = BURN_BPS,
) -> PayoutSplit:
    """Split an epoch's payout over the committee that served in it (docs/economics.md,
    "Rewards").

    1. ``burned = payout * burn_bps // 10000``; the rest, D, is distributable.
    2. Member m gets ``D * shards(m) / n`` by :func:`largest_remainder` (members without shards
       get nothing).
    3. Its commission ``share * bps(m) // 10000`` goes to m (burned instead if m is slashed);
       ``bps`` comes from ``commissions`` (default :data:`DEFAULT_COMMISSION_BPS`).
    4. The rest goes to the stakes counted for m in the epoch (``stakes[m]``: stake id ->
       principal) by :func:`largest_remainder`; without stakes, it goes to m as well (and is
       burned if m is slashed: slashing takes the member's reward, never a staker's).
    """
    if payout < 0 or not 0 <= burn_bps <= BPS:
        raise ValueError("payout and burn rate must be non-negative, the rate at most 10000")
    burned = payout * burn_bps // BPS
    shards = _shard_weights(committee)
    shares = largest_remainder(payout - burned, shards)
    member_rewards: dict[PeerId, int] = {}
    staker_rewards: dict[bytes, int] = {}
    for peer_id in sorted(shares):
        share = shares[peer_id]
        if share == 0:
            continue
        rate = commissions.get(peer_id, DEFAULT_COMMISSION_BPS)
        if not 0 <= rate <= MAX_COMMISSION_BPS:
            raise ValueError(f"commission of {peer_id} out of range: {rate}")
        member_stakes = {stake: amount for stake, amount in stakes.get(peer_id, {}).items()}
        if sum(member_stakes.values()) == 0:
            commission, rest = share, 0
        else:
            commission = share * rate // BPS
            rest = share - commission
        if peer_id in slashed:
            burned += commission
        elif commission:
            member_rewards[peer_id] = commission
        if rest:
            for stake, reward in largest_remainder(rest, member_stakes).items():
                if reward:
                    staker_rewards[stake] = staker_rewards.get(stake, 0) + reward
    return PayoutSplit(burned, member_rewards, staker_rewards)


def shard_counts_from_stake(
    stake: Mapping[PeerId, int],
    n_shards: int,
    *,
    max_shards_per_peer: int | None = None,
    previous_counts: Mapping[PeerId, int] | None = None,
) -> dict[PeerId, int]:
    """Shards per candidate by D'Hondt over its active stake, with the per-member cap
    (:func:`walrus_p2p.core.committee.allocate_shards`; ties favour seats already held, then the
    smaller peer id). Candidates without stake get none."""
    return allocate_shards(
        stake,
        n_shards,
        max_shards_per_peer=max_shards_per_peer,
        previous_counts=previous_counts,
    )
