"""Shared pieces of the economy tests (test_economy*.py): identities, committees, a ledger from a
genesis-like start, and a certifier that approves orders with a committee's signing rule."""

from __future__ import annotations

from collections.abc import Sequence

from walrus_p2p.core import economy_messages as em
from walrus_p2p.core.committee import Committee, Member
from walrus_p2p.core.economy import Prices
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.ledger import EconomyParameters, Ledger
from walrus_p2p.core.order_signer import OrderSigner
from walrus_p2p.core.records import Signature
from walrus_p2p.errors import OrderRefusedError
from walrus_p2p.types import Epoch

NETWORK = bytes(range(32))
PRICES = Prices(storage_price=10, write_price=3)
LIFETIME = 10


def identities(count: int, salt: int) -> list[Identity]:
    return [Identity.from_seed(bytes([salt, index + 1]) * 16) for index in range(count)]


def committee_of(
    members: Sequence[Identity], weights: Sequence[int], n_shards: int, epoch: int
) -> Committee:
    return Committee.create(
        Epoch(epoch),
        [
            Member.from_public_key(member.public_key.raw, weight, ["/ip4/127.0.0.1/tcp/1"])
            for member, weight in zip(members, weights, strict=True)
        ],
        n_shards,
    )


def new_ledger(allocations: dict[bytes, int]) -> Ledger:
    return Ledger(EconomyParameters(NETWORK, PRICES, LIFETIME), allocations)


class Orders:
    """Signs orders of one owner with consecutive sequence numbers."""

    def __init__(self, owner: Identity, start: int = 0) -> None:
        self.owner = owner
        self.sequence = start

    @property
    def account(self) -> bytes:
        return self.owner.public_key.raw

    def sign(self, cls: type[em.Message], epoch: int = 0, **fields: object) -> em.SignedOrder:
        body = cls(  # type: ignore[call-arg]
            network_id=NETWORK,
            account=self.account,
            sequence=self.sequence,
            epoch=epoch,
            **fields,
        )
        self.sequence += 1
        return em.sign_order(self.owner, body)  # type: ignore[arg-type]


def certify_all(
    order: em.SignedOrder, members: Sequence[Identity], epoch: int
) -> em.CertifiedOrder:
    """A certificate with every listed member's approval (no signing rule: for ledger tests)."""
    identifier = em.order_id(order)
    approvals: list[Signature] = [
        em.approve(member, NETWORK, epoch, identifier) for member in members
    ]
    return em.certify(order, approvals, epoch)


def approve_with(
    signers: Sequence[OrderSigner], ledger: Ledger, order: em.SignedOrder, epoch: int
) -> list[Signature]:
    """Approvals of the signers whose rule accepts the order (refusals are skipped)."""
    approvals = []
    for signer in signers:
        try:
            signature = signer.approve(order, ledger, epoch)
        except OrderRefusedError:
            continue
        approvals.append(Signature(signer.member.peer_id, signature))
    return approvals
