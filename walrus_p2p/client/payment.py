"""Paying for storage: quotes, and the certified orders a paid store or extension needs.

docs/economics.md, "Paid storage". On a network whose genesis has an ``[economy]`` table, storage
peers merge an owner's register record only when the owner's account bought a storage resource
and attached the blob to it (:mod:`walrus_p2p.core.payments` states the binding). A
:class:`Payer` makes those orders for one account (the blob owner's key is the account):

1. **quote**: the blob's encoded size in units (MiB, rounded up) at the prices in force in the
   current epoch, as the committee's ledgers report them (the genesis prices until the
   settlements move them by the peers' votes; asked once per epoch, :meth:`Payer.prices`);
2. **the account** (``account_view``): its next sequence and balance; a balance below the quote
   fails at once with :class:`~walrus_p2p.errors.InsufficientFundsError` (the amount needed);
   an earlier purchase and attachment of this blob among the account's recent orders that still
   covers the store is used again (a store retried after a failed upload pays once);
3. **buy** (``BuyStorageBody`` for ``[start, end)``, sequence s) and **attach**
   (``AttachBlobBody`` naming the purchase's order id as the resource, sequence s + 1): both are
   signed at once; each is approved by a quorum, certified and delivered to a quorum in turn
   (the attachment is valid only once the purchase is applied). Deliveries to the remaining
   members go on in the background while the store registers.

One payer makes one order at a time (a lock): two orders signed for one sequence number would
conflict, and with members split between them neither could ever be certified (docs/economics.md,
"The protocol"). So **one process per wallet**: the CLI and a gateway must not share a wallet.
An order that failed half way (approvals from some members only) is sent again, the same bytes,
before the next one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from walrus_p2p.client.network import LightPeer
from walrus_p2p.client.staking import economy_view
from walrus_p2p.client.wallet import (
    AccountView,
    WalletOptions,
    account_view,
    certify_order,
    deliver_certificate,
    format_wal,
)
from walrus_p2p.core import identity
from walrus_p2p.core.committee import Committee, is_quorum
from walrus_p2p.core.economy import Prices, Quote, encoded_size, quote, storage_units
from walrus_p2p.core.economy_messages import (
    MAX_CERTIFICATES_PER_MESSAGE,
    MAX_HISTORY,
    AttachBlobBody,
    BuyStorageBody,
    CertifiedOrder,
    ExtendStorageBody,
    ListCertificatesReply,
    ListCertificatesRequest,
    OrderBody,
    ReleaseStorageBody,
    ShareBlobBody,
    SignedOrder,
    SplitKind,
    SplitStorageBody,
    SubmitCertificateReply,
    SubmitCertificateRequest,
    decode_certificate,
    decode_order_body,
    order_id,
    order_key,
    sign_order,
    split_resource_ids,
    verify_certified_order,
)
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.errors import InsufficientFundsError, NotFoundError, OrderRefusedError, WalrusError
from walrus_p2p.types import BlobId, Epoch, PeerId, short_id

logger = logging.getLogger(__name__)

MAX_LISTING_PAGES = 64
"""Pages of its own certificates (24 each) an account reads to find a blob's resource."""


def prices_in_force(genesis: Genesis) -> Prices:
    """The genesis's prices: in force until a settlement moves them (an offline quote uses
    them; a payment asks the committee, :meth:`Payer.prices`)."""
    economy = genesis.economy_or_default
    return Prices(economy.storage_price, economy.write_price)


def blob_quote(genesis: Genesis, size: int, epochs: int) -> Quote:
    """What storing ``size`` bytes for ``epochs`` epochs costs on this network, in FROST."""
    return quote(encoded_size(size, genesis.n_shards), epochs, prices_in_force(genesis))


@dataclass(frozen=True, slots=True)
class Payment:
    """A blob's storage, paid for: the resource (the purchase's order id) attached to it."""

    resource: bytes
    attach: bytes
    """The attach order's id."""
    start_epoch: int
    end_epoch: int
    units: int
    storage_cost: int
    write_fee: int
    reused: bool = False
    """An earlier payment of the account covers this store: nothing was paid now."""

    @property
    def cost(self) -> int:
        """What this payment took from the balance now (FROST)."""
        return 0 if self.reused else self.storage_cost + self.write_fee


@dataclass(frozen=True, slots=True)
class _Resource:
    """A resource of the account as its own orders left it (the ledger's view, client side)."""

    units: int
    start_epoch: int
    end_epoch: int
    blob_id: bytes | None = None
    deletable: bool = False
    encoded_size: int = 0
    attach: bytes | None = None
    """The id of the order that attached the blob."""
    shared: bool = False
    """Made a shared blob (docs/economics.md, "Shared blobs")."""


def _earlier_payment(
    view: AccountView, blob_id: bytes, units: int, deletable: bool, start: int, end: int
) -> Payment | None:
    """A purchase and attachment of ``blob_id`` among the account's recent orders that cover
    this store (and were not released since)."""
    resources: dict[bytes, _Resource] = {}
    for entry in sorted(view.orders, key=lambda e: e.sequence):
        _apply(resources, entry.order_id, entry.body)
    for resource_id, resource in resources.items():
        if (
            resource.blob_id == blob_id
            and resource.attach is not None
            and resource.deletable == deletable
            and storage_units(resource.encoded_size) >= units
            and resource.start_epoch <= start
            and end <= resource.end_epoch
        ):
            return Payment(
                resource=resource_id,
                attach=resource.attach,
                start_epoch=resource.start_epoch,
                end_epoch=resource.end_epoch,
                units=resource.units,
                storage_cost=0,
                write_fee=0,
                reused=True,
            )
    return None


class Payer:
    """Makes the storage orders of one account (see the module docstring)."""

    def __init__(
        self,
        light: LightPeer,
        owner: identity.Identity,
        *,
        options: WalletOptions | None = None,
        background: trio.Nursery | None = None,
    ) -> None:
        self.light = light
        self.owner = owner
        self.account = owner.public_key.raw
        self.options = options or WalletOptions(tail_seconds=5.0)
        self.background = background
        """Where certificate deliveries go on after a quorum took them (None: waited for)."""
        self._lock = trio.Lock()
        self._unfinished: SignedOrder | None = None
        """An order signed at the account's next sequence whose certificate was not made."""
        self._prices: dict[int, Prices] = {}

    async def prices(self) -> Prices:
        """The prices in force in the current epoch, as the most shard weight among a quorum
        of members reports them (cached for the epoch)."""
        epoch = int(self.light.committee.epoch)
        cached = self._prices.get(epoch)
        if cached is None:
            reply = (await economy_view(self.light, options=self.options)).reply
            cached = Prices(reply.storage_price, reply.write_price)
            if reply.epoch == epoch:
                self._prices = {epoch: cached}
        return cached

    @property
    def genesis(self) -> Genesis:
        return self.light.genesis

    async def _view(self) -> AccountView:
        view = await account_view(
            self.light, self.account, history=MAX_HISTORY, options=self.options
        )
        unfinished = self._unfinished
        if unfinished is None:
            return view
        body = decode_order_body(unfinished)
        self._unfinished = None
        current = self.light.committee.epoch
        if body.sequence != view.next_sequence or body.epoch not in (current, current - 1):
            # Certified meanwhile, or too old: members approve an order of their epoch or of
            # the one before (docs/economics.md, "Double spending").
            return view
        logger.info("finishing an order left half way sequence=%d", body.sequence)
        await self._certify(self.light.committee, unfinished, needed=0, balance=view.balance)
        return await account_view(
            self.light, self.account, history=MAX_HISTORY, options=self.options
        )

    async def _certify(
        self,
        committee: Committee,
        signed: SignedOrder,
        *,
        needed: int,
        balance: int,
        after: CertifiedOrder | None = None,
    ) -> CertifiedOrder:
        """Approvals from a quorum, the certificate, delivered to a quorum (the rest in the
        background). ``after``: the certificate of the order just before, given to each member
        right before it is asked to approve (one round trip per member instead of a delivery
        round and then an approval round), and to every member in the background."""
        before = None
        if after is not None:
            request = SubmitCertificateRequest(certificate=after)

            async def before(peer_id: PeerId) -> object:
                return await self.light.call(
                    peer_id, request, SubmitCertificateReply, timeout=self.options.request_timeout
                )

        certificate, committee = await self._certify_only(
            committee, signed, needed=needed, balance=balance, before=before
        )
        if after is not None and self.background is not None:
            # The members that were not asked (a quorum approved first) get it too.
            self.background.start_soon(self._deliver_quietly, committee, after)
        delivered = await deliver_certificate(
            self.light, committee, certificate, options=self.options, background=self.background
        )
        if not is_quorum(delivered, committee.n_shards):
            logger.warning("certificate delivered to %d shards only", delivered)
        return certificate

    async def _certify_only(
        self,
        committee: Committee,
        signed: SignedOrder,
        *,
        needed: int,
        balance: int,
        before: Callable[[PeerId], Awaitable[object]] | None = None,
    ) -> tuple[CertifiedOrder, Committee]:
        """Approvals from a quorum, the certificate and the committee that approved it (the
        epoch may have changed meanwhile); the caller delivers it. Until the certificate exists
        the order is remembered as unfinished (see :meth:`_view`)."""
        self._unfinished = signed
        try:
            certificate, committee = await certify_order(
                self.light, committee, signed, options=self.options, before=before
            )
        except OrderRefusedError as error:
            self._unfinished = None  # refused by a quorum: the next order may take its place
            if error.reason == "ORDER_OVERDRAWN":
                raise _insufficient(needed, balance) from error
            raise
        self._unfinished = None
        return certificate, committee

    def _sign(
        self, kind: Callable[..., OrderBody], sequence: int, epoch: int, **fields: object
    ) -> SignedOrder:
        """This account's order of ``kind`` at ``sequence``, named for ``epoch``, signed."""
        body = kind(
            network_id=self.genesis.network_id,
            account=self.account,
            sequence=sequence,
            epoch=Epoch(epoch),
            **fields,
        )
        return sign_order(self.owner, body)

    async def _deliver_quietly(self, committee: Committee, certificate: CertifiedOrder) -> None:
        try:
            await deliver_certificate(self.light, committee, certificate, options=self.options)
        except WalrusError as error:
            logger.info("certificate delivery ended reason=%s", error.reason)

    async def pay_for_blob(
        self, *, blob_id: bytes, size: int, deletable: bool, start_epoch: int, end_epoch: int
    ) -> Payment:
        """Buy ``[start_epoch, end_epoch)`` for the blob and attach it (or find an earlier
        payment that covers it). Raises ``InsufficientFundsError`` (with the amount needed),
        ``OrderRefusedError`` (the members' reason) or ``QuorumError``."""
        genesis = self.genesis
        encoded = encoded_size(size, genesis.n_shards)
        async with self._lock:
            price = quote(encoded, end_epoch - start_epoch, await self.prices())
            committee = self.light.committee
            view = await self._view()
            earlier = _earlier_payment(
                view, blob_id, price.units, deletable, start_epoch, end_epoch
            )
            if earlier is not None:
                logger.info("blob already paid for blob=%s", short_id(blob_id))
                return earlier
            if view.balance < price.total:
                raise _insufficient(price.total, view.balance)
            # A store that began in the epoch before this committee's pays for a range from
            # that epoch: its orders name it (members approve an order of the epoch before
            # their own), else "storage cannot start in the past" refuses them.
            epoch = Epoch(min(committee.epoch, max(start_epoch, committee.epoch - 1)))
            buy = self._sign(
                BuyStorageBody,
                view.next_sequence,
                epoch,
                units=price.units,
                start_epoch=Epoch(start_epoch),
                end_epoch=Epoch(end_epoch),
                amount=price.storage_cost,
            )
            resource = order_id(buy)
            attach = self._sign(
                AttachBlobBody,
                view.next_sequence + 1,
                epoch,
                resource=resource,
                blob_id=BlobId(blob_id),
                encoded_size=encoded,
                deletable=deletable,
                amount=price.write_fee,
            )
            bought, committee = await self._certify_only(
                committee, buy, needed=price.total, balance=view.balance
            )
            await self._certify(
                committee, attach, needed=price.write_fee, balance=view.balance, after=bought
            )
        logger.info(
            "blob storage paid blob=%s units=%d epochs=[%d,%d) storage=%d write=%d",
            short_id(blob_id),
            price.units,
            start_epoch,
            end_epoch,
            price.storage_cost,
            price.write_fee,
        )
        return Payment(
            resource=resource,
            attach=order_id(attach),
            start_epoch=start_epoch,
            end_epoch=end_epoch,
            units=price.units,
            storage_cost=price.storage_cost,
            write_fee=price.write_fee,
        )

    async def pay_with_resource(
        self,
        *,
        resource_id: bytes,
        blob_id: bytes,
        size: int,
        deletable: bool,
        start_epoch: int,
        end_epoch: int,
    ) -> Payment:
        """Attach the blob to a free storage resource of the account (bought ahead, split, or
        released after a delete) instead of buying storage: only the write fee is paid. The
        resource must hold the blob's units and cover ``[start_epoch, end_epoch)``; it is read
        from the members' ledgers (the answer of the most shard weight) and checked before
        anything is signed, so a resource that cannot pay for the blob costs nothing.
        Raises ``NotFoundError`` (no such resource of the account) or ``WalrusError`` with
        reason ``RESOURCE_UNUSABLE`` (attached to another blob, too small, too short)."""
        units = storage_units(encoded_size(size, self.genesis.n_shards))
        async with self._lock:
            committee = self.light.committee
            entries = (await economy_view(self.light, self.account, options=self.options)).reply
            entry = next((e for e in entries.resources if e.resource_id == resource_id), None)
            if entry is None:
                raise NotFoundError(
                    f"storage {resource_id.hex()} is not a resource of this account (or not "
                    "among the 64 the members list: free ones come first)"
                )
            covered = entry.start_epoch <= start_epoch and end_epoch <= entry.end_epoch
            attached_here = entry.blob_id is not None and bytes(entry.blob_id) == bytes(blob_id)
            if attached_here and entry.deletable == deletable and covered and entry.units >= units:
                # A store retried after the attachment: it pays once.
                logger.info("blob already attached to storage blob=%s", short_id(blob_id))
                return Payment(resource_id, b"", start_epoch, end_epoch, units, 0, 0, True)
            problem = None
            if entry.blob_id is not None:
                problem = f"it holds blob {short_id(entry.blob_id)}"
            elif entry.units < units:
                problem = f"it holds {entry.units} units, the blob needs {units}"
            elif not covered:
                problem = (
                    f"it covers epochs [{entry.start_epoch}, {entry.end_epoch}), the blob "
                    f"needs [{start_epoch}, {end_epoch}) (store with --end-epoch "
                    f"{entry.end_epoch} or less)"
                )
            if problem is not None:
                raise WalrusError(
                    f"storage {resource_id.hex()[:16]}… cannot hold this blob: {problem}",
                    reason="RESOURCE_UNUSABLE",
                )
            prices = await self.prices()
            write_fee = prices.write_fee(units)
            view = await self._view()
            if view.balance < write_fee:
                raise _insufficient(write_fee, view.balance)
            attach = self._sign(
                AttachBlobBody,
                view.next_sequence,
                Epoch(committee.epoch),
                resource=resource_id,
                blob_id=BlobId(blob_id),
                encoded_size=encoded_size(size, self.genesis.n_shards),
                deletable=deletable,
                amount=write_fee,
            )
            await self._certify(committee, attach, needed=write_fee, balance=view.balance)
        logger.info(
            "blob attached to storage blob=%s resource=%s write=%d",
            short_id(blob_id),
            resource_id.hex()[:16],
            write_fee,
        )
        return Payment(resource_id, order_id(attach), start_epoch, end_epoch, units, 0, write_fee)

    async def release(self, blob_id: bytes, *, attempts: int = 4, pause: float = 1.0) -> bytes:
        """Free the storage resource of this account's deleted, deletable blob for reuse
        (docs/economics.md, "Storage resources"); returns its id. Members approve only once
        their record book holds the delete (``RESOURCE_IN_USE`` before), so the same order is
        asked again, ``attempts`` times at most, ``pause`` seconds apart."""
        async with self._lock:
            committee = self.light.committee
            view = await self._view()
            resource_id, resource = await self.attached_resource(blob_id, view.next_sequence)
            if not resource.deletable:
                raise WalrusError(
                    f"the storage of blob {short_id(blob_id)} is not deletable",
                    reason="NOT_DELETABLE",
                )
            order = self._sign(
                ReleaseStorageBody,
                view.next_sequence,
                Epoch(committee.epoch),
                resource=resource_id,
            )
            for attempt in range(1, attempts + 1):
                try:
                    await self._certify(committee, order, needed=0, balance=view.balance)
                    return resource_id
                except OrderRefusedError as error:
                    if error.reason != "RESOURCE_IN_USE" or attempt == attempts:
                        raise
                    logger.info("release waits for the delete to reach the members")
                    await trio.sleep(pause)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def pay_extension(self, *, blob_id: bytes, end_epoch: int) -> int:
        """Extend the resource this account attached to ``blob_id`` to ``end_epoch``; returns
        what it cost (0 if the resource already lasts that long). ``NotFoundError`` when the
        account attached no resource to the blob."""
        async with self._lock:
            committee = self.light.committee
            view = await self._view()
            resource_id, resource = await self.attached_resource(blob_id, view.next_sequence)
            if resource.shared:
                raise WalrusError(
                    f"blob {short_id(blob_id)} is a shared blob: it is extended from its funds "
                    f"(walrus-peer extend --shared {resource_id.hex()} --epochs N)",
                    reason="SHARED_BLOB",
                )
            if end_epoch <= resource.end_epoch:
                return 0
            prices = await self.prices()
            amount = prices.storage_cost(resource.units, end_epoch - resource.end_epoch)
            if view.balance < amount:
                raise _insufficient(amount, view.balance)
            extend = self._sign(
                ExtendStorageBody,
                view.next_sequence,
                Epoch(committee.epoch),
                resource=resource_id,
                end_epoch=Epoch(end_epoch),
                amount=amount,
            )
            await self._certify(committee, extend, needed=amount, balance=view.balance)
            return amount

    async def attached_resource(
        self, blob_id: bytes, next_sequence: int
    ) -> tuple[bytes, _Resource]:
        """The account's resource attached to ``blob_id`` that lasts longest, rebuilt from the
        account's own certified orders (each verified) as a member lists them; another member
        is asked if one fails or withholds them."""
        failures: list[str] = []
        for source in list(self.light.committee.peer_ids)[:3]:
            try:
                resources = await self._read_resources(source, next_sequence)
            except WalrusError as error:
                failures.append(f"{source[:12]}: {error.reason}")
                continue
            attached = [
                (key, res) for key, res in resources.items() if res.blob_id == bytes(blob_id)
            ]
            if attached:
                return max(attached, key=lambda item: item[1].end_epoch)
        detail = f" ({'; '.join(failures)})" if failures else ""
        raise NotFoundError(
            f"this account attached no storage resource to blob {short_id(blob_id)}{detail}"
        )

    async def _read_resources(self, source: PeerId, next_sequence: int) -> dict[bytes, _Resource]:
        resources: dict[bytes, _Resource] = {}
        start: bytes | None = order_key(self.account, 0)
        seen = 0
        for _page in range(MAX_LISTING_PAGES):
            if start is None or seen >= next_sequence:
                break
            reply = await self.light.call(
                source,
                ListCertificatesRequest(start=start, limit=MAX_CERTIFICATES_PER_MESSAGE),
                ListCertificatesReply,
                timeout=self.options.request_timeout,
            )
            for encoded in reply.certificates:
                certificate = decode_certificate(encoded)
                body = verify_certified_order(
                    certificate, self.genesis.network_id, self.light.committee_of
                )
                if body.account != self.account:
                    return resources  # the listing moved on to the next account
                seen = body.sequence + 1
                _apply(resources, order_id(certificate.order), body)
            start = reply.next_start
        return resources


def _apply(resources: dict[bytes, _Resource], identifier: bytes, body: object) -> None:
    """What an order of the account does to its resources, as the ledger does it."""
    if isinstance(body, BuyStorageBody):
        resources[identifier] = _Resource(body.units, body.start_epoch, body.end_epoch)
    elif isinstance(body, ExtendStorageBody | AttachBlobBody | ReleaseStorageBody):
        old = resources.get(bytes(body.resource))
        if old is None:
            return
        if isinstance(body, ExtendStorageBody):
            new = dataclasses.replace(old, end_epoch=body.end_epoch)
        elif isinstance(body, AttachBlobBody):
            new = dataclasses.replace(
                old,
                blob_id=bytes(body.blob_id),
                deletable=body.deletable,
                encoded_size=body.encoded_size,
                attach=identifier,
            )
        else:
            new = _Resource(old.units, old.start_epoch, old.end_epoch)
        resources[bytes(body.resource)] = new
    elif isinstance(body, SplitStorageBody):
        whole = resources.pop(bytes(body.resource), None)
        if whole is None:
            return
        first_id, second_id = split_resource_ids(identifier)
        if body.kind is SplitKind.SIZE:
            first = dataclasses.replace(whole, units=body.at)
            second = dataclasses.replace(whole, units=whole.units - body.at)
        else:
            first = dataclasses.replace(whole, end_epoch=body.at)
            second = dataclasses.replace(whole, start_epoch=body.at)
        resources[first_id] = first
        resources[second_id] = second
    elif isinstance(body, ShareBlobBody):
        shared = resources.get(bytes(body.resource))
        if shared is not None:
            resources[bytes(body.resource)] = dataclasses.replace(shared, shared=True)


def _insufficient(needed: int, balance: int) -> InsufficientFundsError:
    return InsufficientFundsError(
        f"the account's balance does not cover the payment: needs {needed} FROST "
        f"({format_wal(needed)} WAL), has {balance} FROST ({format_wal(balance)} WAL)",
        needed=needed,
        balance=balance,
    )
