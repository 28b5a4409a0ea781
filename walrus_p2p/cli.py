"""The `walrus-peer` console script: argument parsing -> config -> work.

Every command prints one-line errors (``error: ...``) instead of tracebacks and returns an exit code
a script can rely on:

====  ==========================================================
0     success (``EXIT_OK``)
1     the operation failed for another reason (``EXIT_FAILED``)
2     bad usage or bad input: arguments, files, config (``EXIT_USAGE``)
3     the blob (or another named object) does not exist (``EXIT_NOT_FOUND``)
4     not enough peers answered for a quorum (``EXIT_NOT_ENOUGH_PEERS``)
5     the blob is invalid: inconsistently encoded (``EXIT_INVALID_BLOB``)
====  ==========================================================

:func:`_exit_code_of` maps an error to its code.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import mmap
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from walrus_p2p import __version__
from walrus_p2p.errors import ConfigError, WalrusError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NOT_ENOUGH_PEERS = 4
EXIT_INVALID_BLOB = 5
"""The exit codes of the table above."""

LOG_LEVELS = ("debug", "info", "warning", "error")


def _add_log_level(command: argparse.ArgumentParser, default: str) -> None:
    """``--log-level``, the one definition every command shares (its default differs: a
    storage peer logs at info, the client commands and the devnet at warning)."""
    command.add_argument("--log-level", default=default, choices=LOG_LEVELS)


DEFAULT_KEY_DIR = "~/.walrus-p2p/client"


class UsageError(WalrusError):
    """Bad command-line input; exits with code 2."""

    reason = "BAD_REQUEST"


def _read_file_bytes(path: str) -> tuple[bytes | mmap.mmap, int]:
    """Map a file into memory read-only (no copy into the Python heap); empty files give b""."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                return b"", 0
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), size
    except FileNotFoundError as error:
        raise UsageError(f"{path}: no such file") from error
    except IsADirectoryError as error:
        raise UsageError(f"{path}: is a directory") from error
    except PermissionError as error:
        raise UsageError(f"{path}: permission denied") from error
    except OSError as error:
        raise UsageError(f"{path}: cannot read ({error.strerror})") from error


def _close_mapping(data: bytes | mmap.mmap) -> None:
    """Unmap a file from :func:`_read_file_bytes`, if it can be unmapped now.

    After a failure, the traceback still holds frames whose views point into the mapping, and
    ``mmap.close`` then raises ``BufferError``, which would replace the real error with a
    traceback. The mapping is then released with its last reference instead.
    """
    if isinstance(data, mmap.mmap):
        with contextlib.suppress(BufferError):
            data.close()


def _command_blob_id(arguments: argparse.Namespace) -> int:
    from walrus_p2p.core.encoding import EncodingConfig
    from walrus_p2p.core.metadata import blob_id_of
    from walrus_p2p.types import blob_id_to_text

    config = EncodingConfig.for_shards(arguments.shards)
    data, size = _read_file_bytes(arguments.file)
    try:
        blob_id = blob_id_of(memoryview(data), config)
    finally:
        _close_mapping(data)
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


class _KeyValueFormatter(logging.Formatter):
    """One line per event: time, level, logger, then the message's own key=value fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        line = (
            f"{stamp} level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        )
        if record.exc_info and record.levelno >= logging.ERROR:
            line += " " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("walrus_p2p").setLevel(level.upper())
    if level != "debug":
        # libp2p's own warnings (failed DHT streams, dial retries) are routine in a network that
        # is starting or losing peers; they stay available with --log-level debug.
        logging.getLogger("walrus_p2p.net.libp2p").setLevel(logging.ERROR)


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


# -- client (light peer) commands ------------------------------------------------------------


def _genesis_path(arguments: argparse.Namespace) -> str:
    path: str | None = arguments.genesis or os.environ.get("WALRUS_GENESIS")
    if not path:
        raise UsageError("no network given: pass --genesis FILE or set WALRUS_GENESIS")
    return path


def _key_dir(arguments: argparse.Namespace) -> Path:
    text = arguments.key_dir or os.environ.get("WALRUS_KEY_DIR") or DEFAULT_KEY_DIR
    return Path(os.path.expanduser(text))


def _print_json(value: object) -> None:
    print(json.dumps(value, sort_keys=True))


def _run_client(arguments: argparse.Namespace, work: Callable[[Any], Awaitable[int]]) -> int:
    """Load genesis and owner key, open a light peer, run ``work(client)`` under trio."""
    import trio

    from walrus_p2p.client.service import open_client
    from walrus_p2p.node.config import ensure_identity, load_genesis

    configure_logging(arguments.log_level)
    genesis = load_genesis(_genesis_path(arguments))
    owner, _ = ensure_identity(_key_dir(arguments))

    async def main_task() -> int:
        async with open_client(genesis, owner) as client:
            return await work(client)

    result: int = trio.run(main_task)
    return result


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


def _record_stored(key_dir: Path, outcome_json: dict[str, Any]) -> None:
    """Remember what this key stored, for `walrus-peer list` (the network has no owner index)."""
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(key_dir / "stored-blobs.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(outcome_json, sort_keys=True) + "\n")


def _command_store(arguments: argparse.Namespace) -> int:
    from walrus_p2p.api import store_outcome_json
    from walrus_p2p.core.encoding import EncodingConfig

    files = list(arguments.files)
    for path in files:
        _read_file_bytes(path)[0]  # fail fast on a missing file, before joining the network
    show_progress = not arguments.json and sys.stderr.isatty()

    async def work(client: Any) -> int:
        results = []
        for path in files:
            data, size = _read_file_bytes(path)
            config = EncodingConfig.for_shards(client.genesis.n_shards)
            bar = _progress_bar(config.encoded_length(size), os.path.basename(path), show_progress)
            try:
                outcome = await client.store(
                    memoryview(data),
                    epochs=arguments.epochs,
                    permanent=arguments.permanent,
                    progress=bar.update,
                )
            finally:
                bar.close()
                _close_mapping(data)
            outcome_json = store_outcome_json(outcome)
            entry = {"path": path, **outcome_json}
            results.append(entry)
            _record_stored(_key_dir(arguments), entry)
            if not arguments.json:
                if "newlyCreated" in outcome_json:
                    blob = outcome_json["newlyCreated"]["blobObject"]
                    print(
                        f"stored {path}: blob id {blob['blobId']} size {blob['size']} "
                        f"until epoch {blob['storage']['endEpoch']}"
                    )
                else:
                    known = outcome_json["alreadyCertified"]
                    print(
                        f"already certified {path}: blob id {known['blobId']} "
                        f"until epoch {known['endEpoch']}"
                    )
        if arguments.json:
            _print_json(results)
        return EXIT_OK

    return _run_client(arguments, work)


def _command_read(arguments: argparse.Namespace) -> int:
    from walrus_p2p.types import blob_id_from_text

    blob_id = blob_id_from_text(arguments.blob_id)

    async def work(client: Any) -> int:
        data: bytes = await client.read(blob_id, strict=arguments.strict)
        if arguments.output == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            _write_atomically(arguments.output, data)
        if arguments.json:
            _print_json({"blobId": arguments.blob_id, "size": len(data), "path": arguments.output})
        elif arguments.output != "-":
            print(f"read {len(data)} bytes into {arguments.output}", file=sys.stderr)
        return EXIT_OK

    return _run_client(arguments, work)


def _write_atomically(path: str, data: bytes) -> None:
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


def _status_json(status: Any) -> dict[str, Any]:
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

    async def work(client: Any) -> int:
        status = await client.blob_status(blob_id)
        summary = _status_json(status)
        if arguments.json:
            _print_json(summary)
        else:
            print(" ".join(f"{key}={value}" for key, value in summary.items()))
        return EXIT_OK

    return _run_client(arguments, work)


def _command_list(arguments: argparse.Namespace) -> int:
    from walrus_p2p.errors import NotFoundError
    from walrus_p2p.types import blob_id_from_text

    index = _key_dir(arguments) / "stored-blobs.jsonl"
    seen: dict[str, str] = {}
    if index.exists():
        for line in index.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                outcome = entry.get("newlyCreated", {}).get("blobObject") or entry.get(
                    "alreadyCertified", {}
                )
                seen.setdefault(str(outcome["blobId"]), str(entry.get("path", "")))
            except (ValueError, KeyError, AttributeError):
                continue

    async def work(client: Any) -> int:
        rows = []
        for text, path in seen.items():
            try:
                status = _status_json(await client.blob_status(blob_id_from_text(text)))
            except NotFoundError:
                status = {"blobId": text, "state": "unknown"}
            status["path"] = path
            rows.append(status)
        if arguments.json:
            _print_json(rows)
        else:
            for row in rows:
                print(
                    f"{row['blobId']} {row['state']:<10} end_epoch={row.get('endEpoch')} "
                    f"{row['path']}"
                )
        return EXIT_OK

    return _run_client(arguments, work)


def _command_extend(arguments: argparse.Namespace) -> int:
    from walrus_p2p.types import blob_id_from_text

    blob_id = blob_id_from_text(arguments.blob_id)

    async def work(client: Any) -> int:
        end = await client.extend(blob_id, epochs=arguments.epochs)
        if arguments.json:
            _print_json({"blobId": arguments.blob_id, "endEpoch": end})
        else:
            print(f"extended {arguments.blob_id} until epoch {end}")
        return EXIT_OK

    return _run_client(arguments, work)


def _command_delete(arguments: argparse.Namespace) -> int:
    from walrus_p2p.types import blob_id_from_text

    blob_id = blob_id_from_text(arguments.blob_id)

    async def work(client: Any) -> int:
        await client.delete(blob_id)
        if arguments.json:
            _print_json({"blobId": arguments.blob_id, "deleted": True})
        else:
            print(f"deleted {arguments.blob_id}")
        return EXIT_OK

    return _run_client(arguments, work)


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
    genesis = load_genesis(_genesis_path(arguments))
    committee = genesis.committee
    start_time = genesis.genesis_time
    arriving: list[int] = []
    verified = False
    problem: str | None = "offline" if arguments.offline else None
    if not arguments.offline:
        import trio

        from walrus_p2p.client.committee import refresh_committee
        from walrus_p2p.client.network import open_light_peer
        from walrus_p2p.core.migration import moved_shards

        async def fetch() -> tuple[Any, int, str | None, list[int]]:
            async with open_light_peer(genesis, verify_chain=False) as light:
                try:
                    await refresh_committee(light)
                except WalrusError as error:
                    return light.committee, 0, str(error), []
                start = light.chain[-1].value.start_time if light.chain else genesis.genesis_time
                previous = light.committee_of(light.epoch - 1)
                moved = [] if previous is None else sorted(moved_shards(previous, light.committee))
                await light.refresh_in_place(min_interval=0.0)
                in_place = light.in_place.get(light.epoch, set())
                return light.committee, start, None, [s for s in moved if s not in in_place]

        committee, start_time, problem, arriving = trio.run(fetch)
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
    }
    if problem is not None:
        summary["unverifiedReason"] = problem
    if arguments.json:
        _print_json(summary)
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
    for entry in summary["committee"]:
        shards = ",".join(str(shard) for shard in entry["shards"]) or "-"
        pending = ",".join(str(shard) for shard in entry["shardsArriving"])
        arriving_text = f" arriving={pending}" if pending else ""
        print(
            f"  {entry['peerId']} weight={entry['weight']} shards={shards}{arriving_text} "
            f"{' '.join(entry['addresses'])}"
        )
    return EXIT_OK


def _gateway_limits(arguments: argparse.Namespace) -> tuple[int, int]:
    """``--max-concurrent-writes`` and ``--max-concurrent-reads``, defaulting to the gateway's."""
    from walrus_p2p.api import DEFAULT_MAX_CONCURRENT_READS, DEFAULT_MAX_CONCURRENT_WRITES

    limits = []
    for name, default in (
        ("max_concurrent_writes", DEFAULT_MAX_CONCURRENT_WRITES),
        ("max_concurrent_reads", DEFAULT_MAX_CONCURRENT_READS),
    ):
        value: int | None = getattr(arguments, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        limits.append(default if value is None else value)
    return limits[0], limits[1]


def _command_serve(arguments: argparse.Namespace) -> int:
    import trio

    from walrus_p2p.api import serve_gateway
    from walrus_p2p.client.service import open_client
    from walrus_p2p.node.config import ensure_identity, load_genesis

    configure_logging(arguments.log_level)
    genesis = load_genesis(_genesis_path(arguments))
    owner, _ = ensure_identity(_key_dir(arguments))

    writes, reads = _gateway_limits(arguments)

    async def main_task() -> None:
        async with open_client(genesis, owner) as client, trio.open_nursery() as nursery:
            urls = await nursery.start(
                functools.partial(
                    serve_gateway,
                    client,
                    arguments.bind,
                    max_body=arguments.max_body,
                    max_concurrent_writes=writes,
                    max_concurrent_reads=reads,
                )
            )
            print(f"gateway listening on {' '.join(urls)}", file=sys.stderr, flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main_task)
    return EXIT_OK


def _command_devnet(arguments: argparse.Namespace) -> int:
    import trio

    from walrus_p2p.devnet import DevnetOptions, run_devnet

    configure_logging(arguments.log_level)
    demo_files = [Path(path) for path in arguments.demo]
    for path in demo_files:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    writes, reads = _gateway_limits(arguments)
    options = DevnetOptions(
        directory=Path(arguments.dir).resolve(),
        peers=arguments.peers,
        shards=arguments.shards,
        epoch_duration=arguments.epoch_duration,
        http=arguments.http,
        max_concurrent_writes=writes,
        max_concurrent_reads=reads,
    )
    if not 1 <= options.peers <= options.shards:
        raise UsageError("--peers must be between 1 and --shards")
    trio.run(
        functools.partial(
            run_devnet, options, demo_files=demo_files, exit_after_demo=arguments.exit_after_demo
        )
    )
    return EXIT_OK


def _shard_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from error
    if not 4 <= value <= 256:
        raise argparse.ArgumentTypeError(f"shards must be between 4 and 256, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="walrus-peer",
        description="walrus-p2p: a decentralized, verifiable blob store on libp2p.",
    )
    parser.add_argument("--version", action="version", version=f"walrus-peer {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    blob_id = commands.add_parser(
        "blob-id", help="print the blob id a network of N shards would give FILE (offline)"
    )
    blob_id.add_argument("file", metavar="FILE")
    blob_id.add_argument("--shards", type=_shard_count, default=100, metavar="N")
    blob_id.add_argument("--json", action="store_true", help="print JSON for scripts")
    blob_id.set_defaults(handler=_command_blob_id)

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
    create.add_argument("--shards", type=_shard_count, required=True, metavar="N")
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
    _add_log_level(run, "info")
    run.set_defaults(handler=_command_run)

    def client_options(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--genesis", metavar="FILE", help="network genesis (or WALRUS_GENESIS)"
        )
        command.add_argument(
            "--key-dir",
            metavar="DIR",
            help=f"owner key directory (or WALRUS_KEY_DIR; default {DEFAULT_KEY_DIR})",
        )
        command.add_argument("--json", action="store_true", help="print JSON for scripts")
        _add_log_level(command, "warning")

    def gateway_limits(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--max-concurrent-writes",
            type=int,
            metavar="N",
            help="stores in flight at once, more are refused with 429 (default 8)",
        )
        command.add_argument(
            "--max-concurrent-reads",
            type=int,
            metavar="N",
            help="reads in flight at once, more are refused with 429 (default 32)",
        )

    store = commands.add_parser("store", help="store files as blobs")
    store.add_argument("files", nargs="+", metavar="FILE")
    store.add_argument("--epochs", type=int, required=True, metavar="N")
    store.add_argument("--permanent", action="store_true", help="cannot be deleted before its end")
    client_options(store)
    store.set_defaults(handler=_command_store)

    read = commands.add_parser("read", help="read a blob into a file")
    read.add_argument("blob_id", metavar="BLOB_ID")
    read.add_argument("-o", "--output", required=True, metavar="FILE", help="'-' for stdout")
    read.add_argument("--strict", action="store_true", help="re-encode and check the blob id")
    client_options(read)
    read.set_defaults(handler=_command_read)

    status = commands.add_parser("status", help="what the network knows of a blob")
    status.add_argument("blob_id", metavar="BLOB_ID")
    client_options(status)
    status.set_defaults(handler=_command_status)

    listing = commands.add_parser("list", help="blobs stored with this key, and their status")
    client_options(listing)
    listing.set_defaults(handler=_command_list)

    extend = commands.add_parser("extend", help="keep a blob stored for more epochs")
    extend.add_argument("blob_id", metavar="BLOB_ID")
    extend.add_argument("--epochs", type=int, required=True, metavar="N")
    client_options(extend)
    extend.set_defaults(handler=_command_extend)

    delete = commands.add_parser("delete", help="delete a deletable blob stored with this key")
    delete.add_argument("blob_id", metavar="BLOB_ID")
    client_options(delete)
    delete.set_defaults(handler=_command_delete)

    info = commands.add_parser("info", help="network id, epoch, committee and limits")
    client_options(info)
    info.add_argument(
        "--offline",
        action="store_true",
        help="show the genesis committee without asking any peer for the epoch chain",
    )
    info.set_defaults(handler=_command_info)

    serve = commands.add_parser("serve", help="run the HTTP gateway (publisher + aggregator)")
    serve.add_argument("--bind", default="127.0.0.1:31415", metavar="HOST:PORT")
    serve.add_argument("--max-body", type=int, default=64 * 2**20, metavar="BYTES")
    gateway_limits(serve)
    client_options(serve)
    serve.set_defaults(handler=_command_serve)

    devnet = commands.add_parser(
        "devnet", help="run a whole local network: N peer processes and the HTTP gateway"
    )
    devnet.add_argument("--peers", type=int, default=20)
    devnet.add_argument("--shards", type=_shard_count, default=100)
    devnet.add_argument("--epoch-duration", type=int, default=3600, metavar="SECONDS")
    devnet.add_argument("--http", default="127.0.0.1:31415", metavar="HOST:PORT")
    devnet.add_argument("--dir", default="devnet", metavar="DIR")
    devnet.add_argument(
        "--demo",
        action="append",
        default=[],
        metavar="FILE",
        help="once ready, store FILE through the network and read it back",
    )
    devnet.add_argument("--exit-after-demo", action="store_true")
    gateway_limits(devnet)
    _add_log_level(devnet, "warning")
    devnet.set_defaults(handler=_command_devnet)
    return parser


def _exit_code_of(error: WalrusError) -> int:
    from walrus_p2p.errors import (
        InconsistentBlobError,
        NotFoundError,
        QuorumError,
        WireError,
    )

    if isinstance(error, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, QuorumError) or error.reason == "NOT_ENOUGH_PEERS":
        return EXIT_NOT_ENOUGH_PEERS
    if isinstance(error, InconsistentBlobError):
        return EXIT_INVALID_BLOB
    if isinstance(error, WireError):
        return EXIT_USAGE
    return EXIT_FAILED


def _sole_walrus_error(group: BaseExceptionGroup[BaseException]) -> WalrusError | None:
    """The one ``WalrusError`` inside a trio exception group (cancellations aside), or None.

    An error raised while a peer starts (its port taken, say) crosses the runner's nursery and
    comes out wrapped; it deserves the same one-line report as any other ``WalrusError``.
    """
    import trio

    pending: list[BaseException] = [group]
    found: list[BaseException] = []
    while pending:
        error = pending.pop()
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        elif not isinstance(error, trio.Cancelled):
            found.append(error)
    if len(found) == 1 and isinstance(found[0], WalrusError):
        return found[0]
    return None


def _report(error: WalrusError) -> int:
    if isinstance(error, UsageError | ConfigError):
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"error: {error} ({error.reason})", file=sys.stderr)
    return _exit_code_of(error)


# Commands whose only positional argument is one blob id.
_BLOB_ID_COMMANDS = frozenset({"read", "status", "extend", "delete"})


def _looks_like_blob_id(token: str) -> bool:
    from walrus_p2p.errors import WireError
    from walrus_p2p.types import blob_id_from_text

    try:
        blob_id_from_text(token)
    except WireError:
        return False
    return True


def _protect_dash_blob_ids(argv: Sequence[str]) -> list[str]:
    """A blob id is URL-safe base64 and one in 64 begins with '-', which argparse takes for an
    option. For the commands whose positional is a blob id, such a token is moved behind a
    ``--`` so that ``walrus-peer read -cwGw... -o out`` works as the user means it. A token that
    is not a well-formed blob id, or an argv that already has ``--``, is left as it is."""
    tokens = list(argv)
    if "--" in tokens:
        return tokens
    command_at = next((i for i, token in enumerate(tokens) if not token.startswith("-")), None)
    if command_at is None or tokens[command_at] not in _BLOB_ID_COMMANDS:
        return tokens
    head, tail = tokens[: command_at + 1], tokens[command_at + 1 :]
    moved = [token for token in tail if token.startswith("-") and _looks_like_blob_id(token)]
    if not moved:
        return tokens
    kept = [token for token in tail if token not in moved]
    return [*head, *kept, "--", *moved]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(_protect_dash_blob_ids(sys.argv[1:] if argv is None else argv))
    handler: Callable[[argparse.Namespace], int] = arguments.handler
    try:
        return handler(arguments)
    except WalrusError as error:
        return _report(error)
    except BaseExceptionGroup as group:
        sole = _sole_walrus_error(group)
        if sole is None:
            raise
        return _report(sole)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
