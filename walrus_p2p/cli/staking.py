"""``walrus-peer stake|unstake|withdraw|stakes``: delegating WAL to storage peers.

docs/economics.md, "Staking". The wallet (``--wallet``, as for ``walrus-peer wallet``) signs a
certified order: ``stake PEER_ID AMOUNT`` stakes with a storage peer of the current committee
and prints the stake's id; the stake counts from the committee after the next epoch change and
earns a share of every epoch's payout from then on. ``unstake STAKE_ID`` asks to withdraw it:
it stops counting at the next epoch change, and from then on ``withdraw STAKE_ID`` moves its
principal and rewards back to the balance. ``stakes [ADDRESS]`` lists an account's stakes as the
committee's ledgers hold them. Errors are one line with their reason code
(``STAKE_NOT_WITHDRAWABLE``, ``STAKE_UNKNOWN``, ``ORDER_OVERDRAWN``, ...).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from walrus_p2p.cli._common import EXIT_OK, UsageError, print_json, wallet_path
from walrus_p2p.cli.wallet import address_of, parse_amount, run_wallet_light, wallet_options

if TYPE_CHECKING:
    from walrus_p2p.client.network import LightPeer
    from walrus_p2p.client.wallet import OrderResult
    from walrus_p2p.core.economy_messages import StakeEntry


def parse_stake_id(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError as error:
        raise UsageError(f"{text}: a stake id is 64 hex digits") from error
    if len(value) != 32:
        raise UsageError(f"{text}: a stake id is 64 hex digits")
    return value


def order_json(result: OrderResult, **extra: Any) -> dict[str, Any]:
    return {
        "orderId": result.order_id.hex(),
        "account": result.account.hex(),
        "kind": type(result.body).__name__.removesuffix("Body"),
        "sequence": result.body.sequence,
        "epoch": int(result.body.epoch),
        "approvedShards": result.approved_shards,
        "deliveredShards": result.delivered_shards,
        "shards": result.n_shards,
        **extra,
    }


def stake_json(entry: StakeEntry) -> dict[str, Any]:
    from walrus_p2p.client.wallet import format_wal
    from walrus_p2p.core.identity import peer_id_from_public_key

    return {
        "stakeId": entry.stake_id.hex(),
        "peerId": peer_id_from_public_key(entry.peer),
        "principal": entry.principal,
        "principalWal": format_wal(entry.principal),
        "rewards": entry.rewards,
        "rewardsWal": format_wal(entry.rewards),
        "state": entry.state.name.lower(),
        "activeFrom": entry.active_from,
        "activeUntil": entry.active_until,
        "withdrawalRequest": None if entry.request is None else entry.request.hex(),
    }


def _command_stake(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.staking import send_stake
    from walrus_p2p.client.wallet import format_wal, load_wallet
    from walrus_p2p.types import PeerId

    owner = load_wallet(wallet_path(arguments))
    amount = parse_amount(arguments.amount, frost=arguments.frost)

    async def work(light: LightPeer) -> int:
        result = await send_stake(light, owner, PeerId(arguments.peer_id), amount)
        if arguments.json:
            print_json(order_json(result, stakeId=result.order_id.hex(), amount=amount))
        else:
            print(
                f"staked {format_wal(amount)} WAL with {arguments.peer_id}: stake "
                f"{result.order_id.hex()} (counts from the committee after the next epoch "
                f"change); certified by {result.approved_shards} of {result.n_shards} shards"
            )
        return EXIT_OK

    return run_wallet_light(arguments, work)


def _stake_order(arguments: argparse.Namespace, send: Any, done: str) -> int:
    """Certify one order on a stake of the wallet (``send``: ``send_unstake`` or
    ``send_withdraw``) and print what happened (``done`` names the stake id as ``{stake}``)."""
    from walrus_p2p.client.wallet import load_wallet

    owner = load_wallet(wallet_path(arguments))
    stake_id = parse_stake_id(arguments.stake_id)

    async def work(light: LightPeer) -> int:
        result = await send(light, owner, stake_id)
        if arguments.json:
            print_json(order_json(result, stakeId=stake_id.hex()))
        else:
            print(done.format(stake=stake_id.hex(), order=result.order_id.hex()[:16]))
        return EXIT_OK

    return run_wallet_light(arguments, work)


def _command_unstake(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.staking import send_unstake

    return _stake_order(
        arguments,
        send_unstake,
        "withdrawal of stake {stake} requested (order {order}): it stops counting at the next "
        "epoch change, then `walrus-peer withdraw {stake}` returns it",
    )


def _command_withdraw(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.staking import send_withdraw

    return _stake_order(
        arguments, send_withdraw, "stake {stake} withdrawn to the balance (order {order})"
    )


def _command_stakes(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.staking import economy_view

    address = address_of(arguments)

    async def work(light: LightPeer) -> int:
        view = await economy_view(light, address)
        stakes = [stake_json(entry) for entry in view.reply.stakes]
        if arguments.json:
            print_json(
                {
                    "address": address.hex(),
                    "epoch": int(view.reply.epoch),
                    "stakes": stakes,
                    "agreeingShards": view.agreeing_shards,
                    "answeredShards": view.answered_shards,
                    "shards": view.n_shards,
                }
            )
            return EXIT_OK
        print(
            f"account {address.hex()}: {len(stakes)} stakes (epoch {view.reply.epoch}; "
            f"{view.agreeing_shards} of {view.n_shards} shards agree)"
        )
        for row in stakes:
            when = "" if row["activeFrom"] is None else f" from epoch {row['activeFrom']}"
            if row["activeUntil"] is not None:
                when += f" until {row['activeUntil']}"
            print(
                f"  {row['stakeId']} {row['state']}{when} with {row['peerId']}: "
                f"{row['principalWal']} WAL + {row['rewardsWal']} WAL rewards"
            )
        return EXIT_OK

    return run_wallet_light(arguments, work)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stake = commands.add_parser("stake", help="stake WAL with a storage peer")
    stake.add_argument("peer_id", metavar="PEER_ID", help="a storage peer of the committee")
    stake.add_argument("amount", metavar="AMOUNT", help="WAL, e.g. 10 (FROST with --frost)")
    stake.add_argument("--frost", action="store_true", help="AMOUNT is an integer of FROST")
    wallet_options(stake, network=True)
    stake.set_defaults(handler=_command_stake)

    unstake = commands.add_parser("unstake", help="ask to withdraw a stake")
    unstake.add_argument("stake_id", metavar="STAKE_ID", help="64 hex digits")
    wallet_options(unstake, network=True)
    unstake.set_defaults(handler=_command_unstake)

    withdraw = commands.add_parser(
        "withdraw", help="return a withdrawable stake (principal and rewards) to the balance"
    )
    withdraw.add_argument("stake_id", metavar="STAKE_ID", help="64 hex digits")
    wallet_options(withdraw, network=True)
    withdraw.set_defaults(handler=_command_withdraw)

    stakes = commands.add_parser("stakes", help="an account's stakes as the committee holds them")
    stakes.add_argument("address", nargs="?", metavar="ADDRESS", help="default: the wallet's")
    wallet_options(stakes, network=True)
    stakes.set_defaults(handler=_command_stakes)
