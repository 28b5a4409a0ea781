"""``walrus-peer wallet address|balance|send|history``: a WAL account from the command line.

The wallet is one key file (``--wallet PATH``, else ``WALRUS_WALLET``, else
``~/.walrus-p2p/wallet.key``; ``walrus-peer devnet`` writes a funded one into its directory).
``address`` works offline and creates the wallet when it does not exist; the others join the
network named by ``--genesis`` (or ``WALRUS_GENESIS``) as a light peer and ask its committee
(docs/economics.md, "The protocol"). Amounts are in WAL with up to nine decimals, or in FROST
with ``--frost``. Errors are one line with their reason code, for example ``ORDER_OVERDRAWN``
(the balance does not cover the amount) or ``NOT_ENOUGH_PEERS`` (the committee is not
reachable), and the exit codes of :mod:`walrus_p2p.cli._common`.
"""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from walrus_p2p.cli._common import (
    DEFAULT_WALLET,
    EXIT_OK,
    UsageError,
    add_log_level,
    configure_logging,
    genesis_path,
    print_json,
    wallet_path,
)

if TYPE_CHECKING:
    from walrus_p2p.client.network import LightPeer
    from walrus_p2p.client.wallet import HistoryEntry

MAX_AMOUNT = 2**64 - 1


def parse_amount(text: str, *, frost: bool) -> int:
    """WAL (``1.5``: up to nine decimals) or, with ``frost``, an integer of FROST."""
    try:
        if frost:
            value = int(text)
        else:
            exact = Decimal(text) * 10**9
            if exact != exact.to_integral_value():
                raise UsageError(f"{text}: WAL has at most nine decimals")
            value = int(exact)
    except (ValueError, InvalidOperation, OverflowError) as error:
        raise UsageError(f"{text}: not an amount") from error
    if not 0 < value <= MAX_AMOUNT:
        raise UsageError(f"{text}: the amount must be positive and below 2^64 FROST")
    return value


def address_of(arguments: argparse.Namespace) -> bytes:
    from walrus_p2p.client.wallet import load_wallet, parse_address

    if getattr(arguments, "address", None):
        return parse_address(arguments.address)
    return load_wallet(wallet_path(arguments)).public_key.raw


def run_wallet_light(arguments: argparse.Namespace, work: Any) -> int:
    """Open a light peer of the network (its committee verified from genesis) and run ``work``."""
    import trio

    from walrus_p2p.client.network import open_light_peer
    from walrus_p2p.node.config import load_genesis

    configure_logging(arguments.log_level)
    genesis = load_genesis(genesis_path(arguments))

    async def main_task() -> int:
        async with open_light_peer(genesis) as light:
            result: int = await work(light)
            return result

    code: int = trio.run(main_task)
    return code


def _entry_json(entry: HistoryEntry) -> dict[str, Any]:
    from walrus_p2p.client.wallet import format_wal

    return {
        "orderId": entry.order_id.hex(),
        "kind": entry.kind,
        "sequence": entry.sequence,
        "epoch": entry.epoch,
        "from": entry.account.hex(),
        "to": None if entry.recipient is None else entry.recipient.hex(),
        "amount": entry.amount,
        "amountWal": None if entry.amount is None else format_wal(entry.amount),
    }


def _command_address(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.wallet import ensure_wallet, load_wallet

    path = wallet_path(arguments)
    if arguments.create:
        owner, created = ensure_wallet(path)
    else:
        owner, created = load_wallet(path), False
    if arguments.json:
        print_json({"address": owner.public_key.hex(), "wallet": str(path), "created": created})
    else:
        if created:
            print(f"created wallet {path}")
        print(owner.public_key.hex())
    return EXIT_OK


def _command_balance(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.wallet import account_view, format_wal

    address = address_of(arguments)

    async def work(light: LightPeer) -> int:
        view = await account_view(light, address, history=1)
        if arguments.json:
            print_json(
                {
                    "address": address.hex(),
                    "balance": view.balance,
                    "balanceWal": format_wal(view.balance),
                    "nextSequence": view.next_sequence,
                    "epoch": view.epoch,
                    "answeredShards": view.answered_shards,
                    "shards": view.n_shards,
                    "pending": sorted(order.hex() for order in view.pending),
                }
            )
        else:
            print(f"{format_wal(view.balance)} WAL ({view.balance} FROST)")
            print(
                f"  account {address.hex()}, next sequence {view.next_sequence}, epoch "
                f"{view.epoch}; {view.answered_shards} of {view.n_shards} shards answered"
            )
            for order, weight in sorted(view.pending.items()):
                print(f"  unfinished order {order.hex()[:16]} approved by {weight} shards")
        return EXIT_OK

    return run_wallet_light(arguments, work)


def _command_send(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.wallet import format_wal, load_wallet, parse_address, send_transfer

    owner = load_wallet(wallet_path(arguments))
    recipient = parse_address(arguments.recipient)
    amount = parse_amount(arguments.amount, frost=arguments.frost)

    async def work(light: LightPeer) -> int:
        result = await send_transfer(light, owner, recipient, amount)
        if arguments.json:
            print_json(
                {
                    "orderId": result.order_id.hex(),
                    "from": result.account.hex(),
                    "to": result.recipient.hex(),
                    "amount": result.amount,
                    "amountWal": format_wal(result.amount),
                    "sequence": result.sequence,
                    "epoch": result.epoch,
                    "approvedShards": result.approved_shards,
                    "deliveredShards": result.delivered_shards,
                    "shards": result.n_shards,
                }
            )
        else:
            print(
                f"sent {format_wal(amount)} WAL to {recipient.hex()}: order "
                f"{result.order_id.hex()[:16]} (sequence {result.sequence}) certified by "
                f"{result.approved_shards} of {result.n_shards} shards, delivered to "
                f"{result.delivered_shards}"
            )
        return EXIT_OK

    return run_wallet_light(arguments, work)


def _command_history(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.wallet import account_view, format_wal

    address = address_of(arguments)

    async def work(light: LightPeer) -> int:
        view = await account_view(light, address, history=arguments.limit)
        sent = [_entry_json(entry) for entry in view.orders]
        received = [_entry_json(entry) for entry in view.received]
        if arguments.json:
            print_json(
                {
                    "address": address.hex(),
                    "balance": view.balance,
                    "nextSequence": view.next_sequence,
                    "sent": sent,
                    "received": received,
                }
            )
            return EXIT_OK
        print(f"account {address.hex()}: {format_wal(view.balance)} WAL")
        for title, rows in (("sent", sent), ("received", received)):
            print(f"{title}:" if rows else f"{title}: none")
            for row in rows:
                other = row["to"] if title == "sent" else row["from"]
                amount = "" if row["amountWal"] is None else f" {row['amountWal']} WAL"
                print(
                    f"  #{row['sequence']} epoch {row['epoch']} {row['kind']}{amount} "
                    f"{'to' if title == 'sent' else 'from'} {other} order {row['orderId'][:16]}"
                )
        return EXIT_OK

    return run_wallet_light(arguments, work)


def _limit(text: str) -> int:
    from walrus_p2p.core.economy_messages import MAX_HISTORY

    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from error
    if not 1 <= value <= MAX_HISTORY:
        raise argparse.ArgumentTypeError(f"between 1 and {MAX_HISTORY}")
    return value


def wallet_options(command: argparse.ArgumentParser, *, network: bool) -> None:
    command.add_argument(
        "--wallet",
        metavar="PATH",
        help=f"wallet key file (or WALRUS_WALLET; default {DEFAULT_WALLET})",
    )
    if network:
        command.add_argument(
            "--genesis", metavar="FILE", help="network genesis (or WALRUS_GENESIS)"
        )
    command.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_log_level(command, "warning")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    wallet = commands.add_parser("wallet", help="a WAL account: address, balance, send, history")
    actions = wallet.add_subparsers(dest="wallet_command", metavar="ACTION")
    actions.required = True

    address = actions.add_parser("address", help="print the wallet's account address (offline)")
    address.add_argument(
        "--create", action="store_true", help="create the wallet key file if it does not exist"
    )
    wallet_options(address, network=False)
    address.set_defaults(handler=_command_address)

    balance = actions.add_parser("balance", help="an account's balance as the committee sees it")
    balance.add_argument("address", nargs="?", metavar="ADDRESS", help="default: the wallet's")
    wallet_options(balance, network=True)
    balance.set_defaults(handler=_command_balance)

    send = actions.add_parser("send", help="transfer WAL, certified by the committee")
    send.add_argument("recipient", metavar="ADDRESS")
    send.add_argument("amount", metavar="AMOUNT", help="WAL, e.g. 1.5 (FROST with --frost)")
    send.add_argument("--frost", action="store_true", help="AMOUNT is an integer of FROST")
    wallet_options(send, network=True)
    send.set_defaults(handler=_command_send)

    history = actions.add_parser("history", help="recent certified orders of an account")
    history.add_argument("address", nargs="?", metavar="ADDRESS", help="default: the wallet's")
    history.add_argument("--limit", type=_limit, default=10, metavar="N", help="1..10")
    wallet_options(history, network=True)
    history.set_defaults(handler=_command_history)
