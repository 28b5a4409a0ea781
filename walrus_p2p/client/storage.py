"""Storage resources from a wallet: buy ahead, split, list (docs/economics.md, "Storage
resources").

A storage resource is ``units`` MiB of encoded size for epochs [start, end), owned by an account:
bought with a certified ``BuyStorageBody`` (its id is the order id), split in two by size or by
epoch with a ``SplitStorageBody`` (the parts' ids are ``split_resource_ids`` of the split order),
attached to a blob by a store (``store --storage ID``, :meth:`Payer.pay_with_resource`) and
released after a deletable blob's delete (:meth:`Payer.release`). The account's resources are
read from the members' ledgers (:func:`walrus_p2p.client.staking.economy_view`: the answer the
most shard weight gave).
"""

from __future__ import annotations

from walrus_p2p.client.network import LightPeer
from walrus_p2p.client.staking import economy_view
from walrus_p2p.client.wallet import OrderResult, WalletOptions, send_fields
from walrus_p2p.core import identity
from walrus_p2p.core.economy_messages import (
    BuyStorageBody,
    SplitKind,
    SplitStorageBody,
    split_resource_ids,
)
from walrus_p2p.errors import ConfigError
from walrus_p2p.types import Epoch

__all__ = ["send_buy_storage", "send_split_storage", "split_resource_ids"]


async def send_buy_storage(
    light: LightPeer,
    owner: identity.Identity,
    *,
    units: int,
    epochs: int,
    start_epoch: int | None = None,
    options: WalletOptions | None = None,
) -> OrderResult:
    """Buy ``units`` MiB of encoded size for ``epochs`` epochs from ``start_epoch`` (default:
    the current epoch) at the storage price in force, as the committee reports it. The result's
    ``order_id`` is the resource id; ``body.amount`` is what it cost."""
    options = options or WalletOptions()
    if units <= 0 or epochs <= 0:
        raise ConfigError("units and epochs must be positive")
    await light.refresh_if_stale(min_interval=0.0)
    limit = light.genesis.limits.max_epochs_ahead
    start = light.epoch if start_epoch is None else start_epoch
    if start < light.epoch:
        raise ConfigError(f"storage cannot start before the current epoch ({light.epoch})")
    if start + epochs - light.epoch > limit:
        raise ConfigError(f"storage may end at most {limit} epochs after the current one")
    price = (await economy_view(light, options=options)).reply.storage_price

    return await send_fields(
        light,
        owner,
        BuyStorageBody,
        options=options,
        units=units,
        start_epoch=Epoch(start),
        end_epoch=Epoch(start + epochs),
        amount=units * price * epochs,
    )


async def send_split_storage(
    light: LightPeer,
    owner: identity.Identity,
    resource_id: bytes,
    *,
    units: int | None = None,
    epoch: int | None = None,
    options: WalletOptions | None = None,
) -> OrderResult:
    """Split a free resource: the first part keeps ``units`` units (the second the rest), or
    ends at ``epoch`` (the second starts there). The parts' ids are
    ``split_resource_ids(result.order_id)``."""
    if (units is None) == (epoch is None):
        raise ConfigError("split by --units or by --epoch, one of them")
    kind, at = (SplitKind.SIZE, units) if units is not None else (SplitKind.EPOCH, epoch)
    assert at is not None
    if at <= 0:
        raise ConfigError("the split point must be positive")

    return await send_fields(
        light, owner, SplitStorageBody, options=options, resource=resource_id, kind=kind, at=at
    )
