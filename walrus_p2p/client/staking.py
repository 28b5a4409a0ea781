"""Staking from a wallet, and the economy as the committee reports it.

docs/economics.md, "Staking". Stake is delegated to a storage peer with a certified
``StakeBody`` (its id is the order id); it counts for committees from the first settlement that
lists it (in the epoch value of the next epoch change) and earns a share of each epoch's
payout from then on. ``unstake`` certifies a ``RequestWithdrawBody``: the stake stops counting
from the next committee, and once the settlement that lists the request is applied, ``withdraw``
(a ``WithdrawBody``) moves principal and rewards back to the balance. Each is a certified order,
made with :func:`walrus_p2p.client.wallet.send_order`.

:func:`economy_view` asks the members for their ledger's summary (prices in force, total stake,
pools, fund, burned) and an account's stakes: a derived state that no certificate proves, so the
view is the answer reported by the most shard weight among a quorum of members, and it says how
much weight agreed with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from walrus_p2p.client.network import LightPeer
from walrus_p2p.client.wallet import (
    OrderResult,
    WalletOptions,
    each_member,
    send_fields,
)
from walrus_p2p.core import identity, wire
from walrus_p2p.core.committee import is_validity
from walrus_p2p.core.economy_messages import (
    GetEconomyReply,
    GetEconomyRequest,
    RequestWithdrawBody,
    StakeBody,
    WithdrawBody,
)
from walrus_p2p.errors import ConfigError, QuorumError
from walrus_p2p.types import PeerId

M = TypeVar("M", bound=wire.Message)

__all__ = [
    "EconomyView",
    "economy_view",
    "most_weight",
    "send_stake",
    "send_unstake",
    "send_withdraw",
]


@dataclass(frozen=True, slots=True)
class EconomyView:
    reply: GetEconomyReply
    """The summary the most shard weight reported."""
    agreeing_shards: int
    answered_shards: int
    n_shards: int


async def economy_view(
    light: LightPeer,
    account: bytes | None = None,
    *,
    options: WalletOptions | None = None,
) -> EconomyView:
    """The committee's view of the economy (and of ``account``'s stakes). Raises
    ``QuorumError`` when fewer than f + 1 shards answered."""
    options = options or WalletOptions()
    request = GetEconomyRequest(account=account)

    async def ask(peer_id: PeerId) -> GetEconomyReply:
        return await light.call(peer_id, request, GetEconomyReply, timeout=options.request_timeout)

    reply, agreeing, answered = await most_weight(light, ask, "the economy", options=options)
    return EconomyView(reply, agreeing, answered, light.committee.n_shards)


async def most_weight(
    light: LightPeer,
    ask: Callable[[PeerId], Awaitable[M]],
    what: str,
    *,
    options: WalletOptions,
) -> tuple[M, int, int]:
    """Ask the committee's members until a quorum answered; the answer (by its encoding) the
    most shard weight gave, that weight, and the weight that answered. ``QuorumError`` when
    fewer than f + 1 shards answered (a ledger's summary is not provable by a certificate)."""
    committee = light.committee
    replies, failures = await each_member(
        committee, ask, options=options, enough=lambda answers, _: committee.is_quorum(answers)
    )
    answered = committee.shard_weight(replies)
    if not is_validity(answered, committee.n_shards):
        detail = "; ".join(f"{p[:12]}: {e.reason}" for p, e in sorted(failures.items())[:4])
        raise QuorumError(
            f"only {answered} of {committee.n_shards} shards answered about {what} ({detail})"
        )
    weights: dict[bytes, int] = {}
    by_encoding: dict[bytes, M] = {}
    for peer_id, reply in replies.items():
        encoded = wire.encode(reply)
        by_encoding[encoded] = reply
        weights[encoded] = weights.get(encoded, 0) + committee.shard_weight([peer_id])
    best = min(weights, key=lambda encoded: (-weights[encoded], encoded))
    return by_encoding[best], weights[best], answered


async def send_stake(
    light: LightPeer,
    owner: identity.Identity,
    peer_id: PeerId,
    amount: int,
    *,
    options: WalletOptions | None = None,
) -> OrderResult:
    """Stake ``amount`` FROST with the storage peer ``peer_id`` (a member of the current
    committee: its public key is taken from there)."""
    if amount <= 0:
        raise ConfigError("the amount must be positive")
    await light.refresh_if_stale(min_interval=0.0)
    if peer_id not in light.committee:
        raise ConfigError(f"{peer_id} is not a storage peer of epoch {light.epoch}")
    peer_key = light.committee.member(peer_id).public_key

    return await send_fields(light, owner, StakeBody, options=options, peer=peer_key, amount=amount)


async def send_unstake(
    light: LightPeer,
    owner: identity.Identity,
    stake_id: bytes,
    *,
    options: WalletOptions | None = None,
) -> OrderResult:
    """Ask to withdraw the stake ``stake_id`` (its withdrawal completes at the next epoch
    change that lists the request)."""

    return await send_fields(light, owner, RequestWithdrawBody, options=options, stake=stake_id)


async def send_withdraw(
    light: LightPeer,
    owner: identity.Identity,
    stake_id: bytes,
    *,
    options: WalletOptions | None = None,
) -> OrderResult:
    """Move a withdrawable stake's principal and rewards back to the balance."""
    return await send_fields(light, owner, WithdrawBody, options=options, stake=stake_id)
