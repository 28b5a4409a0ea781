"""The ledger: balances, storage resources, stake and reward pools as a function of what is
certified (the signing rule of a committee member is :mod:`walrus_p2p.core.order_signer`).

Owner: the state of the economy (docs/economics.md; docs/design.md §5). There is no chain and no
total order. The state is a deterministic function of two sets:

- **certified orders** (:class:`~walrus_p2p.core.economy_messages.CertifiedOrder`, verified by
  the caller with ``verify_certified_order``), applied per account in sequence order; an order
  that arrives before an earlier one of its account, or whose debit the known balance does not
  cover yet, or a withdrawal whose stake is not withdrawable yet, *waits* and is retried when
  the state changes;
- **settlements** (:class:`~walrus_p2p.core.economy_messages.EpochSettlement`, one per epoch
  change, agreed with the epoch record), applied in epoch order; a settlement waits for the stake
  orders it names and until the known reward fund covers its payout.

Shared blobs (docs/economics.md, "Shared blobs"): funding one is a credit, so it commutes like a
transfer; spending its funds is the one step that would need a total order (two extension
requests could each be covered and not both), so a request only *asks*, and the settlement of
the epoch change lists the extensions carried out, with their new ends, in one agreed order.

Why the order of arrival does not matter: applying an order or a settlement only ever *adds* to
the balances of other accounts and to what later items wait for, and an account's own debits
come only from its own orders, which are applied in its sequence order. So an item that can be
applied stays applicable whatever else is applied first, and every arrival order reaches the
same state (the tests apply random histories in random orders). Orders whose sequence number
comes up but that can never be valid (a resource the account does not own, a stake withdrawn
twice: only a faulty quorum certifies such orders) are *void*: they use up the sequence number
and change nothing else.

Conservation: ``balances + stake (principal and rewards) + pools + reward fund + burned`` equals
the genesis supply after every step (:meth:`Ledger.total`), because every step moves amounts
between these places, and every split is exact (:mod:`walrus_p2p.core.economy`).

"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

from walrus_p2p.core import identity
from walrus_p2p.core.challenge_payout import certified_payout
from walrus_p2p.core.committee import Committee
from walrus_p2p.core.economy import (
    COMMISSION_DELAY_EPOCHS,
    DEFAULT_COMMISSION_BPS,
    VOTE_OUT_AFTER_EPOCHS,
    VOTE_OUT_EPOCHS,
    Prices,
    capacity_in_force,
    prices_in_force,
    split_evenly,
    split_payout,
    storage_units,
)
from walrus_p2p.core.economy_messages import (
    AttachBlobBody,
    BuyStorageBody,
    EpochSettlement,
    ExtendSharedBlobBody,
    ExtendStorageBody,
    FundSharedBlobBody,
    OrderBody,
    ReleaseStorageBody,
    RequestWithdrawBody,
    ShareBlobBody,
    SharedExtension,
    SignedOrder,
    SplitKind,
    SplitStorageBody,
    StakeBody,
    TransferBody,
    VoteEntry,
    check_settlement_form,
    decode_order_body,
    order_id,
    settlement_id,
    split_resource_ids,
)
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.errors import OrderRefusedError
from walrus_p2p.types import BlobId, Epoch, PeerId

__all__ = [
    "EconomyParameters",
    "Ledger",
    "Outcome",
    "Resource",
    "SharedRequest",
    "StakePosition",
    "StakeState",
]


@dataclass(frozen=True, slots=True)
class EconomyParameters:
    """What the genesis fixes for the economy."""

    network_id: bytes
    initial_prices: Prices
    max_lifetime_epochs: int
    """An order of epoch c may pay for epochs before c + this (the genesis's max_epochs_ahead)."""

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> EconomyParameters:
        economy = genesis.economy_or_default
        return cls(
            network_id=genesis.network_id,
            initial_prices=Prices(economy.storage_price, economy.write_price),
            max_lifetime_epochs=genesis.limits.max_epochs_ahead,
        )


class Outcome(enum.Enum):
    """What adding an order or a settlement did."""

    APPLIED = "applied"
    """Applied now (possibly with waiting items it unblocked)."""
    WAITING = "waiting"
    """Kept until what it waits for arrives (an earlier order, credits, a settlement)."""
    DUPLICATE = "duplicate"
    """Already known: nothing changed."""
    VOID = "void"
    """Certified but invalid when its turn came: it used its sequence number, nothing else."""


@dataclass(frozen=True, slots=True)
class Resource:
    """A storage resource: ``units`` MiB of encoded size for epochs [start, end), owned by an
    account; attached to a blob (consumed) or free for a registration."""

    owner: bytes
    units: int
    start_epoch: int
    end_epoch: int
    blob_id: bytes | None = None
    deletable: bool = False
    encoded_size: int = 0
    """The encoded size the attach order declared (and paid the write fee for); 0 when free."""
    shared: bool = False
    """A shared blob (a :class:`ShareBlobBody`): extended only from its funds, by settlements."""


class StakeState(enum.Enum):
    PENDING = "pending"
    """Staked; not yet listed by a settlement."""
    ACTIVE = "active"
    """Counted from committee ``active_from`` on."""
    WITHDRAWABLE = "withdrawable"
    """Its withdrawal request was listed; the committees that counted it are over."""


@dataclass(frozen=True, slots=True)
class StakePosition:
    """One stake order's stake with one storage peer (``peer`` is its public key)."""

    staker: bytes
    peer: bytes
    principal: int
    state: StakeState = StakeState.PENDING
    rewards: int = 0
    active_from: int | None = None
    active_until: int | None = None
    """The last committee that counts it (set when its withdrawal request is listed)."""
    request: bytes | None = None
    """The id of its withdrawal request order, once certified."""

    @property
    def peer_id(self) -> PeerId:
        return identity.peer_id_from_public_key(self.peer)

    def counts_in(self, epoch: int) -> bool:
        """Whether the committee of ``epoch`` counts this stake (and it earns that epoch)."""
        if self.active_from is None or epoch < self.active_from:
            return False
        return self.active_until is None or epoch <= self.active_until


@dataclass(frozen=True, slots=True)
class SharedRequest:
    """A certified request to extend a shared blob, not yet carried out or lapsed."""

    shared: bytes
    epochs: int
    epoch: int
    """The epoch the request was certified in: the settlements of it and of the next epoch
    may list it; then it lapses."""


@dataclass(frozen=True, slots=True)
class _Waiting:
    order: SignedOrder
    body: OrderBody
    order_id: bytes


_Key: TypeAlias = tuple[bytes, int]


class _Wait(Exception):
    """Internal: the order cannot be applied yet."""


class Ledger:
    """The economy's state; see the module docstring for the rules.

    Build with :meth:`from_genesis`. Feed it certified orders (:meth:`add_order`, after
    ``verify_certified_order``) and settlements (:meth:`add_settlement`, with the committees of
    the settled epoch and of the next one, from verified epoch records), in any order.
    """

    def __init__(self, parameters: EconomyParameters, allocations: Mapping[bytes, int]) -> None:
        self.parameters = parameters
        self._balances: dict[bytes, int] = {k: v for k, v in allocations.items() if v}
        self.supply = sum(allocations.values())
        self._next_sequence: dict[bytes, int] = {}
        self._applied: dict[_Key, bytes] = {}
        self._voided: dict[_Key, str] = {}
        self._waiting: dict[bytes, dict[int, _Waiting]] = {}
        self._resources: dict[bytes, Resource] = {}
        self._attached: dict[tuple[bytes, bytes], set[bytes]] = {}
        """(owner, blob id) -> ids of the owner's resources attached to the blob (derived from
        ``_resources``, for the payment check of blob records: :mod:`walrus_p2p.core.payments`)."""
        self._stakes: dict[bytes, StakePosition] = {}
        self._requests: dict[bytes, bytes] = {}  # request order id -> stake id
        self._stake_orders: set[bytes] = set()  # every stake id ever made, withdrawn ones too
        self._pools: dict[int, int] = {}
        self._fund = 0
        self._burned = 0
        self._settled: int = -1
        self._settlements: dict[int, bytes] = {}
        self._pending_settlements: dict[int, tuple[EpochSettlement, Committee, Committee]] = {}
        self._prices: dict[int, Prices] = {0: parameters.initial_prices}
        self._capacity: dict[int, int] = {}
        self._commissions: dict[PeerId, dict[int, int]] = {}
        self._votes_in_force: dict[PeerId, tuple[VoteEntry, int]] = {}
        self._fail_streaks: dict[PeerId, int] = {}
        """Epochs in a row each member with shards went without an availability certificate."""
        self._shared_funds: dict[bytes, int] = {}
        """Shared blob id (its resource id) -> the funds it holds."""
        self._shared_requests: dict[bytes, SharedRequest] = {}
        self._shared_closed: set[bytes] = set()
        """Extension requests carried out or lapsed."""
        self._slash_counts: dict[PeerId, int] = {}
        """How many settlements slashed each member (one per distinct conflict evidence)."""
        self._voted_out: dict[PeerId, int] = {}
        """Voted-out peers and the first epoch whose committee may include them again."""
        """Each voter's newest settled vote and the epoch it was cast in."""

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> Ledger:
        economy = genesis.economy_or_default
        allocations = {item.account: item.amount for item in economy.allocations}
        return cls(EconomyParameters.from_genesis(genesis), allocations)

    # Queries ---------------------------------------------------------------------------------

    def balance(self, account: bytes) -> int:
        return self._balances.get(account, 0)

    def next_sequence(self, account: bytes) -> int:
        """The sequence number of the account's next order."""
        return self._next_sequence.get(account, 0)

    def applied_order(self, account: bytes, sequence: int) -> bytes | None:
        """The id of the certified order applied (or voided) at (account, sequence)."""
        return self._applied.get((account, sequence))

    def void_reason(self, account: bytes, sequence: int) -> str | None:
        return self._voided.get((account, sequence))

    def resource(self, resource_id: bytes) -> Resource | None:
        return self._resources.get(resource_id)

    def resources_of(self, account: bytes) -> dict[bytes, Resource]:
        return {key: res for key, res in self._resources.items() if res.owner == account}

    def attached_resources(self, account: bytes, blob_id: bytes) -> dict[bytes, Resource]:
        """The account's resources attached to ``blob_id`` (what paid for its registrations)."""
        identifiers = self._attached.get((account, blob_id), set())
        return {key: self._resources[key] for key in sorted(identifiers)}

    def stake(self, stake_id: bytes) -> StakePosition | None:
        return self._stakes.get(stake_id)

    @property
    def stakes(self) -> Mapping[bytes, StakePosition]:
        return dict(self._stakes)

    def stakes_of(self, account: bytes) -> dict[bytes, StakePosition]:
        """The stakes ``account`` holds (not withdrawn yet), by stake id."""
        return {k: v for k, v in self._stakes.items() if v.staker == account}

    @property
    def pools(self) -> Mapping[int, int]:
        """Reward pools of the epochs not settled yet, by epoch (non-empty ones)."""
        return {epoch: amount for epoch, amount in sorted(self._pools.items()) if amount}

    @property
    def reward_fund(self) -> int:
        """What settled epochs' pools hold beyond what their payouts took: payments certified
        after their epoch was settled, or payouts smaller than the pool. Later payouts use it."""
        return self._fund

    @property
    def burned(self) -> int:
        return self._burned

    @property
    def settled_epoch(self) -> int:
        """The last epoch whose settlement is applied (-1: none)."""
        return self._settled

    def prices(self, epoch: int) -> Prices:
        """The prices in force in ``epoch`` as far as this ledger knows (the newest set by a
        settlement at or before it, else the genesis prices)."""
        known = [e for e in self._prices if e <= epoch]
        return self._prices[max(known)] if known else self.parameters.initial_prices

    def capacity(self, epoch: int) -> int | None:
        return self._capacity.get(epoch)

    def commission(self, peer_id: PeerId, epoch: int) -> int:
        """The commission (basis points) applied to ``peer_id``'s rewards of ``epoch``."""
        schedule = self._commissions.get(peer_id, {})
        effective = [e for e in schedule if e <= epoch]
        return schedule[max(effective)] if effective else DEFAULT_COMMISSION_BPS

    def stake_by_peer(self, epoch: int) -> dict[PeerId, int]:
        """The principal counted for each peer by the committee of ``epoch`` (known so far)."""
        totals: dict[PeerId, int] = {}
        for position in self._stakes.values():
            if position.counts_in(epoch):
                totals[position.peer_id] = totals.get(position.peer_id, 0) + position.principal
        return totals

    def _streaks_after(
        self, settlement: EpochSettlement, committee: Committee
    ) -> tuple[dict[PeerId, int], dict[PeerId, int]]:
        """The failure streaks and the voted-out members (until which epoch) once
        ``settlement`` (of ``committee``'s epoch) is applied."""
        streaks = dict(self._fail_streaks)
        out = {peer: until for peer, until in self._voted_out.items() if until > settlement.epoch}
        for peer_id in settlement.slashed:
            # Approved two orders of one slot (docs/economics.md, "Slashing"): out as well.
            out[PeerId(peer_id)] = max(
                out.get(PeerId(peer_id), 0), settlement.epoch + 1 + VOTE_OUT_EPOCHS
            )
        if settlement.certified is None:
            return streaks, out  # no challenge ran: nobody failed or passed
        certified = set(settlement.certified)
        for peer_id in committee.peer_ids:
            if not committee.shards_of(peer_id):
                continue
            streaks[peer_id] = 0 if peer_id in certified else streaks.get(peer_id, 0) + 1
            if streaks[peer_id] >= VOTE_OUT_AFTER_EPOCHS:
                out[peer_id] = settlement.epoch + 1 + VOTE_OUT_EPOCHS
                streaks[peer_id] = 0
        return streaks, out

    def voted_out_after(self, settlement: EpochSettlement, committee: Committee) -> set[PeerId]:
        """The peers the committee of ``settlement.epoch + 1`` must not include: members that
        went ``VOTE_OUT_AFTER_EPOCHS`` epochs in a row without an availability certificate
        (docs/challenges.md, "Voting out") and members the settlement slashes for approving
        conflicting orders (docs/economics.md, "Slashing") are out for ``VOTE_OUT_EPOCHS``
        committees."""
        _, out = self._streaks_after(settlement, committee)
        return {peer for peer, until in out.items() if until > settlement.epoch + 1}

    def stake_after(self, settlement: EpochSettlement) -> dict[PeerId, int]:
        """The stake per peer the committee of ``settlement.epoch + 1`` would count if this
        settlement were applied: the weights for its D'Hondt (what a proposer and the validators
        of an epoch change compute)."""
        epoch = settlement.epoch + 1
        positions = dict(self._stakes)
        for stake_id in settlement.stake_activations:
            position = positions.get(stake_id)
            if position is not None and position.state is StakeState.PENDING:
                positions[stake_id] = dataclasses.replace(position, active_from=epoch)
        for request in settlement.withdrawal_requests:
            stake_id = self._requests.get(request, b"")
            position = positions.get(stake_id)
            if position is not None:
                positions[stake_id] = dataclasses.replace(position, active_until=epoch - 1)
        totals: dict[PeerId, int] = {}
        for position in positions.values():
            if position.counts_in(epoch):
                totals[position.peer_id] = totals.get(position.peer_id, 0) + position.principal
        return totals

    def payable(self, epoch: int) -> int | None:
        """What the settlement of ``epoch`` can pay out at most, from what this ledger knows:
        the reward fund and the pools of epochs up to ``epoch``, less the payouts of known
        settlements of earlier epochs not applied yet. None if the settlement of some earlier
        epoch is not known here at all (then this ledger cannot tell)."""
        if any(e not in self._pending_settlements for e in range(self._settled + 1, epoch)):
            return None
        owed = sum(entry[0].payout for e, entry in self._pending_settlements.items() if e < epoch)
        return max(0, self._fund_through(epoch) - owed)

    def _listed(self) -> set[bytes]:
        listed: set[bytes] = set()
        for settlement, _, _ in self._pending_settlements.values():
            listed.update(settlement.stake_activations)
            listed.update(settlement.withdrawal_requests)
        return listed

    def stakes_to_activate(self) -> list[bytes]:
        """Pending stake orders no known settlement lists yet, sorted (a proposer lists them)."""
        listed = self._listed()
        return sorted(
            stake_id
            for stake_id, position in self._stakes.items()
            if position.state is StakeState.PENDING and stake_id not in listed
        )

    def requests_to_list(self) -> list[bytes]:
        """Withdrawal requests whose stake is not withdrawable yet and that no known
        settlement lists, sorted."""
        listed = self._listed()
        found = []
        for request, stake_id in self._requests.items():
            position = self._stakes.get(stake_id)
            if position is None or position.state is StakeState.WITHDRAWABLE:
                continue
            if request not in listed:
                found.append(request)
        return sorted(found)

    def vote_in_force(self, peer_id: PeerId) -> tuple[VoteEntry, int] | None:
        """The newest vote of ``peer_id`` a settlement listed, and the epoch it was cast in."""
        return self._votes_in_force.get(peer_id)

    def knows_stake_order(self, stake_id: bytes) -> bool:
        return stake_id in self._stake_orders

    def knows_withdrawal_request(self, request: bytes) -> bool:
        return request in self._requests

    def settlement_known(self, epoch: int) -> bool:
        """Whether the settlement of ``epoch`` was added (applied or waiting)."""
        return epoch in self._settlements or epoch in self._pending_settlements

    def waiting_orders(self) -> list[tuple[bytes, int]]:
        """(account, sequence) of the certified orders still waiting."""
        return sorted((account, seq) for account, queue in self._waiting.items() for seq in queue)

    def waiting_settlements(self) -> list[int]:
        return sorted(self._pending_settlements)

    def slash_count(self, peer_id: PeerId) -> int:
        """How many applied settlements slashed ``peer_id``."""
        return self._slash_counts.get(peer_id, 0)

    def shared_funds(self, shared_id: bytes) -> int:
        return self._shared_funds.get(shared_id, 0)

    def shared_blobs(self, key: bytes) -> dict[bytes, Resource]:
        """The shared blob whose id is ``key``, or every shared blob of the blob id ``key``."""
        resource = self._resources.get(key)
        if resource is not None and resource.shared:
            return {key: resource}
        return {
            rid: res for rid, res in self._resources.items() if res.shared and res.blob_id == key
        }

    def pending_shared_requests(self, shared_id: bytes) -> int:
        return sum(1 for r in self._shared_requests.values() if r.shared == shared_id)

    def total(self) -> int:
        """Everything the ledger holds; equals :attr:`supply` at all times."""
        stake = sum(p.principal + p.rewards for p in self._stakes.values())
        return (
            sum(self._balances.values())
            + sum(self._shared_funds.values())
            + stake
            + sum(self._pools.values())
            + self._fund
            + self._burned
        )

    def snapshot(self) -> tuple[object, ...]:
        """A canonical, comparable picture of the whole state (for tests and audits)."""
        return (
            sorted((k, v) for k, v in self._balances.items() if v),
            sorted(self._next_sequence.items()),
            sorted(self._applied.items()),
            sorted(self._voided.items()),
            self.waiting_orders(),
            sorted((k, dataclasses.astuple(v)) for k, v in self._resources.items()),
            sorted((k, repr(v)) for k, v in self._stakes.items()),
            sorted(self.pools.items()),
            self._fund,
            self._burned,
            self._settled,
            self.waiting_settlements(),
            sorted(self._prices.items(), key=lambda item: item[0]),
            sorted(self._capacity.items()),
            sorted((k, sorted(v.items())) for k, v in self._commissions.items()),
            sorted(self._votes_in_force.items()),
            sorted(self._fail_streaks.items()),
            sorted(self._voted_out.items()),
            sorted(self._shared_funds.items()),
            sorted(self._slash_counts.items()),
            sorted((k, dataclasses.astuple(v)) for k, v in self._shared_requests.items()),
        )

    # Orders ----------------------------------------------------------------------------------

    def add_order(self, order: SignedOrder) -> Outcome:
        """Add a certified order (the caller verified its certificate).

        Raises ``OrderRefusedError``: ``ORDER_MALFORMED`` if the body does not decode, and
        ``ORDER_CONFLICT`` if another order is already certified for its (account, sequence):
        that takes faulty members holding more than f shards, and changes nothing here.
        """
        body = decode_order_body(order)
        identifier = order_id(order)
        key = (body.account, body.sequence)
        applied = self._applied.get(key)
        queue = self._waiting.setdefault(body.account, {})
        waiting = queue.get(body.sequence)
        known = applied if applied is not None else None if waiting is None else waiting.order_id
        if known is not None:
            if not queue:
                del self._waiting[body.account]
            if known != identifier:
                raise OrderRefusedError(
                    "ORDER_CONFLICT",
                    f"another order is certified for sequence {body.sequence} of this account",
                )
            return Outcome.DUPLICATE if applied is not None else Outcome.WAITING
        queue[body.sequence] = _Waiting(order, body, identifier)
        self._drain()
        if key in self._voided:
            return Outcome.VOID
        return Outcome.APPLIED if key in self._applied else Outcome.WAITING

    def check_order(self, body: OrderBody, identifier: bytes) -> None:
        """Whether an order may be approved now: next in its account's sequence, valid, and
        covered. Raises ``OrderRefusedError`` with the reason; changes nothing."""
        account, sequence = body.account, body.sequence
        expected = self.next_sequence(account)
        if sequence < expected:
            raise OrderRefusedError(
                "ORDER_REPLAYED", f"sequence {sequence} is used; the next one is {expected}"
            )
        if sequence > expected:
            raise OrderRefusedError(
                "ORDER_OUT_OF_SEQUENCE",
                f"sequence {sequence} is ahead; the certificate of {expected} is not known here",
            )
        waiting = self._waiting.get(account, {}).get(sequence)
        if waiting is not None and waiting.order_id != identifier:
            raise OrderRefusedError("ORDER_CONFLICT", "another order is certified for this slot")
        if isinstance(body, FundSharedBlobBody | ExtendSharedBlobBody):
            # Approvers check what application cannot: the target is a shared blob here
            # (applying only credits its funds or records the request, whatever arrived first).
            target = self._resources.get(body.shared)
            if target is None or not target.shared:
                raise OrderRefusedError("RESOURCE_UNKNOWN", "no shared blob with this id")
        waits_for = None
        try:
            self._effect(body, identifier, apply=False)
        except _Wait as wait:
            waits_for = str(wait)
        self._check_price(body)
        if waits_for is not None:
            raise OrderRefusedError(waits_for, _WAIT_MESSAGES[waits_for])

    def _check_price(self, body: OrderBody) -> None:
        prices = self.prices(body.epoch)
        if isinstance(body, BuyStorageBody):
            expected = prices.storage_cost(body.units, body.end_epoch - body.start_epoch)
        elif isinstance(body, ExtendStorageBody):
            resource = self._owned_resource(body.account, body.resource)
            expected = prices.storage_cost(resource.units, body.end_epoch - resource.end_epoch)
        elif isinstance(body, AttachBlobBody):
            expected = prices.write_fee(storage_units(body.encoded_size))
        else:
            return
        if body.amount != expected:
            raise OrderRefusedError(
                "ORDER_PRICE_MISMATCH",
                f"the amount is {body.amount}; the prices of epoch {body.epoch} ask {expected}",
            )

    def _drain(self) -> None:
        progress = True
        while progress:
            progress = False
            for account in sorted(self._waiting):
                queue = self._waiting[account]
                while (entry := queue.get(self.next_sequence(account))) is not None:
                    try:
                        reason = self._effect(entry.body, entry.order_id, apply=True)
                    except _Wait:
                        break
                    key = (account, entry.body.sequence)
                    del queue[entry.body.sequence]
                    self._applied[key] = entry.order_id
                    if reason is not None:
                        self._voided[key] = reason
                    self._next_sequence[account] = entry.body.sequence + 1
                    progress = True
                if not queue:
                    del self._waiting[account]
            progress = self._try_settlement() or progress

    def _owned_resource(self, account: bytes, resource_id: bytes) -> Resource:
        resource = self._resources.get(resource_id)
        if resource is None or resource.owner != account:
            raise OrderRefusedError("RESOURCE_UNKNOWN", "no such resource owned by the account")
        return resource

    def _effect(self, body: OrderBody, identifier: bytes, *, apply: bool) -> str | None:
        """Check ``body`` against the state and, with ``apply``, carry it out.

        Raises :class:`_Wait` (its message a reason code) if it may become valid later; returns
        the reason code if it never can (the order is void: with ``apply`` the caller records
        it; without, the reason is raised as a refusal); None when valid.
        """
        try:
            self._validate(body, identifier)
        except OrderRefusedError as refusal:
            if not apply:
                raise
            return refusal.reason
        if apply:
            self._carry_out(body, identifier)
        return None

    def _debit_covered(self, account: bytes, amount: int) -> None:
        if self.balance(account) < amount:
            raise _Wait("ORDER_OVERDRAWN")

    def _validate(self, body: OrderBody, identifier: bytes) -> None:
        """Refuse (``OrderRefusedError``) what can never be valid, wait on what may become so."""
        malformed = OrderRefusedError("ORDER_MALFORMED", "the order cannot be valid")
        lifetime = self.parameters.max_lifetime_epochs
        if isinstance(body, TransferBody):
            if body.amount == 0 or body.recipient == body.account:
                raise malformed
            _check_key(body.recipient)
            self._debit_covered(body.account, body.amount)
        elif isinstance(body, BuyStorageBody):
            if body.units == 0 or body.end_epoch <= body.start_epoch:
                raise malformed
            if body.start_epoch < body.epoch:
                raise OrderRefusedError("ORDER_MALFORMED", "storage cannot start in the past")
            if body.end_epoch - body.epoch > lifetime:
                raise OrderRefusedError("ORDER_LIFETIME_TOO_LONG", f"at most {lifetime} epochs")
            self._debit_covered(body.account, body.amount)
        elif isinstance(body, ExtendStorageBody):
            resource = self._owned_resource(body.account, body.resource)
            if body.end_epoch <= resource.end_epoch:
                raise OrderRefusedError("ORDER_MALFORMED", "the new end is not later")
            if resource.end_epoch <= body.epoch:
                raise OrderRefusedError("RESOURCE_UNUSABLE", "the resource has expired")
            if resource.shared:
                raise OrderRefusedError(
                    "RESOURCE_UNUSABLE", "a shared blob is extended from its funds"
                )
            if body.end_epoch - body.epoch > lifetime:
                raise OrderRefusedError("ORDER_LIFETIME_TOO_LONG", f"at most {lifetime} epochs")
            self._debit_covered(body.account, body.amount)
        elif isinstance(body, SplitStorageBody):
            resource = self._owned_resource(body.account, body.resource)
            if resource.blob_id is not None:
                raise OrderRefusedError("RESOURCE_UNUSABLE", "the resource holds a blob")
            low, high = (
                (0, resource.units)
                if body.kind is SplitKind.SIZE
                else (resource.start_epoch, resource.end_epoch)
            )
            if not low < body.at < high:
                raise OrderRefusedError("ORDER_MALFORMED", f"split point outside ({low}, {high})")
        elif isinstance(body, AttachBlobBody):
            resource = self._owned_resource(body.account, body.resource)
            if resource.blob_id is not None:
                raise OrderRefusedError("RESOURCE_UNUSABLE", "the resource holds a blob")
            if resource.end_epoch <= body.epoch:
                raise OrderRefusedError("RESOURCE_UNUSABLE", "the resource has expired")
            if resource.units < storage_units(body.encoded_size):
                raise OrderRefusedError("RESOURCE_UNUSABLE", "the resource is too small")
            self._debit_covered(body.account, body.amount)
        elif isinstance(body, ReleaseStorageBody):
            resource = self._owned_resource(body.account, body.resource)
            if resource.blob_id is None or not resource.deletable:
                raise OrderRefusedError("RESOURCE_UNUSABLE", "the resource holds no deletable blob")
        elif isinstance(body, StakeBody):
            if body.amount == 0:
                raise malformed
            _check_key(body.peer)
            self._debit_covered(body.account, body.amount)
        elif isinstance(body, ShareBlobBody):
            resource = self._owned_resource(body.account, body.resource)
            if resource.blob_id is None or resource.deletable or resource.shared:
                raise OrderRefusedError(
                    "RESOURCE_UNUSABLE", "only a resource of a permanent blob can be shared, once"
                )
            if resource.end_epoch <= body.epoch:
                raise OrderRefusedError("RESOURCE_UNUSABLE", "the resource has expired")
            self._debit_covered(body.account, body.amount)
        elif isinstance(body, FundSharedBlobBody):
            if body.amount == 0:
                raise malformed
            self._debit_covered(body.account, body.amount)
        elif isinstance(body, ExtendSharedBlobBody):
            if body.epochs == 0:
                raise malformed
        elif isinstance(body, RequestWithdrawBody):
            position = self._owned_stake(body.account, body.stake)
            if position.request is not None:
                raise OrderRefusedError("STAKE_NOT_WITHDRAWABLE", "withdrawal already requested")
        else:
            position = self._owned_stake(body.account, body.stake)
            if position.request is None:
                raise OrderRefusedError("STAKE_NOT_WITHDRAWABLE", "no withdrawal was requested")
            if position.state is not StakeState.WITHDRAWABLE:
                raise _Wait("STAKE_NOT_WITHDRAWABLE")

    def _owned_stake(self, account: bytes, stake_id: bytes) -> StakePosition:
        position = self._stakes.get(stake_id)
        if position is None or position.staker != account:
            raise OrderRefusedError("STAKE_UNKNOWN", "no such stake owned by the account")
        return position

    def _credit(self, account: bytes, amount: int) -> None:
        self._balances[account] = self.balance(account) + amount

    def _debit(self, account: bytes, amount: int) -> None:
        self._balances[account] = self.balance(account) - amount
        if not self._balances[account]:
            del self._balances[account]

    def _contribute(self, parts: Mapping[int, int]) -> None:
        for epoch, amount in parts.items():
            if epoch <= self._settled:
                self._fund += amount
            else:
                self._pools[epoch] = self._pools.get(epoch, 0) + amount

    def _carry_out(self, body: OrderBody, identifier: bytes) -> None:
        account = body.account
        if isinstance(body, TransferBody):
            self._debit(account, body.amount)
            self._credit(body.recipient, body.amount)
        elif isinstance(body, BuyStorageBody):
            self._debit(account, body.amount)
            self._contribute(split_evenly(body.amount, body.start_epoch, body.end_epoch))
            self._resources[identifier] = Resource(
                account, body.units, body.start_epoch, body.end_epoch
            )
        elif isinstance(body, ExtendStorageBody):
            resource = self._resources[body.resource]
            self._debit(account, body.amount)
            self._contribute(split_evenly(body.amount, resource.end_epoch, body.end_epoch))
            self._resources[body.resource] = dataclasses.replace(resource, end_epoch=body.end_epoch)
        elif isinstance(body, SplitStorageBody):
            resource = self._resources.pop(body.resource)
            first_id, second_id = split_resource_ids(identifier)
            if body.kind is SplitKind.SIZE:
                first = dataclasses.replace(resource, units=body.at)
                second = dataclasses.replace(resource, units=resource.units - body.at)
            else:
                first = dataclasses.replace(resource, end_epoch=body.at)
                second = dataclasses.replace(resource, start_epoch=body.at)
            self._resources[first_id] = first
            self._resources[second_id] = second
        elif isinstance(body, AttachBlobBody):
            self._debit(account, body.amount)
            self._contribute({body.epoch: body.amount})
            self._resources[body.resource] = dataclasses.replace(
                self._resources[body.resource],
                blob_id=body.blob_id,
                deletable=body.deletable,
                encoded_size=body.encoded_size,
            )
            self._attached.setdefault((account, body.blob_id), set()).add(body.resource)
        elif isinstance(body, ReleaseStorageBody):
            released = self._resources[body.resource]
            assert released.blob_id is not None  # _validate: only an attached one is released
            attached = self._attached[(account, released.blob_id)]
            attached.discard(body.resource)
            if not attached:
                del self._attached[(account, released.blob_id)]
            self._resources[body.resource] = dataclasses.replace(
                released, blob_id=None, deletable=False, encoded_size=0
            )
        elif isinstance(body, StakeBody):
            self._debit(account, body.amount)
            self._stakes[identifier] = StakePosition(account, body.peer, body.amount)
            self._stake_orders.add(identifier)
        elif isinstance(body, ShareBlobBody):
            self._debit(account, body.amount)
            self._resources[body.resource] = dataclasses.replace(
                self._resources[body.resource], shared=True
            )
            self._add_funds(body.resource, body.amount)
        elif isinstance(body, FundSharedBlobBody):
            self._debit(account, body.amount)
            self._add_funds(body.shared, body.amount)
        elif isinstance(body, ExtendSharedBlobBody):
            if body.epoch + 1 <= self._settled:
                self._shared_closed.add(identifier)  # both settlements that could list it passed
            else:
                self._shared_requests[identifier] = SharedRequest(
                    body.shared, body.epochs, body.epoch
                )
        elif isinstance(body, RequestWithdrawBody):
            self._stakes[body.stake] = dataclasses.replace(
                self._stakes[body.stake], request=identifier
            )
            self._requests[identifier] = body.stake
        else:
            position = self._stakes.pop(body.stake)
            self._credit(account, position.principal + position.rewards)

    def _add_funds(self, shared_id: bytes, amount: int) -> None:
        if amount:
            self._shared_funds[shared_id] = self.shared_funds(shared_id) + amount

    # Shared blobs in settlements ---------------------------------------------------------------

    def _shared_end(self, resource: Resource, request: SharedRequest, epoch: int) -> int:
        """The end a request moves its shared blob to in the settlement of ``epoch``."""
        cap = epoch + 1 + self.parameters.max_lifetime_epochs
        return min(resource.end_epoch + request.epochs, cap)

    def shared_extensions_to_list(self, epoch: int, room: int) -> list[SharedExtension]:
        """The extensions the settlement of ``epoch`` can carry out, by this ledger: pending
        requests of ``epoch`` or the one before, in order id order, each while its shared blob
        lives on in ``epoch`` + 1 and its funds (after the ones before it) cover it at the
        storage price of ``epoch``. Empty unless every earlier settlement is applied here."""
        if self._settled != epoch - 1:
            return []
        listed: list[SharedExtension] = []
        ends: dict[bytes, int] = {}
        funds: dict[bytes, int] = {}
        price = self.prices(epoch)
        for request_id in sorted(self._shared_requests):
            if len(listed) >= room:
                break
            request = self._shared_requests[request_id]
            resource = self._resources.get(request.shared)
            if request.epoch + 1 < epoch or resource is None or not resource.shared:
                continue
            resource = dataclasses.replace(
                resource, end_epoch=ends.get(request.shared, resource.end_epoch)
            )
            end = self._shared_end(resource, request, epoch)
            if resource.end_epoch <= epoch + 1 or end <= resource.end_epoch:
                continue
            cost = price.storage_cost(resource.units, end - resource.end_epoch)
            left = funds.get(request.shared, self.shared_funds(request.shared))
            if cost > left:
                continue
            assert resource.blob_id is not None  # shared resources hold a blob (ShareBlobBody)
            ends[request.shared] = end
            funds[request.shared] = left - cost
            listed.append(
                SharedExtension(request_id, BlobId(resource.blob_id), resource.owner, Epoch(end))
            )
        return listed

    def check_shared_extensions(self, settlement: EpochSettlement) -> None:
        """Raise ``OrderRefusedError(SETTLEMENT_INVALID)`` unless this ledger would carry out
        every listed extension itself (as :meth:`shared_extensions_to_list` would list it)."""
        entries = settlement.shared_extensions
        if not entries:
            return
        epoch = settlement.epoch

        def refuse(why: str) -> OrderRefusedError:
            return OrderRefusedError("SETTLEMENT_INVALID", f"shared-blob extension: {why}")

        if self._settled != epoch - 1:
            raise refuse(f"the settlement of epoch {epoch - 1} is not applied here yet")
        ends: dict[bytes, int] = {}
        funds: dict[bytes, int] = {}
        price = self.prices(epoch)
        for entry in entries:
            request = self._shared_requests.get(entry.order_id)
            if request is None:
                raise refuse("a request not pending here")
            if request.epoch + 1 < epoch or request.epoch > epoch:
                raise refuse("a request of another epoch")
            resource = self._resources.get(request.shared)
            if resource is None or not resource.shared:
                raise refuse("no such shared blob here")
            if (entry.blob_id, entry.owner) != (resource.blob_id, resource.owner):
                raise refuse("the blob or owner does not match the shared blob")
            resource = dataclasses.replace(
                resource, end_epoch=ends.get(request.shared, resource.end_epoch)
            )
            end = self._shared_end(resource, request, epoch)
            if resource.end_epoch <= epoch + 1 or end <= resource.end_epoch:
                raise refuse("the shared blob expires before it could be extended")
            if entry.end_epoch != end:
                raise refuse(f"end {entry.end_epoch}, the request gives {end}")
            cost = price.storage_cost(resource.units, end - resource.end_epoch)
            left = funds.get(request.shared, self.shared_funds(request.shared))
            if cost > left:
                raise refuse(f"costs {cost}, the shared blob's funds known here are {left}")
            ends[request.shared] = end
            funds[request.shared] = left - cost

    def _shared_ready(self, settlement: EpochSettlement) -> str | None:
        funds: dict[bytes, int] = {}
        price = self.prices(settlement.epoch)
        ends: dict[bytes, int] = {}
        for entry in settlement.shared_extensions:
            if entry.order_id in self._shared_closed:
                continue  # carried out already: only a faulty quorum lists it again
            request = self._shared_requests.get(entry.order_id)
            if request is None:
                return "a shared-blob extension request it lists"
            resource = self._resources.get(request.shared)
            if resource is None or not resource.shared:
                return "the sharing of a blob it extends"
            old = ends.get(request.shared, resource.end_epoch)
            if entry.end_epoch <= old:
                continue
            left = funds.get(request.shared, self.shared_funds(request.shared))
            cost = price.storage_cost(resource.units, entry.end_epoch - old)
            if cost > left:
                return "funds of a shared blob it extends"
            ends[request.shared] = entry.end_epoch
            funds[request.shared] = left - cost
        return None

    def _apply_shared(self, settlement: EpochSettlement) -> None:
        epoch = settlement.epoch
        price = self.prices(epoch)
        for entry in settlement.shared_extensions:
            request = self._shared_requests.pop(entry.order_id, None)
            if request is None:
                continue
            self._shared_closed.add(entry.order_id)
            resource = self._resources[request.shared]
            if entry.end_epoch <= resource.end_epoch:
                continue  # only a faulty quorum lists a shorter end
            cost = price.storage_cost(resource.units, entry.end_epoch - resource.end_epoch)
            self._shared_funds[request.shared] -= cost
            if not self._shared_funds[request.shared]:
                del self._shared_funds[request.shared]
            self._contribute(split_evenly(cost, resource.end_epoch, entry.end_epoch))
            self._resources[request.shared] = dataclasses.replace(
                resource, end_epoch=entry.end_epoch
            )
        for request_id in [
            rid for rid, req in self._shared_requests.items() if req.epoch + 1 <= epoch
        ]:
            del self._shared_requests[request_id]
            self._shared_closed.add(request_id)

    # Settlements -----------------------------------------------------------------------------

    def add_settlement(
        self, settlement: EpochSettlement, committee: Committee, next_committee: Committee
    ) -> Outcome:
        """Add the settlement of ``settlement.epoch``, agreed in the epoch record of the next
        epoch; ``committee`` served in the settled epoch, ``next_committee`` is the one the
        record makes. Raises ``OrderRefusedError(SETTLEMENT_INVALID)`` if it is malformed, names
        the wrong committees, or differs from a settlement already known for its epoch."""
        check_settlement_form(settlement, self.parameters.network_id)
        epoch = settlement.epoch
        if committee.epoch != epoch or next_committee.epoch != epoch + 1:
            raise OrderRefusedError(
                "SETTLEMENT_INVALID", f"settlement of {epoch} given the wrong committees"
            )
        identifier = settlement_id(settlement)
        known = self._settlements.get(epoch)
        pending = self._pending_settlements.get(epoch)
        if pending is not None:
            known = settlement_id(pending[0])
        if known is not None:
            if known != identifier:
                raise OrderRefusedError(
                    "SETTLEMENT_INVALID", f"another settlement of epoch {epoch} is known"
                )
            return Outcome.DUPLICATE if epoch in self._settlements else Outcome.WAITING
        self._pending_settlements[epoch] = (settlement, committee, next_committee)
        self._drain()
        return Outcome.APPLIED if epoch in self._settlements else Outcome.WAITING

    def settlement_ready(self, settlement: EpochSettlement) -> str | None:
        """None if the settlement can be applied now (it is the next one, every order it names
        is known, the reward fund covers its payout); else what it waits for."""
        if settlement.epoch != self._settled + 1:
            return f"the settlement of epoch {self._settled + 1}"
        if any(stake not in self._stake_orders for stake in settlement.stake_activations):
            return "a stake order it activates"
        if any(request not in self._requests for request in settlement.withdrawal_requests):
            return "a withdrawal request it lists"
        if settlement.payout > self._fund_through(settlement.epoch):
            return "payments that cover its payout"
        return self._shared_ready(settlement)

    def _fund_through(self, epoch: int) -> int:
        return self._fund + sum(amount for e, amount in self._pools.items() if e <= epoch)

    def _try_settlement(self) -> bool:
        entry = self._pending_settlements.get(self._settled + 1)
        if entry is None or self.settlement_ready(entry[0]) is not None:
            return False
        settlement, committee, next_committee = entry
        del self._pending_settlements[settlement.epoch]
        self._apply_settlement(settlement, committee, next_committee)
        return True

    def _apply_settlement(
        self, settlement: EpochSettlement, committee: Committee, next_committee: Committee
    ) -> None:
        epoch = settlement.epoch
        for pool_epoch in [e for e in self._pools if e <= epoch]:
            self._fund += self._pools.pop(pool_epoch)
        stakes: dict[PeerId, dict[bytes, int]] = {}
        for stake_id, position in self._stakes.items():
            if position.counts_in(epoch):
                stakes.setdefault(position.peer_id, {})[stake_id] = position.principal
        commissions = {peer: self.commission(peer, epoch) for peer in committee.peer_ids}
        if settlement.certified is None:
            split = split_payout(
                settlement.payout,
                committee,
                commissions=commissions,
                stakes=stakes,
                slashed=frozenset(settlement.slashed),
            )
        else:
            # Only members that proved availability are paid (docs/challenges.md, "Payout").
            split = certified_payout(
                settlement.payout,
                committee,
                frozenset(settlement.certified),
                commissions=commissions,
                stakes=stakes,
                slashed=frozenset(settlement.slashed),
            ).split
        self._fund -= settlement.payout
        self._burned += split.burned
        for peer_id, amount in split.member_rewards.items():
            self._credit(committee.member(peer_id).public_key, amount)
        for stake_id, amount in split.staker_rewards.items():
            earning = self._stakes[stake_id]
            self._stakes[stake_id] = dataclasses.replace(earning, rewards=earning.rewards + amount)
        for index, vote in enumerate(settlement.votes):
            cast = settlement.vote_epochs[index] if settlement.vote_epochs else epoch
            known = self._votes_in_force.get(vote.peer_id)
            if known is not None and cast < known[1]:
                continue  # an older vote than the one in force (only a faulty quorum lists it)
            self._votes_in_force[vote.peer_id] = (vote, cast)
            schedule = self._commissions.setdefault(vote.peer_id, {})
            schedule[epoch + COMMISSION_DELAY_EPOCHS] = vote.commission_bps
        # A vote stays in force until its voter casts another (docs/economics.md, "Votes").
        in_force = [vote for vote, _ in self._votes_in_force.values()]
        self._prices[epoch + 1] = prices_in_force(in_force, next_committee, self.prices(epoch))
        capacity = capacity_in_force(in_force, next_committee)
        if capacity is not None:
            self._capacity[epoch + 1] = capacity
        # Entries that do not match the state (only a faulty quorum agrees on those) are ignored.
        for stake_id in settlement.stake_activations:
            pending = self._stakes.get(stake_id)
            if pending is not None and pending.state is StakeState.PENDING:
                self._stakes[stake_id] = dataclasses.replace(
                    pending, state=StakeState.ACTIVE, active_from=epoch + 1
                )
        for request in settlement.withdrawal_requests:
            stake_id = self._requests[request]
            leaving = self._stakes.get(stake_id)
            if leaving is not None and leaving.state is not StakeState.WITHDRAWABLE:
                until = epoch if leaving.active_from is not None else None
                self._stakes[stake_id] = dataclasses.replace(
                    leaving, state=StakeState.WITHDRAWABLE, active_until=until
                )
        self._apply_shared(settlement)
        for peer_id in settlement.slashed:
            self._slash_counts[peer_id] = self.slash_count(peer_id) + 1
        self._fail_streaks, self._voted_out = self._streaks_after(settlement, committee)
        self._settlements[epoch] = settlement_id(settlement)
        self._settled = epoch


_WAIT_MESSAGES = {
    "ORDER_OVERDRAWN": "the balance does not cover it",
    "STAKE_NOT_WITHDRAWABLE": "the withdrawal is not complete yet",
}


def _check_key(raw: bytes) -> None:
    try:
        identity.peer_id_from_public_key(raw)
    except ValueError as error:
        raise OrderRefusedError("ORDER_MALFORMED", "not a public key") from error
