"""The signing rule of one committee member, and the locks it hands over at an epoch change.

Owner: docs/economics.md, "Certification: the signing rule" and "Double spending". Pure: no I/O;
the peer (``node/economy.py``) persists :meth:`OrderSigner.take_changes` before an approval leaves
and runs the hand-over's requests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

import cbor2

from walrus_p2p.core import identity, wire
from walrus_p2p.core.economy_messages import (
    ORDER_KEY_SIZE,
    SignedOrder,
    approve,
    order_id,
    order_key,
    verify_order,
)
from walrus_p2p.core.ledger import Ledger
from walrus_p2p.errors import OrderRefusedError, WireError

__all__ = ["HANDOVERS_KEY", "KEEP_EPOCHS", "KEEP_HANDOVERS", "OrderSigner", "Report"]

_JOURNAL_TAG_V1 = "walrus-p2p order signer v1"
_ROWS_TAG = "walrus-p2p order signer rows v2"
HANDOVERS_KEY = b"handovers"
"""The row of the completed hand-overs (slot rows have 40-byte keys)."""

KEEP_EPOCHS = 3
"""A lock whose slot is decided in the ledger is kept while it is at most this many epochs
old: a hand-over reports the locks of the two epochs before the asker's, and one more epoch
lets a lagging asker still get them."""

KEEP_HANDOVERS = 8
"""Completed hand-overs remembered (journalled)."""

_Key: TypeAlias = tuple[bytes, int]


@dataclass(frozen=True, slots=True)
class _Lock:
    epoch: int
    """The epoch in which this member approved the order, or adopted it from a hand-over."""
    order_id: bytes
    orders: tuple[bytes, ...]
    """The owner-signed order (encoded), for hand-over reports; two different ones when the
    hand-over reported two orders for the slot (the owner equivocated: the slot is
    *contested* and no order of it is approved); empty for a lock from a version-1 journal."""

    @property
    def contested(self) -> bool:
        return len(self.orders) > 1


@dataclass(slots=True)
class Report:
    """One page of a hand-over report (:meth:`OrderSigner.report`)."""

    orders: list[bytes]
    """Encoded owner-signed orders of undecided slots."""
    decided: list[tuple[bytes, int, bytes]]
    """(account, sequence, order id) of decided slots."""
    next_start: bytes | None


class OrderSigner:
    """The signing rule of one committee member (the FastPay / Sui owned-object rule).

    :meth:`approve` signs an order only if (1) it verifies (network, owner's signature), (2) it
    names the member's current epoch or the one before (an order caught by an epoch change is
    completed by the new committee), (3) the member never approved or adopted another order of
    the same (account, sequence) — in any epoch — and (4) it is valid in the member's ledger:
    next in its account's sequence, covered by the balance, at the prices in force. The approval
    signs the member's *current* epoch, whatever the order's: a member that moved on never signs
    for the epoch it left, so its locks of that epoch are frozen. Asked again for the order it
    approved, it approves it again, in its current epoch.

    **Why two conflicting orders of one epoch cannot both be certified** (at most f faulty shard
    weight in that epoch's committee, n shards): a certificate needs approvals from members
    holding w shards with ``3w >= 2n + 1``. Two such sets, of weights w1 and w2, share members
    holding at least ``w1 + w2 - n >= (4n + 2)/3 - n = (n + 2)/3`` shards, which is more than
    f = (n - 1)//3. So at least one shard of the intersection is held by an honest member, which
    approved both orders: impossible under rule (3). ``tests/unit/test_economy_signing.py`` checks
    it over random committees, splits and Byzantine sets, and that the bound is tight.

    **Across epochs**, the new committee's members :meth:`adopt` the locks that members of the
    old one report (:meth:`report`) before approving anything (docs/economics.md, "Double
    spending", gives the argument; ``node/economy.py`` runs the requests).

    The state (the locks) must be persisted before an approval leaves the member
    (:meth:`take_changes`, :meth:`from_rows`: one row per slot), as the epoch agreement
    journals its votes.
    """

    def __init__(self, member: identity.Identity, network_id: bytes) -> None:
        self.member = member
        self.network_id = network_id
        self._locks: dict[_Key, _Lock] = {}
        self._dirty: set[_Key] = set()
        self._handovers_dirty = False
        self.handovers: tuple[int, ...] = ()
        """The epochs (at most :data:`KEEP_HANDOVERS`, the latest) whose hand-over this member
        completed: it approves in such an epoch, and reports its locks of it once it left it."""

    def handover_done(self, epoch: int) -> None:
        """Record that this member holds every lock the previous committee reported for
        ``epoch``."""
        self.handovers = tuple(sorted({*self.handovers, epoch}))[-KEEP_HANDOVERS:]
        self._handovers_dirty = True

    def _set(self, key: _Key, lock: _Lock) -> None:
        self._locks[key] = lock
        self._dirty.add(key)

    def locked(self, account: bytes, sequence: int) -> tuple[int, bytes] | None:
        """(epoch, order id) this member approved or adopted at (account, sequence), if any."""
        lock = self._locks.get((account, sequence))
        return None if lock is None else (lock.epoch, lock.order_id)

    def approve(self, order: SignedOrder, ledger: Ledger, epoch: int) -> bytes:
        """The member's approval signature (64 bytes) for ``order``, signing ``epoch`` (the
        member's current one); raises ``OrderRefusedError`` with the reason, and then records
        nothing."""
        body = verify_order(order, self.network_id)
        if body.epoch not in (epoch, epoch - 1):
            raise OrderRefusedError(
                "ORDER_WRONG_EPOCH", f"the order is for epoch {body.epoch}, this is {epoch}"
            )
        identifier = order_id(order)
        key = (body.account, body.sequence)
        lock = self._locks.get(key)
        if lock is not None:
            if lock.order_id != identifier or lock.contested:
                if body.sequence < ledger.next_sequence(body.account):
                    raise OrderRefusedError("ORDER_REPLAYED", "this sequence number is used")
                raise OrderRefusedError(
                    "ORDER_CONFLICT",
                    "the owner signed two orders for this slot"
                    if lock.contested
                    else "this member approved another order for this slot",
                )
            if lock.epoch < epoch:
                # approved again in a later epoch: the lock is that epoch's too (reported by
                # the hand-overs after it)
                self._set(key, _Lock(epoch, lock.order_id, lock.orders))
        else:
            ledger.check_order(body, identifier)
            self._set(key, _Lock(epoch, identifier, (wire.encode(order),)))
        return approve(self.member, self.network_id, epoch, identifier).signature

    def adopt(self, order: SignedOrder, ledger: Ledger, epoch: int) -> bool:
        """Take a reported order as this member's lock for its slot in ``epoch`` (the hand-over
        of docs/economics.md, "Double spending"); True if the locks changed.

        A slot the ledger has decided is left alone. A slot locked to another order becomes
        *contested*: the owner signed two orders for it, and neither is approved here again.
        Raises ``OrderRefusedError`` for an order that does not verify (a reporter cannot
        invent locks: only the account's owner signs orders)."""
        body = verify_order(order, self.network_id)
        if body.sequence < ledger.next_sequence(body.account):
            return False
        identifier = order_id(order)
        key = (body.account, body.sequence)
        lock = self._locks.get(key)
        if lock is None:
            self._set(key, _Lock(epoch, identifier, (wire.encode(order),)))
            return True
        encoded = wire.encode(order)
        if lock.order_id == identifier or lock.contested or encoded in lock.orders:
            if lock.epoch >= epoch:
                return False
            # held in this epoch too: the next hand-over reports it
            self._set(key, _Lock(epoch, lock.order_id, lock.orders))
            return True
        self._set(key, _Lock(epoch, lock.order_id, (*lock.orders, encoded)))
        return True

    def report(
        self,
        ledger: Ledger,
        epoch: int,
        start: bytes | None,
        limit: int,
        decided_limit: int,
    ) -> Report:
        """The locks this member holds as a member of committee ``epoch``: every lock of a slot
        ``ledger`` has not decided (with its owner-signed orders), and the locks it approved or
        adopted in epoch ``epoch - 1`` or later whose slot ``ledger`` decided (as
        (account, sequence, order id): an asker that has not decided the slot fetches the
        certificate). From slot key ``start`` (:func:`order_key`) on, in key order, at most
        ``limit`` orders and ``decided_limit`` decided slots, and the next page's start.

        Locks of later epochs are included: a member of both committees may have approved an
        order again, or adopted it, in the next epoch before it answers (the lock then carries
        that epoch), and the order must still be in its report."""
        slots = sorted(
            (order_key(account, sequence), account, sequence, lock)
            for (account, sequence), lock in self._locks.items()
            if lock.epoch >= epoch - 1 or sequence >= ledger.next_sequence(account)
        )
        report = Report([], [], None)
        for key, account, sequence, lock in slots:
            if start is not None and key < start:
                continue
            if sequence < ledger.next_sequence(account):
                if len(report.decided) == decided_limit:
                    report.next_start = key
                    break
                applied = ledger.applied_order(account, sequence) or lock.order_id
                report.decided.append((account, sequence, applied))
            elif lock.orders:
                if len(report.orders) + len(lock.orders) > limit:
                    report.next_start = key
                    break
                report.orders.extend(lock.orders)
        return report

    def prune(self, ledger: Ledger, epoch: int) -> int:
        """Forget locks whose slot ``ledger`` has decided (orders for them are refused as
        replayed anyway) once they are more than :data:`KEEP_EPOCHS` old at ``epoch``; returns
        how many were dropped."""
        stale = [
            key
            for key, lock in self._locks.items()
            if key[1] < ledger.next_sequence(key[0]) and lock.epoch < epoch - KEEP_EPOCHS + 1
        ]
        for key in stale:
            del self._locks[key]
            self._dirty.add(key)
        return len(stale)

    # -- durable state: one row per locked slot, and one for the completed hand-overs --------

    def take_changes(self) -> list[tuple[bytes, bytes | None]]:
        """The rows changed since the last call, to write in one transaction: (slot key
        (:func:`order_key`), encoded lock) or (slot key, None) for a dropped lock, and the
        hand-over row (:data:`HANDOVERS_KEY`) when it changed. A write costs what changed, not
        what is held."""
        changes: list[tuple[bytes, bytes | None]] = []
        for key in sorted(self._dirty):
            lock = self._locks.get(key)
            changes.append((order_key(*key), None if lock is None else _encode_lock(lock)))
        if self._handovers_dirty:
            changes.append((HANDOVERS_KEY, self._handovers_row()))
        self._dirty.clear()
        self._handovers_dirty = False
        return changes

    def rows(self) -> list[tuple[bytes, bytes]]:
        """Every row of the state (what :meth:`from_rows` reads), in key order."""
        rows = [(order_key(*key), _encode_lock(lock)) for key, lock in sorted(self._locks.items())]
        return [*rows, (HANDOVERS_KEY, self._handovers_row())]

    def _handovers_row(self) -> bytes:
        encoded: bytes = cbor2.dumps(
            [_ROWS_TAG, self.network_id, list(self.handovers)], canonical=True
        )
        return encoded

    @classmethod
    def from_rows(
        cls, rows: Iterable[tuple[bytes, bytes]], member: identity.Identity, network_id: bytes
    ) -> OrderSigner:
        """A signer with the state of :meth:`rows`; ``WireError`` if a row is not one this
        class wrote for this network (a wrong state must not silently drop locks)."""
        signer = cls(member, network_id)
        for key, value in rows:
            if key == HANDOVERS_KEY:
                signer.handovers = _decode_handovers(value, network_id)
                continue
            if len(key) != ORDER_KEY_SIZE:
                raise WireError("malformed order signer row key")
            lock = _decode_lock(value)
            signer._locks[(key[:32], int.from_bytes(key[32:], "big"))] = lock
        return signer

    @classmethod
    def from_journal(cls, data: bytes, member: identity.Identity, network_id: bytes) -> OrderSigner:
        """A signer with the locks of a journal of the version before (one record of every
        lock, without the orders); ``WireError`` if ``data`` is not such a journal for this
        network. The peer then writes the locks as rows and drops the journal."""
        document = _load_cbor(data, "order signer journal")
        if (
            not isinstance(document, list)
            or len(document) != 3
            or document[0] != _JOURNAL_TAG_V1
            or not isinstance(document[2], list)
        ):
            raise WireError("not an order signer journal")
        if document[1] != network_id:
            raise WireError("the order signer journal is for another network")
        signer = cls(member, network_id)
        for entry in document[2]:
            if not isinstance(entry, list) or len(entry) != 4:
                raise WireError("malformed order signer journal entry")
            account, sequence, epoch, identifier = entry
            if (
                not isinstance(account, bytes)
                or len(account) != 32
                or type(sequence) is not int
                or type(epoch) is not int
                or not isinstance(identifier, bytes)
                or len(identifier) != 32
                or sequence < 0
                or epoch < 0
            ):
                raise WireError("malformed order signer journal entry")
            key = (account, sequence)
            if key in signer._locks:
                raise WireError("an order signer journal locks one slot twice")
            signer._set(key, _Lock(epoch, identifier, ()))
        signer._handovers_dirty = True
        return signer


def _load_cbor(data: bytes, what: str) -> object:
    """``data`` decoded as CBOR; ``WireError`` naming ``what`` if it is not."""
    try:
        return cbor2.loads(data)
    except Exception as error:
        raise WireError(f"{what}: {error}") from error


def _encode_lock(lock: _Lock) -> bytes:
    encoded: bytes = cbor2.dumps([lock.epoch, lock.order_id, list(lock.orders)], canonical=True)
    return encoded


def _decode_lock(value: bytes) -> _Lock:
    document = _load_cbor(value, "order signer row")
    if (
        not isinstance(document, list)
        or len(document) != 3
        or type(document[0]) is not int
        or document[0] < 0
        or not isinstance(document[1], bytes)
        or len(document[1]) != 32
        or not isinstance(document[2], list)
        or len(document[2]) > 2
        or not all(isinstance(order, bytes) for order in document[2])
    ):
        raise WireError("malformed order signer row")
    lock = _Lock(document[0], document[1], tuple(document[2]))
    if _encode_lock(lock) != value:
        raise WireError("an order signer row is not in canonical form")
    return lock


def _decode_handovers(value: bytes, network_id: bytes) -> tuple[int, ...]:
    document = _load_cbor(value, "order signer hand-over row")
    if (
        not isinstance(document, list)
        or len(document) != 3
        or document[0] != _ROWS_TAG
        or not isinstance(document[2], list)
        or len(document[2]) > KEEP_HANDOVERS
        or not all(type(epoch) is int and epoch >= 0 for epoch in document[2])
        or document[2] != sorted(set(document[2]))
    ):
        raise WireError("malformed order signer hand-over row")
    if document[1] != network_id:
        raise WireError("the order signer's rows are for another network")
    return tuple(document[2])
