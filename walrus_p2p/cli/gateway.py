"""Server commands: ``serve`` (the HTTP gateway) and ``devnet`` (a whole local network)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from walrus_p2p.cli._common import (
    EXIT_OK,
    UsageError,
    add_log_level,
    client_options,
    configure_logging,
    genesis_path,
    key_directory,
    shard_count,
    wallet_path,
)

if TYPE_CHECKING:
    from walrus_p2p.api import GatewayLimits, GatewayPolicy

_FILES_BESIDES_HTTP = 512
"""File descriptors the light peer may need besides HTTP connections (peers, logs, keys)."""


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


# flag destination -> GatewayLimits field, for the limits `serve` takes from its flags
_SERVE_LIMIT_FLAGS = {
    "max_body": "max_body",
    "max_concurrent_writes": "max_concurrent_writes",
    "max_concurrent_reads": "max_concurrent_reads",
    "max_writes_per_address": "max_concurrent_writes_per_address",
    "max_concurrent_uploads": "max_concurrent_uploads",
    "max_reads_per_address": "max_concurrent_reads_per_address",
    "max_bytes_in_flight": "max_bytes_in_flight",
    "max_connections": "max_connections",
    "max_header_bytes": "max_header_bytes",
    "header_timeout": "header_timeout_seconds",
    "send_timeout": "send_timeout_seconds",
    "body_timeout": "body_timeout_seconds",
    "min_body_rate": "min_body_rate",
}


def serve_limits(arguments: argparse.Namespace) -> GatewayLimits:
    """The gateway's limits from ``serve``'s flags; a flag not given keeps the default.

    A bad value is a usage error naming the flag (docs/http-api.md, "Limits", lists them).
    """
    from walrus_p2p.api import GatewayLimits
    from walrus_p2p.errors import ConfigError

    given = {
        field: getattr(arguments, flag)
        for flag, field in _SERVE_LIMIT_FLAGS.items()
        if getattr(arguments, flag) is not None
    }
    try:
        return GatewayLimits(**given)
    except ConfigError as error:
        flags = {field: flag for flag, field in _SERVE_LIMIT_FLAGS.items()}
        message = error.message
        for field, flag in sorted(flags.items(), key=lambda item: -len(item[0])):
            message = message.replace(field, "--" + flag.replace("_", "-"))
        raise UsageError(message) from error


def serve_policy(arguments: argparse.Namespace) -> GatewayPolicy:
    """The gateway's web policy from ``serve``'s flags (docs/http-api.md, "Web-ready reads")."""
    from walrus_p2p.api import (
        DEFAULT_ATTRIBUTE_HEADERS,
        AuthPolicy,
        GatewayPolicy,
        attribute_headers_from_text,
        cors_origins_from_text,
    )
    from walrus_p2p.errors import ConfigError

    try:
        auth = None
        if arguments.jwt_key_file is not None:
            auth = AuthPolicy.from_file(
                arguments.jwt_algorithm,
                Path(arguments.jwt_key_file),
                max_lifetime_seconds=arguments.jwt_max_lifetime,
            )
        return GatewayPolicy(
            cors_origins=cors_origins_from_text(arguments.cors_origins),
            blocklist=Path(arguments.blocklist) if arguments.blocklist else None,
            max_read_size=arguments.max_read_size,
            auth=auth,
            attribute_headers=(
                DEFAULT_ATTRIBUTE_HEADERS
                if arguments.allowed_headers is None
                else attribute_headers_from_text(arguments.allowed_headers)
            ),
        )
    except ConfigError as error:
        raise UsageError(error.message.replace("max_read_size", "--max-read-size")) from error


def raise_open_file_limit(needed: int) -> None:
    """Raise this process's soft limit on open files towards ``needed`` (up to the hard limit).

    Each HTTP connection is a file descriptor; the common soft default (1024) is below the
    gateway's default connection cap plus what the light peer itself uses.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _command_serve(arguments: argparse.Namespace) -> int:
    import trio

    from walrus_p2p.api import serve_gateway
    from walrus_p2p.client.cache import CacheOptions
    from walrus_p2p.client.service import open_client
    from walrus_p2p.client.wallet import load_wallet
    from walrus_p2p.node.config import ensure_identity, load_genesis

    configure_logging(arguments.log_level)
    limits = serve_limits(arguments)
    policy = serve_policy(arguments)
    genesis = load_genesis(genesis_path(arguments))
    if genesis.economy is not None:
        # The gateway pays for the stores it makes from its own wallet, which owns the blobs
        # (docs/http-api.md, "Payment"); one gateway process per wallet.
        owner = load_wallet(wallet_path(arguments))
    else:
        owner, _ = ensure_identity(key_directory(arguments))
    raise_open_file_limit(limits.max_connections + _FILES_BESIDES_HTTP)

    async def main_task() -> None:
        async with (
            open_client(genesis, owner, cache=CacheOptions()) as client,
            trio.open_nursery() as nursery,
        ):
            urls = await nursery.start(
                functools.partial(serve_gateway, client, arguments.bind, limits, policy=policy)
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
        economy=arguments.economy,
        agent=not arguments.no_agent and not arguments.exit_after_demo,
    )
    if not 1 <= options.peers <= options.shards:
        raise UsageError("--peers must be between 1 and --shards")
    trio.run(
        functools.partial(
            run_devnet, options, demo_files=demo_files, exit_after_demo=arguments.exit_after_demo
        )
    )
    return EXIT_OK


def _limit_options(command: argparse.ArgumentParser) -> None:
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


def _serve_limit_options(serve: argparse.ArgumentParser) -> None:
    """What one client address, and strangers together, may hold (docs/http-api.md, "Limits")."""
    serve.add_argument(
        "--max-writes-per-address",
        type=int,
        metavar="N",
        help="uploads (body and store) in flight from one client address, more get 429 "
        "(default 2); all local clients, and all clients behind one reverse proxy, share one "
        "address",
    )
    serve.add_argument(
        "--max-concurrent-uploads",
        type=int,
        metavar="N",
        help="request bodies being received at once, more get 429 (default 256); a store "
        "takes one of --max-concurrent-writes only once its body is complete",
    )
    serve.add_argument(
        "--max-reads-per-address",
        type=int,
        metavar="N",
        help="reads in flight from one client address, more get 429 (default 8)",
    )
    serve.add_argument(
        "--max-bytes-in-flight",
        type=int,
        metavar="BYTES",
        help="blob bytes held by requests in flight, more get 429 (default 1 GiB; at least "
        "--max-body)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="open connections; further ones wait to be accepted (default 1024)",
    )
    serve.add_argument(
        "--max-header-bytes",
        type=int,
        metavar="BYTES",
        help="request line and headers, larger get 431 (default 16384)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        metavar="SECONDS",
        help="time for a request's headers to arrive, and for an idle connection to stay "
        "open (default 10)",
    )
    serve.add_argument(
        "--send-timeout",
        type=float,
        metavar="SECONDS",
        help="time a client may take to accept each 64 KiB of a response (default 30)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        metavar="SECONDS",
        help="time for a whole request body to arrive, else 408 (default 120)",
    )
    serve.add_argument(
        "--min-body-rate",
        type=int,
        metavar="BYTES",
        help="bytes per second a request body must average after its first 10 s, else 408 "
        "(default 8192)",
    )


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the HTTP gateway (publisher + aggregator)")
    serve.add_argument("--bind", default="127.0.0.1:31415", metavar="HOST:PORT")
    serve.add_argument(
        "--max-body",
        type=int,
        default=64 * 2**20,
        metavar="BYTES",
        help="largest blob accepted, larger ones get 413 (default 64 MiB)",
    )
    _limit_options(serve)
    _serve_limit_options(serve)
    serve.add_argument(
        "--cors-origins",
        default="*",
        metavar="ORIGINS",
        help="origins whose web pages may call the gateway: '*' (default), 'none', or "
        "scheme://host[:port] origins separated by commas",
    )
    serve.add_argument(
        "--allowed-headers",
        metavar="NAMES",
        help="blob attributes returned as response headers of reads (docs/attributes.md), "
        "separated by commas, or 'none' (default: content-type, content-disposition, "
        "content-encoding, content-language, link)",
    )
    serve.add_argument(
        "--blocklist",
        metavar="FILE",
        help="blob ids this gateway refuses to serve (451), one per line; read again when "
        "the file changes",
    )
    serve.add_argument(
        "--jwt-key-file",
        metavar="FILE",
        help="stores need a bearer JWT verified with this key: the HS256 secret (at least 32 "
        "bytes) or an Ed25519 public key in PEM for EdDSA (docs/http-api.md)",
    )
    serve.add_argument("--jwt-algorithm", choices=("HS256", "EdDSA"), default="HS256")
    serve.add_argument(
        "--jwt-max-lifetime",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="tokens must expire within this many seconds (default 3600)",
    )
    serve.add_argument(
        "--max-read-size",
        type=int,
        metavar="BYTES",
        help="blobs larger than this are not served (403); default: no limit but the byte budget",
    )
    client_options(serve)
    serve.set_defaults(handler=_command_serve)

    devnet = commands.add_parser(
        "devnet", help="run a whole local network: N peer processes and the HTTP gateway"
    )
    devnet.add_argument("--peers", type=int, default=20)
    devnet.add_argument("--shards", type=shard_count, default=100)
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
    devnet.add_argument(
        "--no-agent",
        action="store_true",
        help="do not start `walrus-peer agent` for the devnet (client commands then start "
        "their own light peer each time)",
    )
    devnet.add_argument(
        "--economy",
        action="store_true",
        help="a WAL economy: the genesis funds DIR/wallet.key and the gateway, stores pay "
        "(docs/economics.md)",
    )
    _limit_options(devnet)
    add_log_level(devnet, "warning")
    devnet.set_defaults(handler=_command_devnet)
