"""Storage peer commands: ``init``, ``genesis create``, ``run``, ``vote``."""

from __future__ import annotations

import argparse
import json
import time

from walrus_p2p.cli._common import (
    EXIT_OK,
    UsageError,
    add_log_level,
    configure_logging,
    shard_count,
)


def _command_init(arguments: argparse.Namespace) -> int:
    from walrus_p2p.node.config import init_peer

    result = init_peer(
        arguments.data_dir,
        arguments.genesis,
        arguments.listen or ["/ip4/127.0.0.1/tcp/0"],
        capacity_bytes=arguments.capacity,
        metrics_address=arguments.metrics,
        weight=arguments.weight,
        force=arguments.force,
        check_genesis=not arguments.no_genesis_check,
    )
    summary = {
        "dataDir": str(result.data_dir),
        "peerId": result.identity.peer_id,
        "publicKey": result.identity.public_key.hex(),
        "createdIdentity": result.created_identity,
    }
    if arguments.json:
        print(json.dumps(summary))
    else:
        state = "created" if result.created_identity else "kept existing"
        print(f"peer {result.identity.peer_id} ({state} identity) in {result.data_dir}")
    return EXIT_OK


def _parse_member_argument(text: str) -> tuple[str, int]:
    directory, _, weight_text = text.partition(":") if ":" in text else (text, "", "1")
    try:
        weight = int(weight_text)
    except ValueError as error:
        raise UsageError(f"--member {text!r}: weight must be an integer") from error
    return directory, weight


def _command_genesis_create(arguments: argparse.Namespace) -> int:
    from walrus_p2p.core.committee import Member
    from walrus_p2p.core.genesis import create_genesis_toml, parse_public_key
    from walrus_p2p.node.config import genesis_member, write_genesis

    members: list[Member] = []
    for text in arguments.member:
        directory, weight = _parse_member_argument(text)
        members.append(genesis_member(directory, weight))
    for text in arguments.remote_member:
        parts = text.split(",")
        if len(parts) < 3:
            raise UsageError(f"--remote-member {text!r}: expected PUBLIC_KEY_HEX,WEIGHT,MULTIADDR")
        try:
            weight = int(parts[1])
        except ValueError as error:
            raise UsageError(f"--remote-member {text!r}: weight must be an integer") from error
        members.append(Member.from_public_key(parse_public_key(parts[0]), weight, parts[2:]))
    if not members:
        raise UsageError("give at least one --member or --remote-member")
    text = create_genesis_toml(
        network=arguments.network,
        n_shards=arguments.shards,
        members=members,
        genesis_time=int(arguments.genesis_time if arguments.genesis_time else time.time()),
        epoch_duration_seconds=arguments.epoch_duration,
        max_shards_per_peer=arguments.max_shards_per_peer,
        bootstrap=arguments.bootstrap,
    )
    if arguments.output == "-":
        print(text, end="")
        return EXIT_OK
    genesis = write_genesis(arguments.output, text, force=arguments.force)
    if arguments.json:
        print(json.dumps({"path": arguments.output, "networkId": genesis.network_id_text}))
    else:
        print(f"wrote {arguments.output} network={genesis.network_id_text}")
    return EXIT_OK


def _command_run(arguments: argparse.Namespace) -> int:
    import trio

    from walrus_p2p.node.runner import run_peer

    configure_logging(arguments.log_level)
    trio.run(run_peer, arguments.data_dir, arguments.metrics)
    return EXIT_OK


def _command_vote(arguments: argparse.Namespace) -> int:
    """Show or change the peer's votes (peer.toml ``[vote]``; docs/economics.md, "Votes")."""
    from walrus_p2p.core.economy import VoteSettings
    from walrus_p2p.node.config import load_config, write_vote

    config = load_config(arguments.data_dir)
    current = config.vote
    changes = {
        "storage_price": arguments.storage_price,
        "write_price": arguments.write_price,
        "capacity": arguments.capacity,
        "commission_bps": arguments.commission_bps,
    }
    if any(value is not None for value in changes.values()):
        base = {
            "storage_price": None if current is None else current.storage_price,
            "write_price": None if current is None else current.write_price,
            "capacity": config.capacity_bytes if current is None else current.capacity,
            "commission_bps": 0 if current is None else current.commission_bps,
        }
        base.update({key: value for key, value in changes.items() if value is not None})
        missing = [key for key, value in base.items() if value is None]
        if missing:
            flags = ", ".join("--" + key.replace("_", "-") for key in missing)
            raise UsageError(f"the first vote needs {flags}")
        try:
            current = VoteSettings(**base)  # type: ignore[arg-type]
        except ValueError as error:
            raise UsageError(str(error)) from error
        write_vote(arguments.data_dir, current)
    summary = {
        "dataDir": str(arguments.data_dir),
        "vote": None
        if current is None
        else {
            "storagePrice": current.storage_price,
            "writePrice": current.write_price,
            "capacity": current.capacity,
            "commissionBps": current.commission_bps,
        },
    }
    if arguments.json:
        print(json.dumps(summary))
    elif current is None:
        print("this peer does not vote (no [vote] table in peer.toml)")
    else:
        print(
            f"vote: storage {current.storage_price} FROST/MiB/epoch, write "
            f"{current.write_price} FROST/MiB, capacity {current.capacity} B, commission "
            f"{current.commission_bps} bps (a running peer casts it at the next epoch change)"
        )
    return EXIT_OK


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from error
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = commands.add_parser("init", help="create a storage peer's identity and config")
    init.add_argument("--data-dir", required=True, metavar="DIR")
    init.add_argument("--genesis", required=True, metavar="FILE")
    init.add_argument(
        "--listen", action="append", metavar="MULTIADDR", help="e.g. /ip4/127.0.0.1/tcp/4001"
    )
    init.add_argument("--capacity", type=int, default=100 * 2**30, metavar="BYTES")
    init.add_argument(
        "--weight",
        type=int,
        default=1,
        metavar="N",
        help="weight declared in the candidacy (newcomers are capped at the smallest genesis "
        "weight; genesis members keep theirs)",
    )
    init.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here")
    init.add_argument("--force", action="store_true", help="rewrite the config (keeps the key)")
    init.add_argument(
        "--no-genesis-check", action="store_true", help="the genesis file does not exist yet"
    )
    init.add_argument("--json", action="store_true")
    init.set_defaults(handler=_command_init)

    genesis = commands.add_parser("genesis", help="genesis files")
    genesis_commands = genesis.add_subparsers(dest="genesis_command", metavar="COMMAND")
    genesis_commands.required = True
    create = genesis_commands.add_parser("create", help="write a genesis file for a committee")
    create.add_argument("--network", required=True)
    create.add_argument("--shards", type=shard_count, required=True, metavar="N")
    create.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="DATA_DIR[:WEIGHT]",
        help="an initialised local peer",
    )
    create.add_argument(
        "--remote-member",
        action="append",
        default=[],
        metavar="PUBLIC_KEY_HEX,WEIGHT,MULTIADDR",
        help="a peer known by its key and address",
    )
    create.add_argument("--epoch-duration", type=int, default=86400, metavar="SECONDS")
    create.add_argument("--genesis-time", type=int, default=None, metavar="UNIX_SECONDS")
    create.add_argument("--max-shards-per-peer", type=int, default=None)
    create.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="an entry point for the genesis bootstrap list: /.../tcp/<port>/p2p/<peer id>",
    )
    create.add_argument("--output", "-o", default="-", metavar="FILE")
    create.add_argument("--force", action="store_true")
    create.add_argument("--json", action="store_true")
    create.set_defaults(handler=_command_genesis_create)

    run = commands.add_parser("run", help="run a storage peer until SIGINT/SIGTERM")
    run.add_argument("--data-dir", required=True, metavar="DIR")
    run.add_argument("--metrics", metavar="HOST:PORT", help="override the config's metrics address")
    add_log_level(run, "info")
    run.set_defaults(handler=_command_run)

    vote = commands.add_parser(
        "vote", help="show or change a storage peer's price, capacity and commission votes"
    )
    vote.add_argument("--data-dir", required=True, metavar="DIR")
    vote.add_argument("--storage-price", type=_non_negative, metavar="FROST")
    vote.add_argument("--write-price", type=_non_negative, metavar="FROST")
    vote.add_argument("--capacity", type=_non_negative, metavar="BYTES")
    vote.add_argument("--commission-bps", type=_non_negative, metavar="BPS")
    vote.add_argument("--json", action="store_true", help="print JSON for scripts")
    vote.set_defaults(handler=_command_vote)
