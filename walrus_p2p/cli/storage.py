"""``walrus-peer buy-storage|split-storage|storage``: storage resources of a wallet.

docs/economics.md, "Storage resources". ``buy-storage (--size BYTES | --units U) --epochs N``
buys storage ahead and prints its id; ``split-storage ID (--units U | --epoch E)`` splits a free
one in two; ``storage [ADDRESS]`` lists an account's resources (free ones first) as the
committee's ledgers hold them. ``store FILE --storage ID`` attaches a blob to a free resource
(paying only the write fee) and ``delete`` frees a deletable blob's resource again. Errors are
one line with their reason code (``ORDER_OVERDRAWN``, ``RESOURCE_UNKNOWN``,
``RESOURCE_UNUSABLE``, ...).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from walrus_p2p.cli._common import EXIT_OK, UsageError, print_json, wallet_path
from walrus_p2p.cli.staking import order_json
from walrus_p2p.cli.wallet import address_of, run_wallet_light, wallet_options

if TYPE_CHECKING:
    from walrus_p2p.client.network import LightPeer
    from walrus_p2p.core.economy_messages import ResourceEntry


def parse_resource_id(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError as error:
        raise UsageError(f"{text}: a storage resource id is 64 hex digits") from error
    if len(value) != 32:
        raise UsageError(f"{text}: a storage resource id is 64 hex digits")
    return value


def resource_json(entry: ResourceEntry) -> dict[str, Any]:
    from walrus_p2p.types import blob_id_to_text

    return {
        "resourceId": entry.resource_id.hex(),
        "units": entry.units,
        "bytes": entry.units << 20,
        "startEpoch": int(entry.start_epoch),
        "endEpoch": int(entry.end_epoch),
        "blobId": None if entry.blob_id is None else blob_id_to_text(entry.blob_id),
        "deletable": entry.deletable,
        "shared": entry.shared,
    }


def _command_buy(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.storage import send_buy_storage
    from walrus_p2p.client.wallet import format_wal, load_wallet
    from walrus_p2p.core.economy import encoded_size, storage_units

    owner = load_wallet(wallet_path(arguments))

    async def work(light: LightPeer) -> int:
        units = arguments.units
        if units is None:
            units = storage_units(encoded_size(arguments.size, light.genesis.n_shards))
        result = await send_buy_storage(
            light, owner, units=units, epochs=arguments.epochs, start_epoch=arguments.start_epoch
        )
        body: Any = result.body
        if arguments.json:
            print_json(
                order_json(
                    result,
                    resourceId=result.order_id.hex(),
                    units=units,
                    startEpoch=int(body.start_epoch),
                    endEpoch=int(body.end_epoch),
                    cost=body.amount,
                )
            )
        else:
            print(
                f"bought storage {result.order_id.hex()}: {units} MiB of encoded size for epochs "
                f"[{body.start_epoch}, {body.end_epoch}) for {format_wal(body.amount)} WAL; "
                f"`walrus-peer store FILE --storage {result.order_id.hex()} --end-epoch "
                f"{body.end_epoch}` uses it"
            )
        return EXIT_OK

    return run_wallet_light(arguments, work)


def _command_split(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.storage import send_split_storage, split_resource_ids
    from walrus_p2p.client.wallet import load_wallet

    owner = load_wallet(wallet_path(arguments))
    resource_id = parse_resource_id(arguments.resource_id)

    async def work(light: LightPeer) -> int:
        result = await send_split_storage(
            light, owner, resource_id, units=arguments.units, epoch=arguments.epoch
        )
        first, second = (part.hex() for part in split_resource_ids(result.order_id))
        if arguments.json:
            print_json(order_json(result, resourceId=resource_id.hex(), parts=[first, second]))
        else:
            print(f"split storage {resource_id.hex()} into {first} and {second}")
        return EXIT_OK

    return run_wallet_light(arguments, work)


def _command_list(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.staking import economy_view

    address = address_of(arguments)

    async def work(light: LightPeer) -> int:
        view = await economy_view(light, address)
        rows = [resource_json(entry) for entry in view.reply.resources]
        if arguments.json:
            print_json(
                {
                    "address": address.hex(),
                    "epoch": int(view.reply.epoch),
                    "resources": rows,
                    "agreeingShards": view.agreeing_shards,
                    "shards": view.n_shards,
                }
            )
            return EXIT_OK
        print(
            f"account {address.hex()}: {len(rows)} storage resources (epoch {view.reply.epoch}; "
            f"{view.agreeing_shards} of {view.n_shards} shards agree)"
        )
        for row in rows:
            if row["blobId"] is None:
                use = "free"
            else:
                use = ("shared " if row["shared"] else "") + f"blob {row['blobId']}"
            print(
                f"  {row['resourceId']} {row['units']} MiB epochs [{row['startEpoch']}, "
                f"{row['endEpoch']}): {use}"
            )
        return EXIT_OK

    return run_wallet_light(arguments, work)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    buy = commands.add_parser("buy-storage", help="buy storage ahead (a storage resource)")
    size = buy.add_mutually_exclusive_group(required=True)
    size.add_argument(
        "--size", type=int, metavar="BYTES", help="room for one blob of this many bytes"
    )
    size.add_argument("--units", type=int, metavar="U", help="MiB of encoded size")
    buy.add_argument("--epochs", type=int, required=True, metavar="N")
    buy.add_argument(
        "--start-epoch", type=int, metavar="E", help="the first epoch (default: the current one)"
    )
    wallet_options(buy, network=True)
    buy.set_defaults(handler=_command_buy)

    split = commands.add_parser("split-storage", help="split a free storage resource in two")
    split.add_argument("resource_id", metavar="ID", help="64 hex digits")
    point = split.add_mutually_exclusive_group(required=True)
    point.add_argument("--units", type=int, metavar="U", help="the first part keeps U units")
    point.add_argument("--epoch", type=int, metavar="E", help="the first part ends at epoch E")
    wallet_options(split, network=True)
    split.set_defaults(handler=_command_split)

    listing = commands.add_parser("storage", help="an account's storage resources")
    listing.add_argument("address", nargs="?", metavar="ADDRESS", help="default: the wallet's")
    wallet_options(listing, network=True)
    listing.set_defaults(handler=_command_list)
