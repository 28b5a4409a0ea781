"""The ``walrus-peer`` console script: argument parsing -> config -> work.

One module per command group, each with its arguments next to its handlers
(``add_commands``): :mod:`.client` (light-client and offline blob commands), :mod:`.peer`
(a storage peer's ``init``, ``genesis``, ``run``), :mod:`.wallet` (``wallet``: a WAL account),
:mod:`.gateway` (``serve``, ``devnet``);
what they share (exit codes, options, logging, the light client) is in :mod:`._common`. Each
command imports what it runs when it runs, so a command starts without loading the others.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from walrus_p2p import __version__
from walrus_p2p.cli import _common, agent_link
from walrus_p2p.cli import agent as agent_commands
from walrus_p2p.cli import client as client_commands
from walrus_p2p.cli import gateway as gateway_commands
from walrus_p2p.cli import peer as peer_commands
from walrus_p2p.cli import quilt as quilt_commands
from walrus_p2p.cli import shared as shared_commands
from walrus_p2p.cli import staking as staking_commands
from walrus_p2p.cli import storage as storage_commands
from walrus_p2p.cli import wallet as wallet_commands
from walrus_p2p.cli._common import (
    EXIT_FAILED,
    EXIT_INVALID_BLOB,
    EXIT_NOT_ENOUGH_PEERS,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
)
from walrus_p2p.errors import ConfigError, WalrusError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID_BLOB",
    "EXIT_NOT_ENOUGH_PEERS",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "exit_code_of",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="walrus-peer",
        description="walrus-p2p: a decentralized, verifiable blob store on libp2p.",
    )
    parser.add_argument("--version", action="version", version=f"walrus-peer {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    # Help lists the commands in this order: offline tools and clients, peers, servers.
    client_commands.add_commands(commands)
    quilt_commands.add_commands(commands)
    wallet_commands.add_commands(commands)
    staking_commands.add_commands(commands)
    shared_commands.add_commands(commands)
    storage_commands.add_commands(commands)
    peer_commands.add_commands(commands)
    gateway_commands.add_commands(commands)
    agent_commands.add_commands(commands, main)
    return parser


def exit_code_of(error: WalrusError) -> int:
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
    return exit_code_of(error)


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
    tokens = _protect_dash_blob_ids(sys.argv[1:] if argv is None else argv)
    arguments = parser.parse_args(tokens)
    handler: Callable[[argparse.Namespace], int] = arguments.handler
    if agent_link.wanted(arguments.command, tokens) and not _common.inside_agent():
        # A running agent of the network answers at once (cli/agent.py); else run it here.
        genesis = getattr(arguments, "genesis", None) or os.environ.get("WALRUS_GENESIS")
        if genesis:
            code = agent_link.run_via_agent(tokens, genesis)
            if code is not None:
                return code
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
