"""Paid storage: whether an owner's blob record is paid for in a ledger.

Owner: the rule that binds blob records to certified orders (docs/economics.md, "Paid storage").
On a network whose genesis has an ``[economy]`` table, a storage peer merges a register or
extend record only if its ledger shows the payment:

- the **binding** is the registration's owner: a register record of ``owner`` for blob ``B`` is
  paid by a storage resource that the *account* ``owner`` (the same Ed25519 key) bought and
  attached to ``B`` with a certified :class:`~walrus_p2p.core.economy_messages.AttachBlobBody`.
  The attach order names the blob, so it cannot pay for another one; a resource carries one
  blob at a time (the ledger refuses a second attach), so one purchase cannot pay for two blobs;
  and another owner's register of ``B`` is not paid by it (the payer owns what it paid for, as
  in Walrus);
- a **register** ``[start, end)`` of ``size`` bytes, deletable or not, is paid when one of those
  resources has the same deletability, covers ``[start, end)`` and was attached for at least
  the register's units (``storage_units(encoded_size(size))``, on which the write fee was paid);
- an **extend** of the registration ``(owner, start)`` to ``end`` is paid when one of those
  resources covers ``[start, end)`` (an ``ExtendStorageBody`` moved its end).

Why no field in the register record names the order: the records keep their wire form and ids
(networks without an economy are unchanged), and the owner key already identifies the payer.

Pure: no I/O; the ledger is the caller's (:mod:`walrus_p2p.node.economy` waits for and fetches
missing certificates before it refuses).
"""

from __future__ import annotations

from dataclasses import dataclass

from walrus_p2p.core.economy import encoded_size, storage_units
from walrus_p2p.core.ledger import Ledger, Resource
from walrus_p2p.core.records import BlobExtend, BlobRegister

__all__ = ["PAYMENT_REASONS", "PaymentRefusal", "record_payment"]

PAYMENT_REASONS = frozenset({"PAYMENT_REQUIRED", "PAYMENT_MISMATCH"})
"""Why a storage peer refuses an owner's blob record on a network with an economy."""


@dataclass(frozen=True, slots=True)
class PaymentRefusal:
    """``PAYMENT_REQUIRED``: the owner attached no resource to this blob (as far as the ledger
    knows); ``PAYMENT_MISMATCH``: it did, but none covers the record (too small, too short,
    other deletability)."""

    reason: str
    message: str


def _covers(resource: Resource, start: int, end: int) -> bool:
    return resource.start_epoch <= start and end <= resource.end_epoch


def record_payment(
    ledger: Ledger, record: BlobRegister | BlobExtend, n_shards: int
) -> PaymentRefusal | None:
    """None if ``ledger`` shows the payment of ``record`` (see the module docstring), else why
    not."""
    body = record.body
    resources = ledger.attached_resources(body.owner, body.blob_id)
    what = "register" if isinstance(record, BlobRegister) else "extend"
    if not resources:
        return PaymentRefusal(
            "PAYMENT_REQUIRED",
            f"no storage resource of the owner is attached to this blob (a certified "
            f"AttachBlobBody); {what} refused",
        )
    if isinstance(record, BlobRegister):
        units = storage_units(encoded_size(record.body.size, n_shards))
        for resource in resources.values():
            if (
                resource.deletable == record.body.deletable
                and storage_units(resource.encoded_size) >= units
                and _covers(resource, record.body.start_epoch, record.body.end_epoch)
            ):
                return None
        wanted = (
            f"{units} units for epochs [{record.body.start_epoch}, {record.body.end_epoch}), "
            f"deletable={record.body.deletable}"
        )
    else:
        for resource in resources.values():
            if _covers(resource, record.body.start_epoch, record.body.end_epoch):
                return None
        wanted = f"epochs [{record.body.start_epoch}, {record.body.end_epoch})"
    have = "; ".join(
        f"{storage_units(r.encoded_size)} units for [{r.start_epoch}, {r.end_epoch}), "
        f"deletable={r.deletable}"
        for r in resources.values()
    )
    return PaymentRefusal(
        "PAYMENT_MISMATCH", f"the {what} needs {wanted}; the owner's payments cover: {have}"
    )
