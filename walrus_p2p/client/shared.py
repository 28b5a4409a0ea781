"""Shared blobs from a wallet: share one, fund one, ask for one to be extended, look one up.

docs/economics.md, "Shared blobs". The owner of a permanent blob on a network with an economy
makes it shared with a certified ``ShareBlobBody`` naming the storage resource attached to it
(found among the account's own certified orders, as an extension finds it); the shared blob's
id is that resource's id. Anyone then moves WAL into its funds (``FundSharedBlobBody``) and asks
for it to live longer (``ExtendSharedBlobBody``, free for the asker): the next epoch change
carries the request out from the funds, at the storage price in force, and its settlement states
the blob's new end, which every peer and light client reads from the verified epoch chain.

:func:`shared_view` asks the members' ledgers for a shared blob (funds, end, requests waiting):
a derived state no certificate proves, so, as for :func:`walrus_p2p.client.staking.economy_view`,
the answer is the one the most shard weight gave among a quorum of members.
"""

from __future__ import annotations

from dataclasses import dataclass

from walrus_p2p.client.network import LightPeer
from walrus_p2p.client.payment import Payer
from walrus_p2p.client.staking import most_weight
from walrus_p2p.client.wallet import OrderResult, WalletOptions, send_fields
from walrus_p2p.core import identity
from walrus_p2p.core.economy_messages import (
    ExtendSharedBlobBody,
    FundSharedBlobBody,
    GetSharedBlobReply,
    GetSharedBlobRequest,
    ShareBlobBody,
)
from walrus_p2p.errors import ConfigError, NotFoundError, WalrusError
from walrus_p2p.types import PeerId, short_id

ALL_ORDERS = 2**63
"""A sequence bound no account reaches: read an account's listing to its end."""

__all__ = [
    "SharedView",
    "send_extend_shared",
    "send_fund_shared",
    "send_share",
    "shared_view",
]


@dataclass(frozen=True, slots=True)
class SharedView:
    reply: GetSharedBlobReply
    """What the most shard weight reported."""
    agreeing_shards: int
    answered_shards: int
    n_shards: int


async def shared_view(
    light: LightPeer, key: bytes, *, options: WalletOptions | None = None
) -> SharedView:
    """The shared blob ``key`` names (a shared blob id, or a blob id: each of its shared blobs)
    as the committee's ledgers hold it. ``QuorumError`` when fewer than f + 1 shards answer."""
    options = options or WalletOptions()
    request = GetSharedBlobRequest(key=key)

    async def ask(peer_id: PeerId) -> GetSharedBlobReply:
        return await light.call(
            peer_id, request, GetSharedBlobReply, timeout=options.request_timeout
        )

    reply, agreeing, answered = await most_weight(light, ask, "the shared blob", options=options)
    return SharedView(reply, agreeing, answered, light.committee.n_shards)


async def resolve_shared(
    light: LightPeer, key: bytes, *, options: WalletOptions | None = None
) -> bytes:
    """The shared blob id ``key`` names: itself, or the one shared blob of the blob id ``key``.
    ``NotFoundError`` when none; ``ConfigError`` when a blob has several (one per owner)."""
    view = await shared_view(light, key, options=options)
    found = view.reply.shared
    if not found:
        raise NotFoundError(f"{key.hex()[:16]}… names no shared blob the committee knows")
    if len(found) > 1 and all(entry.shared_id != key for entry in found):
        ids = ", ".join(entry.shared_id.hex() for entry in found)
        raise ConfigError(f"blob {short_id(key)} has {len(found)} shared blobs; name one: {ids}")
    return next((e.shared_id for e in found if e.shared_id == key), found[0].shared_id)


async def send_share(
    light: LightPeer,
    owner: identity.Identity,
    blob_id: bytes,
    amount: int,
    *,
    options: WalletOptions | None = None,
) -> OrderResult:
    """Make ``owner``'s permanent blob ``blob_id`` a shared blob, moving ``amount`` FROST (may
    be 0) into its funds. The shared blob's id is the result's ``body.resource``."""
    if amount < 0:
        raise ConfigError("the amount cannot be negative")
    options = options or WalletOptions()
    await light.refresh_if_stale(min_interval=0.0)
    payer = Payer(light, owner, options=options)
    # All of the account's orders (the listing ends where the next account's begin): the
    # account view that tells the next sequence is asked once, by send_order below.
    resource_id, resource = await payer.attached_resource(blob_id, ALL_ORDERS)
    if resource.shared:
        raise WalrusError(
            f"blob {short_id(blob_id)} is shared already: {resource_id.hex()}",
            reason="SHARED_BLOB",
        )
    if resource.deletable:
        raise WalrusError(
            f"blob {short_id(blob_id)} is deletable: only a permanent blob can be shared",
            reason="NOT_SHAREABLE",
        )

    return await send_fields(
        light, owner, ShareBlobBody, options=options, resource=resource_id, amount=amount
    )


async def send_fund_shared(
    light: LightPeer,
    owner: identity.Identity,
    shared_id: bytes,
    amount: int,
    *,
    options: WalletOptions | None = None,
) -> OrderResult:
    """Move ``amount`` FROST from ``owner``'s account into the shared blob's funds."""
    if amount <= 0:
        raise ConfigError("the amount must be positive")

    return await send_fields(
        light, owner, FundSharedBlobBody, options=options, shared=shared_id, amount=amount
    )


async def send_extend_shared(
    light: LightPeer,
    owner: identity.Identity,
    shared_id: bytes,
    epochs: int,
    *,
    options: WalletOptions | None = None,
) -> OrderResult:
    """Ask for the shared blob to live ``epochs`` epochs longer, paid from its funds at the next
    epoch change (the request costs ``owner`` nothing)."""
    if epochs <= 0:
        raise ConfigError("--epochs must be positive")

    return await send_fields(
        light, owner, ExtendSharedBlobBody, options=options, shared=shared_id, epochs=epochs
    )
