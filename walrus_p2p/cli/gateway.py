"""Server commands: ``serve`` (the HTTP gateway) and ``devnet`` (a whole local network)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from pathlib import Path

from walrus_p2p.cli._common import (
    EXIT_OK,
    UsageError,
    add_log_level,
    client_options,
    configure_logging,
    genesis_path,
    key_directory,
    shard_count,
)


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
    genesis = load_genesis(genesis_path(arguments))
    owner, _ = ensure_identity(key_directory(arguments))

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


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the HTTP gateway (publisher + aggregator)")
    serve.add_argument("--bind", default="127.0.0.1:31415", metavar="HOST:PORT")
    serve.add_argument("--max-body", type=int, default=64 * 2**20, metavar="BYTES")
    _limit_options(serve)
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
    _limit_options(devnet)
    add_log_level(devnet, "warning")
    devnet.set_defaults(handler=_command_devnet)
