"""Light-client commands: ``blob-id`` (offline), ``store``, ``read``, ``status``, ``list``,
``extend``, ``delete``, the blob attribute commands, ``info``, ``challenges``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from walrus_p2p.cli._common import (
    EXIT_NOT_ENOUGH_PEERS,
    EXIT_OK,
    UsageError,
    add_log_level,
    client_options,
    close_mapping,
    configure_logging,
    genesis_path,
    integer,
    key_directory,
    print_json,
    read_file_bytes,
    run_client,
    run_light,
    shard_count,
)
from walrus_p2p.cli.lifetime import add_lifetime_options, epoch_number
from walrus_p2p.errors import WalrusError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from walrus_p2p.client.encryption import Secret
    from walrus_p2p.client.network import LightPeer
    from walrus_p2p.client.results import BlobStatus
    from walrus_p2p.client.service import WalrusClient
    from walrus_p2p.types import BlobId


def _command_blob_id(arguments: argparse.Namespace) -> int:
    from walrus_p2p.core.encoding import EncodingConfig
    from walrus_p2p.core.metadata import blob_id_of
    from walrus_p2p.types import blob_id_to_text

    config = EncodingConfig.for_shards(arguments.shards)
    data, size = read_file_bytes(arguments.file)
    try:
        blob_id = blob_id_of(memoryview(data), config)
    finally:
        close_mapping(data)
    text = blob_id_to_text(blob_id)
    if arguments.json:
        print(
            json.dumps(
                {
                    "blobId": text,
                    "unencodedLength": size,
                    "shards": config.n,
                    "encodedLength": config.encoded_length(size),
                }
            )
        )
    else:
        print(text)
    return EXIT_OK


def _progress_bar(total: int, label: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label,
        disable=not enabled,
        leave=False,
    )


def record_stored(key_dir: Path, outcome_json: dict[str, Any]) -> None:
    """Remember what this key stored, for `walrus-peer list` (the network has no owner index)."""
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(key_dir / "stored-blobs.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(outcome_json, sort_keys=True) + "\n")


def _command_store(arguments: argparse.Namespace) -> int:
    from walrus_p2p.api import store_outcome_json
    from walrus_p2p.client.wallet import format_wal
    from walrus_p2p.core.encoding import EncodingConfig

    files = list(arguments.files)
    for path in files:
        read_file_bytes(path)[0]  # fail fast on a missing file, before joining the network
    secret = _secret(arguments, storing=True) if arguments.encrypt else None
    storage = None
    if arguments.storage is not None:
        from walrus_p2p.cli.storage import parse_resource_id

        if len(files) > 1:
            raise UsageError("--storage holds one blob: store one FILE with it")
        storage = parse_resource_id(arguments.storage)
    show_progress = not arguments.json and sys.stderr.isatty()

    async def work(client: WalrusClient) -> int:
        from walrus_p2p.cli.lifetime import expiry_warning, lifetime_of

        results = []
        for path in files:
            lifetime = lifetime_of(arguments, client.genesis, client.light.epoch)
            data, size = read_file_bytes(path)
            if secret is not None:
                from walrus_p2p.client.encryption import encrypt

                mapped = data
                data = encrypt(memoryview(data), secret)  # type: ignore[assignment]
                close_mapping(mapped)
                size = len(data)
            config = EncodingConfig.for_shards(client.genesis.n_shards)
            bar = _progress_bar(config.encoded_length(size), os.path.basename(path), show_progress)
            try:
                outcome = await client.store(
                    memoryview(data),
                    epochs=lifetime.epochs,
                    permanent=arguments.permanent,
                    progress=bar.update,
                    wait_all=arguments.wait_all,
                    storage=storage,
                )
            finally:
                bar.close()
                close_mapping(data)
            outcome_json = store_outcome_json(outcome)
            entry: dict[str, Any] = {"path": path, **outcome_json}
            if secret is not None:
                entry["encrypted"] = True
            record_stored(key_directory(arguments), entry)
            warning = expiry_warning(
                client.genesis,
                client.light.epoch,
                outcome.end_epoch,
                arguments.expiry_warning_epochs,
            )
            if warning is not None:
                entry["warning"] = warning
                if not arguments.json:
                    print(f"warning: {path}: {warning}", file=sys.stderr)
            results.append(entry)
            if not arguments.json:
                if "newlyCreated" in outcome_json:
                    blob = outcome_json["newlyCreated"]["blobObject"]
                    paid = ""
                    if client.genesis.economy is not None:
                        cost = outcome_json["newlyCreated"]["cost"]
                        paid = f", paid {cost} FROST ({format_wal(cost)} WAL)"
                    sealed = " (encrypted)" if secret is not None else ""
                    print(
                        f"stored {path}{sealed}: blob id {blob['blobId']} size {blob['size']} "
                        f"until epoch {blob['storage']['endEpoch']}{paid}"
                    )
                else:
                    known = outcome_json["alreadyCertified"]
                    print(
                        f"already certified {path}: blob id {known['blobId']} "
                        f"until epoch {known['endEpoch']}"
                    )
        if arguments.json:
            print_json(results)
        return EXIT_OK

    return run_client(arguments, work, pays=True)


def _command_read(arguments: argparse.Namespace) -> int:
    from walrus_p2p.types import blob_id_from_text

    blob_id = blob_id_from_text(arguments.blob_id)
    secret = _secret(arguments, storing=False) if arguments.decrypt else None
    if (arguments.start is None) != (arguments.length is None):
        raise UsageError("--start and --length go together")
    if arguments.start is not None and arguments.strict:
        raise UsageError("--strict reads the whole blob; it does not go with --start/--length")

    async def work(client: WalrusClient) -> int:
        data = await _read_for_output(client, blob_id, arguments, secret)
        if arguments.output == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            write_atomically(arguments.output, data)
        if arguments.json:
            print_json({"blobId": arguments.blob_id, "size": len(data), "path": arguments.output})
        elif arguments.output != "-":
            print(f"read {len(data)} bytes into {arguments.output}", file=sys.stderr)
        return EXIT_OK

    return run_client(arguments, work)


async def _read_for_output(
    client: WalrusClient, blob_id: BlobId, arguments: argparse.Namespace, secret: Secret | None
) -> bytes | bytearray | memoryview:
    """The bytes ``read`` writes: the blob, or a range of it, decrypted with ``--decrypt``
    (docs/encryption.md). Nothing is written unless every byte verified and decrypted."""
    from walrus_p2p.client.encryption import decrypt, decrypt_range, looks_encrypted

    if arguments.start is None:
        data: bytes | memoryview = await client.read(blob_id, strict=arguments.strict)
        if secret is not None:
            return decrypt(data, secret)
        if looks_encrypted(data):
            print(
                "note: this blob looks encrypted by walrus-p2p; read it with --decrypt",
                file=sys.stderr,
            )
        return data
    status = await client.blob_status(blob_id)
    if status.state != "certified" or status.size is None:
        from walrus_p2p.errors import NotFoundError

        raise NotFoundError(f"blob {arguments.blob_id} is {status.state}, not readable")

    async def read_range(start: int, length: int) -> bytes:
        return await client.read_range(blob_id, start, length)

    if secret is not None:
        plain, _ = await decrypt_range(
            read_range, status.size, secret, arguments.start, arguments.length
        )
        return plain
    end = min(arguments.start + arguments.length, status.size)
    if end <= arguments.start:
        return b""
    return await read_range(arguments.start, end - arguments.start)


def _secret(arguments: argparse.Namespace, *, storing: bool) -> Secret:
    """The key or passphrase of ``--encrypt``/``--decrypt`` (docs/encryption.md, "Keys").

    ``--key-file`` (``store`` creates it when it does not exist yet), ``--passphrase-env VAR``,
    else a passphrase typed at the terminal (twice for ``store``).
    """
    import getpass

    from walrus_p2p.client.encryption import Secret, read_key_file, write_key_file

    if arguments.key_file is not None and arguments.passphrase_env is not None:
        raise UsageError("give --key-file or --passphrase-env, not both")
    if arguments.key_file is not None:
        path = Path(arguments.key_file)
        if storing and not path.exists():
            try:
                key = write_key_file(path)
            except OSError as error:
                message = f"{path}: cannot create the key file ({error.strerror})"
                raise UsageError(message) from error
            print(
                f"created key file {path}: keep it safe, without it the blob cannot be read",
                file=sys.stderr,
            )
            return Secret(key=key)
        try:
            return Secret(key=read_key_file(path))
        except ValueError as error:
            raise UsageError(str(error)) from error
    if arguments.passphrase_env is not None:
        value = os.environ.get(arguments.passphrase_env)
        if not value:
            raise UsageError(f"the environment variable {arguments.passphrase_env} is not set")
        return Secret(passphrase=value.encode())
    if not sys.stdin.isatty():
        raise UsageError("give --key-file FILE or --passphrase-env VAR (no terminal to ask)")
    typed = getpass.getpass("passphrase: ")
    if storing and getpass.getpass("passphrase again: ") != typed:
        raise UsageError("the passphrases differ")
    if not typed:
        raise UsageError("the passphrase is empty")
    return Secret(passphrase=typed.encode())


def write_atomically(path: str, data: bytes | bytearray | memoryview) -> None:
    """Write to a temporary file beside ``path`` and rename: a failed read leaves nothing."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.partial")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise UsageError(f"{path}: cannot write ({error.strerror})") from error


def _status_json(status: BlobStatus) -> dict[str, Any]:
    from walrus_p2p.types import blob_id_to_text

    return {
        "blobId": blob_id_to_text(status.blob_id),
        "state": status.state,
        "size": status.size,
        "certifiedEpoch": status.certified_epoch,
        "endEpoch": status.end_epoch,
        "deletable": status.deletable,
    }


def _command_status(arguments: argparse.Namespace) -> int:
    from walrus_p2p.types import blob_id_from_text

    blob_id = blob_id_from_text(arguments.blob_id)

    async def work(client: WalrusClient) -> int:
        status = await client.blob_status(blob_id)
        summary = _status_json(status)
        if arguments.json:
            print_json(summary)
        else:
            print(" ".join(f"{key}={value}" for key, value in summary.items()))
        return EXIT_OK

    return run_client(arguments, work)


def _command_list(arguments: argparse.Namespace) -> int:
    from walrus_p2p.errors import NotFoundError
    from walrus_p2p.types import blob_id_from_text

    index = key_directory(arguments) / "stored-blobs.jsonl"
    seen: dict[str, str] = {}
    ends: dict[str, int] = {}  # the latest end epoch this key stored each blob until
    if index.exists():
        for line in index.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                created = entry.get("newlyCreated", {}).get("blobObject")
                outcome = created or entry.get("alreadyCertified", {})
                text = str(outcome["blobId"])
                seen.setdefault(text, str(entry.get("path", "")))
                end = created["storage"]["endEpoch"] if created else outcome["endEpoch"]
                if isinstance(end, int):
                    ends[text] = max(end, ends.get(text, end))
            except (ValueError, KeyError, AttributeError, TypeError):
                continue

    async def work(client: WalrusClient) -> int:
        rows = []
        current = client.light.epoch
        for text, path in seen.items():
            try:
                status = _status_json(await client.blob_status(blob_id_from_text(text)))
            except NotFoundError:
                # Peers forget a blob some time after it expires: the index still knows when.
                end = ends.get(text)
                expired = end is not None and end <= current
                status = {
                    "blobId": text,
                    "state": "expired" if expired else "unknown",
                    "endEpoch": end,
                }
            status["path"] = path
            if status["state"] == "expired" and not arguments.include_expired:
                continue
            rows.append(status)
        if arguments.json:
            print_json(rows)
        else:
            for row in rows:
                print(
                    f"{row['blobId']} {row['state']:<10} end_epoch={row.get('endEpoch')} "
                    f"{row['path']}"
                )
        return EXIT_OK

    return run_client(arguments, work)


def _command_extend(arguments: argparse.Namespace) -> int:
    from walrus_p2p.types import blob_id_from_text

    if arguments.shared:
        from walrus_p2p.cli.shared import command_extend_shared

        return command_extend_shared(arguments)
    blob_id = blob_id_from_text(arguments.blob_id)

    async def work(client: WalrusClient) -> int:
        end = await client.extend(blob_id, epochs=arguments.epochs)
        if arguments.json:
            print_json({"blobId": arguments.blob_id, "endEpoch": end})
        else:
            print(f"extended {arguments.blob_id} until epoch {end}")
        return EXIT_OK

    return run_client(arguments, work, pays=True)


def _command_delete(arguments: argparse.Namespace) -> int:
    from walrus_p2p.types import blob_id_from_text

    blob_id = blob_id_from_text(arguments.blob_id)

    async def work(client: WalrusClient) -> int:
        released = await client.delete(blob_id)
        if arguments.json:
            print_json(
                {
                    "blobId": arguments.blob_id,
                    "deleted": True,
                    "releasedStorage": None if released is None else released.hex(),
                }
            )
        else:
            print(f"deleted {arguments.blob_id}")
            if released is not None:
                print(
                    f"its storage {released.hex()} is free again: `walrus-peer store FILE "
                    f"--storage {released.hex()} --end-epoch E` reuses it (`walrus-peer storage` "
                    "lists it)"
                )
        return EXIT_OK

    return run_client(arguments, work, pays=True)


def _attributes_json(blob_text: str, state: Any, owner: bytes) -> dict[str, Any]:
    """The blob's attributes as ``get-blob-attribute --json`` prints them."""
    registrations = []
    for (key_owner, start_epoch), registration in sorted(
        state.live_registrations.items(), key=lambda item: (item[0][1], item[0][0])
    ):
        record = state.attributes.get((key_owner, start_epoch))
        registrations.append(
            {
                "owner": key_owner.hex(),
                "startEpoch": start_epoch,
                "endEpoch": registration.end_epoch,
                "mine": key_owner == owner,
                "version": None if record is None else record.body.version,
                "attributes": state.attributes_of((key_owner, start_epoch)),
            }
        )
    return {
        "blobId": blob_text,
        "attributes": state.effective_attributes,
        "registrations": registrations,
    }


def _command_get_attribute(arguments: argparse.Namespace) -> int:
    from walrus_p2p.types import blob_id_from_text

    blob_id = blob_id_from_text(arguments.blob_id)

    async def work(client: WalrusClient) -> int:
        state = await client.blob_attributes(blob_id)
        summary = _attributes_json(arguments.blob_id, state, client.owner.public_key.raw)
        if arguments.json:
            print_json(summary)
        elif not summary["attributes"]:
            print(f"{arguments.blob_id} has no attributes")
        else:
            for key, value in sorted(summary["attributes"].items()):
                print(f"{key}: {value}")
        return EXIT_OK

    return run_client(arguments, work, pays=True)


def _command_update_attribute(arguments: argparse.Namespace) -> int:
    from walrus_p2p.types import blob_id_from_text

    blob_id = blob_id_from_text(arguments.blob_id)
    pairs = dict(arguments.attr or [])
    keys = list(arguments.keys or [])
    remove_all = arguments.command == "remove-blob-attribute"

    async def work(client: WalrusClient) -> int:
        attributes = await client.update_attributes(
            blob_id, set_pairs=pairs, remove_keys=keys, remove_all=remove_all
        )
        if arguments.json:
            print_json({"blobId": arguments.blob_id, "attributes": attributes})
        elif attributes:
            print(f"attributes of {arguments.blob_id}:")
            for key, value in sorted(attributes.items()):
                print(f"  {key}: {value}")
        else:
            print(f"{arguments.blob_id} has no attributes now")
        return EXIT_OK

    return run_client(arguments, work, pays=True)


def _command_info(arguments: argparse.Namespace) -> int:
    """The current committee, verified from genesis through the epoch records of a live peer.

    A light peer fetches the chain of epoch records from one reachable storage peer and checks
    every record's quorum of signatures from the genesis committee on (client/committee.py).
    With ``--offline``, or if no peer answers, the genesis committee is shown and
    ``verified`` is false.
    """
    from walrus_p2p.core.committee import max_faulty, quorum_threshold, validity_threshold
    from walrus_p2p.node.config import load_genesis

    configure_logging(arguments.log_level)
    genesis = load_genesis(genesis_path(arguments))
    committee = genesis.committee
    start_time = genesis.genesis_time
    arriving: list[int] = []
    verified = False
    problem: str | None = "offline" if arguments.offline else None
    if not arguments.offline:
        from walrus_p2p.client.committee import refresh_committee
        from walrus_p2p.core.migration import moved_shards

        async def fetch(light: LightPeer) -> tuple[Any, int, str | None, list[int], Any]:
            try:
                await refresh_committee(light)
            except WalrusError as error:
                return light.committee, 0, str(error), [], None
            start = light.chain[-1].value.start_time if light.chain else genesis.genesis_time
            previous = light.committee_of(light.epoch - 1)
            moved = [] if previous is None else sorted(moved_shards(previous, light.committee))
            await light.refresh_in_place(min_interval=0.0)
            in_place = light.in_place.get(light.epoch, set())
            view = None
            if genesis.economy is not None:
                from walrus_p2p.client.staking import economy_view

                try:
                    view = await economy_view(light)
                except WalrusError as error:
                    logger.warning("economy summary unavailable: %s", error)
            return light.committee, start, None, [s for s in moved if s not in in_place], view

        committee, start_time, problem, arriving, economy = run_light(arguments, fetch)
        verified = problem is None
    epoch = int(committee.epoch)
    n_shards = genesis.n_shards
    summary: dict[str, Any] = {
        "network": genesis.network,
        "networkId": genesis.network_id_text,
        "epoch": epoch,
        "verified": verified,
        "epochStart": start_time,
        "epochEnd": genesis.epoch_start(epoch + 1),
        "epochDurationSeconds": genesis.epoch_duration_seconds,
        "scheduledEpoch": int(genesis.scheduled_epoch(int(time.time()))),
        "n": n_shards,
        "shards": n_shards,
        "f": max_faulty(n_shards),
        "quorum": quorum_threshold(n_shards),
        "validity": validity_threshold(n_shards),
        "maxShardsPerPeer": genesis.max_shards_per_peer,
        "committee": [
            {
                "peerId": member.peer_id,
                "shards": list(committee.shards_of(member.peer_id)),
                "weight": member.weight,
                "addresses": list(member.addresses),
                # Shards this member gained at this epoch and has not reported in place yet
                # (reads of older blobs still go to their previous owner first).
                "shardsArriving": [
                    shard for shard in arriving if committee.peer_of(shard) == member.peer_id
                ],
            }
            for member in committee.members
        ],
        "limits": {
            "maxBlobSize": genesis.limits.max_blob_size,
            "maxSliverSize": genesis.limits.max_sliver_size,
            "maxFrameSize": genesis.limits.max_frame_size,
            "maxGossipMessageSize": genesis.limits.max_gossip_message_size,
            "maxEpochsAhead": genesis.limits.max_epochs_ahead,
        },
        "prices": _prices_json(genesis),
    }
    if economy is not None:
        reply = economy.reply
        summary["prices"] = {
            "storagePrice": reply.storage_price,
            "writePrice": reply.write_price,
            "unit": "FROST per MiB of encoded size (storage: per epoch)",
            "source": "committee",
        }
        summary["economy"] = {
            "settledEpoch": reply.settled_epoch,
            "totalStake": reply.total_stake,
            "rewardFund": reply.reward_fund,
            "burned": reply.burned,
            "pools": [{"epoch": int(p.epoch), "amount": p.amount} for p in reply.pools],
            "agreeingShards": economy.agreeing_shards,
        }
    if problem is not None:
        summary["unverifiedReason"] = problem
    if arguments.json:
        print_json(summary)
        return EXIT_OK
    print(f"network {summary['network']} ({summary['networkId']})")
    how = "verified from genesis" if verified else f"NOT verified ({problem}): genesis committee"
    print(f"epoch {epoch} ({how}); started {start_time}, ends {summary['epochEnd']} (unix)")
    print(
        f"n={n_shards} f={summary['f']} quorum={summary['quorum']} "
        f"validity={summary['validity']} shards; max shards per peer "
        f"{genesis.max_shards_per_peer or n_shards}"
    )
    limits = summary["limits"]
    print(
        f"limits: blob {limits['maxBlobSize']} B, sliver {limits['maxSliverSize']} B, "
        f"frame {limits['maxFrameSize']} B, {limits['maxEpochsAhead']} epochs ahead"
    )
    prices = summary["prices"]
    if prices is None:
        print("prices: none (no economy: storing is free)")
    else:
        print(
            f"prices ({prices['source']}): storage {prices['storagePrice']} FROST/MiB/epoch, "
            f"write {prices['writePrice']} FROST/MiB"
        )
    if "economy" in summary:
        money = summary["economy"]
        pools = sum(pool["amount"] for pool in money["pools"])
        print(
            f"economy: settled through epoch {money['settledEpoch']}, stake "
            f"{money['totalStake']} FROST, pools {pools} FROST over {len(money['pools'])} "
            f"epochs, reward fund {money['rewardFund']}, burned {money['burned']} FROST"
        )
    for entry in summary["committee"]:
        shards = ",".join(str(shard) for shard in entry["shards"]) or "-"
        pending = ",".join(str(shard) for shard in entry["shardsArriving"])
        arriving_text = f" arriving={pending}" if pending else ""
        print(
            f"  {entry['peerId']} weight={entry['weight']} shards={shards}{arriving_text} "
            f"{' '.join(entry['addresses'])}"
        )
    return EXIT_OK


def _prices_json(genesis: Any) -> dict[str, Any] | None:
    """The prices in force (the genesis's: votes do not move them yet), None without an
    economy."""
    if genesis.economy is None:
        return None
    return {
        "storagePrice": genesis.economy.storage_price,
        "writePrice": genesis.economy.write_price,
        "unit": "FROST per MiB of encoded size (storage: per epoch)",
        "source": "genesis",
    }


def _command_price(arguments: argparse.Namespace) -> int:
    """Prices in force and, for a file, what storing it costs (offline: the genesis's prices;
    docs/economics.md, "Paid storage")."""
    from walrus_p2p.client.payment import blob_quote
    from walrus_p2p.client.wallet import format_wal
    from walrus_p2p.core.economy import encoded_size
    from walrus_p2p.node.config import load_genesis

    configure_logging(arguments.log_level)
    genesis = load_genesis(genesis_path(arguments))
    epochs = arguments.epochs
    if not 1 <= epochs <= genesis.limits.max_epochs_ahead:
        raise UsageError(f"--epochs must be between 1 and {genesis.limits.max_epochs_ahead}")
    prices = _prices_json(genesis)
    summary: dict[str, Any] = {"network": genesis.network, "prices": prices}
    if arguments.file is not None:
        data, size = read_file_bytes(arguments.file)
        close_mapping(data)
        encoded = encoded_size(size, genesis.n_shards)
        entry: dict[str, Any] = {"path": arguments.file, "size": size, "encodedSize": encoded}
        if prices is not None:
            price = blob_quote(genesis, size, epochs)
            entry.update(
                epochs=epochs,
                units=price.units,
                storageCost=price.storage_cost,
                writeFee=price.write_fee,
                total=price.total,
            )
        summary["quote"] = entry
    if arguments.json:
        print_json(summary)
        return EXIT_OK
    if prices is None:
        print(f"network {genesis.network} has no economy: storing is free")
    else:
        print(
            f"prices in force (genesis): storage {prices['storagePrice']} FROST per MiB of "
            f"encoded size per epoch, write {prices['writePrice']} FROST per MiB once"
        )
    quote_entry = summary.get("quote")
    if quote_entry is not None:
        line = (
            f"{quote_entry['path']}: {quote_entry['size']} B, "
            f"encoded {quote_entry['encodedSize']} B"
        )
        if prices is not None:
            line += (
                f" = {quote_entry['units']} MiB units; {epochs} epochs: storage "
                f"{quote_entry['storageCost']} + write {quote_entry['writeFee']} = "
                f"{quote_entry['total']} FROST ({format_wal(quote_entry['total'])} WAL)"
            )
        print(line)
    return EXIT_OK


def _command_health(arguments: argparse.Namespace) -> int:
    """Each member of the current committee: reachable, how fast, epoch, shards in place and
    arriving, version (docs/cli.md, "Health"). Exit 4 when the reachable members hold fewer
    shards than a write quorum."""
    from walrus_p2p.client.committee import refresh_committee
    from walrus_p2p.client.health import HealthReport, fetch_health
    from walrus_p2p.core.committee import quorum_threshold

    async def fetch(light: LightPeer) -> HealthReport:
        await refresh_committee(light)
        return await fetch_health(light, timeout=arguments.timeout)

    report = run_light(arguments, fetch)
    rows = []
    for member in report.members:
        reply = member.reply
        said: dict[str, Any] = dict.fromkeys(
            (
                "epoch",
                "version",
                "uptimeSeconds",
                "peersConnected",
                "shardsInPlace",
                "shardsArriving",
                "challengeCertifiedEpoch",
            )
        )
        if reply is not None:
            said = {
                "epoch": reply.epoch,
                "version": reply.version,
                "uptimeSeconds": reply.uptime_seconds,
                "peersConnected": reply.peers_connected,
                "shardsInPlace": len(reply.shards_in_place),
                "shardsArriving": list(reply.shards_arriving),
                "challengeCertifiedEpoch": reply.challenge_certified_epoch,
            }
        rows.append(
            {
                "peerId": member.peer_id,
                "shards": member.shards,
                "state": member.state(report.epoch),
                "reachable": member.reachable,
                "error": member.error,
                "milliseconds": None if member.seconds is None else round(member.seconds * 1e3, 1),
                **said,
            }
        )
    n_shards = sum(member.shards for member in report.members)
    quorum = quorum_threshold(n_shards) if n_shards else 0
    writable = report.reachable_shards >= quorum > 0
    if arguments.json:
        print_json(
            {
                "epoch": report.epoch,
                "shards": n_shards,
                "reachableShards": report.reachable_shards,
                "writable": writable,
                "members": rows,
            }
        )
    else:
        reachable = sum(1 for member in report.members if member.reachable)
        print(
            f"epoch {report.epoch}: {reachable} of {len(rows)} members answered, holding "
            f"{report.reachable_shards} of {n_shards} shards "
            f"({'a' if writable else 'no'} write quorum: {quorum})"
        )
        print(
            f"  {'peer':<14} {'shards':>6} {'state':<11} {'ms':>7} {'epoch':>5} "
            f"{'in place':>8} {'uptime':>8}  version"
        )
        for row in rows:
            if not row["reachable"]:
                print(
                    f"  {row['peerId'][:12]:<14} {row['shards']:>6} {row['state']:<11} "
                    f"{'-':>7} {'-':>5} {'-':>8} {'-':>8}  ({row['error']})"
                )
                continue
            print(
                f"  {row['peerId'][:12]:<14} {row['shards']:>6} {row['state']:<11} "
                f"{row['milliseconds']:>7.1f} {row['epoch']:>5} {row['shardsInPlace']:>8} "
                f"{_duration(row['uptimeSeconds']):>8}  {row['version']}"
            )
    return EXIT_OK if writable else EXIT_NOT_ENOUGH_PEERS


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _command_challenges(arguments: argparse.Namespace) -> int:
    """Per member of an epoch's committee: whether it holds an availability certificate
    (docs/challenges.md, "Light clients"), each verified against the committee of that epoch
    from the epoch chain this light peer verified from genesis."""
    from walrus_p2p.client.challenges import AvailabilityReport, fetch_availability
    from walrus_p2p.client.committee import refresh_committee

    async def fetch(light: LightPeer) -> AvailabilityReport:
        await refresh_committee(light)
        return await fetch_availability(light, arguments.epoch)

    report = run_light(arguments, fetch)
    rows = [
        {
            "peerId": member.peer_id,
            "shards": member.shards,
            "certified": member.certified,
            "passes": member.signers,
        }
        for member in report.members
    ]
    if arguments.json:
        print_json(
            {
                "epoch": report.epoch,
                "certified": len(report.certified),
                "members": rows,
                "membersAsked": report.asked,
                "membersAnswered": report.answered,
            }
        )
        return EXIT_OK
    print(
        f"epoch {report.epoch}: {len(report.certified)} of {len(rows)} members hold an "
        f"availability certificate (asked {report.asked}, {report.answered} answered)"
    )
    for row in rows:
        verdict = f"certified ({row['passes']} PASS)" if row["certified"] else "no certificate"
        print(f"  {row['peerId']} shards={row['shards']} {verdict}")
    return EXIT_OK


def _secret_options(command: argparse.ArgumentParser, name: str) -> None:
    creating = " (created with a new random key if it does not exist)" if name == "store" else ""
    command.add_argument(
        "--key-file", metavar="FILE", help=f"the encryption key: 64 hex digits{creating}"
    )
    command.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="take the passphrase from this environment variable (default: ask at the terminal)",
    )


def _non_negative(text: str) -> int:
    return integer(text, 0, "a byte count")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    blob_id = commands.add_parser(
        "blob-id", help="print the blob id a network of N shards would give FILE (offline)"
    )
    blob_id.add_argument("file", metavar="FILE")
    blob_id.add_argument("--shards", type=shard_count, default=100, metavar="N")
    blob_id.add_argument("--json", action="store_true", help="print JSON for scripts")
    blob_id.set_defaults(handler=_command_blob_id)

    store = commands.add_parser("store", help="store files as blobs")
    store.add_argument("files", nargs="+", metavar="FILE")
    add_lifetime_options(store)
    store.add_argument("--permanent", action="store_true", help="cannot be deleted before its end")
    store.add_argument(
        "--encrypt",
        action="store_true",
        help="encrypt before storing (docs/encryption.md); the blob id commits to the ciphertext",
    )
    _secret_options(store, "store")
    store.add_argument(
        "--wait-all",
        action="store_true",
        help="return once every member has its slivers (or failed for good), not at the "
        "certificate (a quorum of shards)",
    )
    store.add_argument(
        "--storage",
        metavar="ID",
        help="on a network with an economy: attach the blob to this free storage resource of "
        "the wallet (bought ahead, split or released; `walrus-peer storage` lists them) instead "
        "of buying storage",
    )
    client_options(store)
    store.set_defaults(handler=_command_store)

    read = commands.add_parser("read", help="read a blob into a file")
    read.add_argument("blob_id", metavar="BLOB_ID")
    read.add_argument("-o", "--output", required=True, metavar="FILE", help="'-' for stdout")
    read.add_argument("--strict", action="store_true", help="re-encode and check the blob id")
    read.add_argument(
        "--start", type=_non_negative, metavar="BYTE", help="read from this byte (with --length)"
    )
    read.add_argument("--length", type=_non_negative, metavar="BYTES", help="read this many bytes")
    read.add_argument(
        "--decrypt", action="store_true", help="decrypt a blob stored with store --encrypt"
    )
    _secret_options(read, "read")
    client_options(read)
    read.set_defaults(handler=_command_read)

    status = commands.add_parser("status", help="what the network knows of a blob")
    status.add_argument("blob_id", metavar="BLOB_ID")
    client_options(status)
    status.set_defaults(handler=_command_status)

    listing = commands.add_parser("list", help="blobs stored with this key, and their status")
    listing.add_argument("--include-expired", action="store_true", help="list expired blobs too")
    client_options(listing)
    listing.set_defaults(handler=_command_list)

    extend = commands.add_parser("extend", help="keep a blob stored for more epochs")
    extend.add_argument(
        "blob_id", metavar="BLOB_ID", help="with --shared: a shared blob id or its blob id"
    )
    extend.add_argument("--epochs", type=int, required=True, metavar="N")
    extend.add_argument(
        "--shared",
        action="store_true",
        help="extend a shared blob from its funds at the next epoch change (anyone may ask)",
    )
    client_options(extend)
    extend.set_defaults(handler=_command_extend)

    delete = commands.add_parser("delete", help="delete a deletable blob stored with this key")
    delete.add_argument("blob_id", metavar="BLOB_ID")
    client_options(delete)
    delete.set_defaults(handler=_command_delete)

    set_attribute = commands.add_parser(
        "set-blob-attribute",
        help="set key/value attributes on a blob stored with this key (docs/attributes.md)",
    )
    set_attribute.add_argument("blob_id", metavar="BLOB_ID")
    set_attribute.add_argument(
        "--attr",
        nargs=2,
        action="append",
        required=True,
        metavar=("KEY", "VALUE"),
        help="one pair (repeat for more); e.g. --attr content-type image/png",
    )
    client_options(set_attribute)
    set_attribute.set_defaults(handler=_command_update_attribute, keys=None)

    get_attribute = commands.add_parser(
        "get-blob-attribute", help="a blob's attributes, verified (docs/attributes.md)"
    )
    get_attribute.add_argument("blob_id", metavar="BLOB_ID")
    client_options(get_attribute)
    get_attribute.set_defaults(handler=_command_get_attribute)

    remove_fields = commands.add_parser(
        "remove-blob-attribute-fields", help="remove some keys from a blob's attributes"
    )
    remove_fields.add_argument("blob_id", metavar="BLOB_ID")
    remove_fields.add_argument("--keys", nargs="+", required=True, metavar="KEY")
    client_options(remove_fields)
    remove_fields.set_defaults(handler=_command_update_attribute, attr=None)

    remove_attribute = commands.add_parser(
        "remove-blob-attribute", help="remove all of a blob's attributes"
    )
    remove_attribute.add_argument("blob_id", metavar="BLOB_ID")
    client_options(remove_attribute)
    remove_attribute.set_defaults(handler=_command_update_attribute, attr=None, keys=None)

    price = commands.add_parser(
        "price", help="storage prices in force, and what storing FILE costs (offline)"
    )
    price.add_argument("file", nargs="?", metavar="FILE")
    price.add_argument("--epochs", type=int, default=1, metavar="N")
    price.add_argument("--genesis", metavar="FILE", help="network genesis (or WALRUS_GENESIS)")
    price.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_log_level(price, "warning")
    price.set_defaults(handler=_command_price)

    info = commands.add_parser("info", help="network id, epoch, committee, limits and prices")
    client_options(info)
    info.add_argument(
        "--offline",
        action="store_true",
        help="show the genesis committee without asking any peer for the epoch chain",
    )
    info.set_defaults(handler=_command_info)

    health = commands.add_parser(
        "health", help="each committee member: reachable, epoch, shards in place, version"
    )
    health.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="per member (default 5)"
    )
    client_options(health)
    health.set_defaults(handler=_command_health)

    challenges = commands.add_parser(
        "challenges", help="which members proved in an epoch that they still hold their data"
    )
    challenges.add_argument(
        "--epoch", type=epoch_number, metavar="E", help="the epoch (default: the current one)"
    )
    client_options(challenges)
    challenges.set_defaults(handler=_command_challenges)
