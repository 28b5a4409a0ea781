"""``walrus-peer share|fund-shared-blob|shared`` and ``extend --shared``: shared blobs.

docs/economics.md, "Shared blobs". ``share BLOB_ID [--amount WAL]`` makes the wallet's permanent
blob shared and prints its shared id; ``fund-shared-blob ID AMOUNT`` moves WAL from the wallet
into a shared blob's funds; ``extend --shared ID --epochs N`` asks for N more epochs, carried out
from the funds at the next epoch change; ``shared ID`` shows a shared blob's funds, end and
waiting requests. ``ID`` is a shared blob id or a blob id with one shared blob. Errors are one
line with their reason code (``RESOURCE_UNKNOWN``, ``ORDER_OVERDRAWN``, ``NOT_SHAREABLE``, ...).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from walrus_p2p.cli._common import EXIT_OK, UsageError, print_json, wallet_path
from walrus_p2p.cli.staking import order_json
from walrus_p2p.cli.wallet import parse_amount, run_wallet_light, wallet_options

if TYPE_CHECKING:
    from walrus_p2p.client.network import LightPeer
    from walrus_p2p.core.economy_messages import GetSharedBlobReply, SharedBlobEntry


def parse_key(text: str) -> bytes:
    """A shared blob id (64 hex digits) or a blob id (its base64url text or 64 hex digits)."""
    from walrus_p2p.types import blob_id_from_text

    try:
        value = bytes.fromhex(text)
        if len(value) == 32:
            return value
    except ValueError:
        pass
    from walrus_p2p.errors import WireError

    try:
        return bytes(blob_id_from_text(text))
    except WireError as error:
        raise UsageError(f"{text}: not a shared blob id (64 hex digits) or a blob id") from error


def _entry_json(entry: SharedBlobEntry, reply: GetSharedBlobReply) -> dict[str, Any]:
    from walrus_p2p.client.wallet import format_wal
    from walrus_p2p.types import blob_id_to_text

    per_epoch = entry.units * reply.storage_price
    return {
        "sharedId": entry.shared_id.hex(),
        "blobId": blob_id_to_text(entry.blob_id),
        "owner": entry.owner.hex(),
        "units": entry.units,
        "endEpoch": int(entry.end_epoch),
        "funds": entry.funds,
        "fundsWal": format_wal(entry.funds),
        "costPerEpoch": per_epoch,
        "epochsFunded": entry.funds // per_epoch if per_epoch else None,
        "pendingRequests": entry.pending_requests,
    }


def _command_share(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.shared import send_share
    from walrus_p2p.client.wallet import format_wal, load_wallet
    from walrus_p2p.types import blob_id_from_text

    owner = load_wallet(wallet_path(arguments))
    blob_id = blob_id_from_text(arguments.blob_id)
    amount = (
        0 if arguments.amount is None else parse_amount(arguments.amount, frost=arguments.frost)
    )

    async def work(light: LightPeer) -> int:
        result = await send_share(light, owner, blob_id, amount)
        shared_id = result.body.resource.hex()  # type: ignore[union-attr]
        if arguments.json:
            print_json(
                order_json(result, sharedId=shared_id, blobId=arguments.blob_id, amount=amount)
            )
        else:
            print(
                f"blob {arguments.blob_id} is shared: {shared_id} (funds {format_wal(amount)} "
                f"WAL); anyone may now `walrus-peer fund-shared-blob {shared_id} AMOUNT` and "
                f"`walrus-peer extend --shared {shared_id} --epochs N`"
            )
        return EXIT_OK

    return run_wallet_light(arguments, work)


def _command_fund(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.shared import resolve_shared, send_fund_shared
    from walrus_p2p.client.wallet import format_wal, load_wallet

    owner = load_wallet(wallet_path(arguments))
    key = parse_key(arguments.shared_id)
    amount = parse_amount(arguments.amount, frost=arguments.frost)

    async def work(light: LightPeer) -> int:
        shared_id = await resolve_shared(light, key)
        result = await send_fund_shared(light, owner, shared_id, amount)
        if arguments.json:
            print_json(order_json(result, sharedId=shared_id.hex(), amount=amount))
        else:
            print(
                f"moved {format_wal(amount)} WAL into shared blob {shared_id.hex()} "
                f"(order {result.order_id.hex()[:16]})"
            )
        return EXIT_OK

    return run_wallet_light(arguments, work)


def command_extend_shared(arguments: argparse.Namespace) -> int:
    """``extend --shared ID --epochs N`` (called by ``extend``)."""
    from walrus_p2p.client.shared import resolve_shared, send_extend_shared
    from walrus_p2p.client.wallet import load_wallet

    owner = load_wallet(wallet_path(arguments))
    key = parse_key(arguments.blob_id)

    async def work(light: LightPeer) -> int:
        shared_id = await resolve_shared(light, key)
        result = await send_extend_shared(light, owner, shared_id, arguments.epochs)
        epoch = int(result.body.epoch)
        if arguments.json:
            print_json(order_json(result, sharedId=shared_id.hex(), epochs=arguments.epochs))
        else:
            print(
                f"asked for shared blob {shared_id.hex()} to live {arguments.epochs} more "
                f"epochs (order {result.order_id.hex()[:16]}): the change at the end of epoch "
                f"{epoch} carries it out if the blob's funds cover it (see `walrus-peer shared "
                f"{shared_id.hex()}`)"
            )
        return EXIT_OK

    return run_wallet_light(arguments, work)


def _command_shared(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.shared import shared_view
    from walrus_p2p.errors import NotFoundError

    key = parse_key(arguments.shared_id)

    async def work(light: LightPeer) -> int:
        view = await shared_view(light, key)
        rows = [_entry_json(entry, view.reply) for entry in view.reply.shared]
        if not rows:
            raise NotFoundError(f"{arguments.shared_id} names no shared blob the committee knows")
        if arguments.json:
            print_json(
                {
                    "epoch": int(view.reply.epoch),
                    "storagePrice": view.reply.storage_price,
                    "shared": rows,
                    "agreeingShards": view.agreeing_shards,
                    "answeredShards": view.answered_shards,
                    "shards": view.n_shards,
                }
            )
            return EXIT_OK
        print(f"epoch {view.reply.epoch} ({view.agreeing_shards} of {view.n_shards} shards agree)")
        for row in rows:
            print(
                f"  {row['sharedId']} blob {row['blobId']} until epoch {row['endEpoch']}: "
                f"funds {row['fundsWal']} WAL ({row['epochsFunded']} more epochs at "
                f"{row['costPerEpoch']} FROST each), {row['pendingRequests']} requests waiting"
            )
        return EXIT_OK

    return run_wallet_light(arguments, work)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    share = commands.add_parser(
        "share", help="make the wallet's permanent blob a shared blob anyone can fund and extend"
    )
    share.add_argument("blob_id", metavar="BLOB_ID")
    share.add_argument("--amount", metavar="AMOUNT", help="WAL to put in its funds (default 0)")
    share.add_argument("--frost", action="store_true", help="AMOUNT is an integer of FROST")
    wallet_options(share, network=True)
    share.set_defaults(handler=_command_share)

    fund = commands.add_parser("fund-shared-blob", help="add WAL to a shared blob's funds")
    fund.add_argument("shared_id", metavar="SHARED_ID", help="a shared blob id or its blob id")
    fund.add_argument("amount", metavar="AMOUNT", help="WAL, e.g. 10 (FROST with --frost)")
    fund.add_argument("--frost", action="store_true", help="AMOUNT is an integer of FROST")
    wallet_options(fund, network=True)
    fund.set_defaults(handler=_command_fund)

    shared = commands.add_parser("shared", help="a shared blob's funds, end and waiting requests")
    shared.add_argument("shared_id", metavar="SHARED_ID", help="a shared blob id or its blob id")
    wallet_options(shared, network=True)
    shared.set_defaults(handler=_command_shared)
