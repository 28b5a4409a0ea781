"""What every ``walrus-peer`` command shares: exit codes, options, logging, the light client.

Every command prints one-line errors (``error: ...``) instead of tracebacks and returns an exit code
a script can rely on; they are defined here:

====  ==========================================================
0     success (``EXIT_OK``)
1     the operation failed for another reason (``EXIT_FAILED``)
2     bad usage or bad input: arguments, files, config (``EXIT_USAGE``)
3     the blob (or another named object) does not exist (``EXIT_NOT_FOUND``)
4     not enough peers answered for a quorum (``EXIT_NOT_ENOUGH_PEERS``)
5     the blob is invalid: inconsistently encoded (``EXIT_INVALID_BLOB``)
====  ==========================================================

:func:`walrus_p2p.cli.exit_code_of` maps an error to its code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import mmap
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from walrus_p2p.errors import WalrusError

if TYPE_CHECKING:
    from walrus_p2p.client.network import LightPeer
    from walrus_p2p.client.service import WalrusClient
    from walrus_p2p.core.genesis import Genesis
    from walrus_p2p.core.identity import Identity

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NOT_ENOUGH_PEERS = 4
EXIT_INVALID_BLOB = 5
"""The exit codes of the table above."""

LOG_LEVELS = ("debug", "info", "warning", "error")


def add_log_level(command: argparse.ArgumentParser, default: str) -> None:
    """``--log-level``, the one definition every command shares (its default differs: a
    storage peer logs at info, the client commands and the devnet at warning)."""
    command.add_argument("--log-level", default=default, choices=LOG_LEVELS)
    command.add_argument(
        "-v",
        "--verbose",
        action="store_const",
        const="debug",
        dest="log_level",
        help="same as --log-level debug: also the library's routine failures (failed dials, "
        "connections closed at exit)",
    )


DEFAULT_KEY_DIR = "~/.walrus-p2p/client"
DEFAULT_WALLET = "~/.walrus-p2p/wallet.key"


class UsageError(WalrusError):
    """Bad command-line input; exits with code 2."""

    reason = "BAD_REQUEST"


def read_file_bytes(path: str) -> tuple[bytes | mmap.mmap, int]:
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


def close_mapping(data: bytes | mmap.mmap) -> None:
    """Unmap a file from :func:`read_file_bytes`, if it can be unmapped now.

    After a failure, the traceback still holds frames whose views point into the mapping, and
    ``mmap.close`` then raises ``BufferError``, which would replace the real error with a
    traceback. The mapping is then released with its last reference instead.
    """
    if isinstance(data, mmap.mmap):
        with contextlib.suppress(BufferError):
            data.close()


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


# -- client (light peer) commands ------------------------------------------------------------


def genesis_path(arguments: argparse.Namespace) -> str:
    path: str | None = arguments.genesis or os.environ.get("WALRUS_GENESIS")
    if not path:
        raise UsageError("no network given: pass --genesis FILE or set WALRUS_GENESIS")
    return path


def key_directory(arguments: argparse.Namespace) -> Path:
    text = arguments.key_dir or os.environ.get("WALRUS_KEY_DIR") or DEFAULT_KEY_DIR
    return Path(os.path.expanduser(text))


def wallet_path(arguments: argparse.Namespace) -> Path:
    """``--wallet``, else ``WALRUS_WALLET``, else the default wallet key file."""
    text = getattr(arguments, "wallet", None) or os.environ.get("WALRUS_WALLET") or DEFAULT_WALLET
    return Path(os.path.expanduser(text))


def print_json(value: object) -> None:
    print(json.dumps(value, sort_keys=True))


AgentRunner = Callable[[argparse.Namespace, Callable[[Any], Awaitable[Any]], str], Any]
_agent_runner: AgentRunner | None = None
"""Set only inside ``walrus-peer agent`` (cli/agent.py): :func:`run_client` and
:func:`run_light` then run their work on the agent's warm light peer instead of a new one."""


def set_agent_runner(runner: AgentRunner | None) -> None:
    global _agent_runner
    _agent_runner = runner


def inside_agent() -> bool:
    """Whether this command runs inside ``walrus-peer agent`` (so it must not look for one)."""
    return _agent_runner is not None


def run_light(arguments: argparse.Namespace, work: Callable[[LightPeer], Awaitable[T]]) -> T:
    """Run ``work(light)`` on a light peer of the network, without an owner key: a fresh one
    (not verifying the chain itself: ``work`` does what it needs), or the agent's."""
    if _agent_runner is not None:
        result: T = _agent_runner(arguments, work, "light")
        return result
    import trio

    from walrus_p2p.client.network import open_light_peer
    from walrus_p2p.node.config import load_genesis

    configure_logging(arguments.log_level)
    genesis = load_genesis(genesis_path(arguments))

    async def main_task() -> T:
        async with open_light_peer(genesis, verify_chain=False) as light:
            return await work(light)

    return trio.run(main_task)


def run_client(
    arguments: argparse.Namespace,
    work: Callable[[WalrusClient], Awaitable[int]],
    *,
    pays: bool = False,
) -> int:
    """Load genesis and owner key, open a light peer, run ``work(client)`` under trio.

    A command that ``pays`` (store, extend, delete) on a network with an economy owns its blobs
    with the wallet's key (``--wallet``, ``WALRUS_WALLET``): the paying account is the owner
    (docs/economics.md, "Paid storage"). Otherwise the owner key is the key directory's."""
    if _agent_runner is not None:
        code: int = _agent_runner(arguments, work, "pays" if pays else "client")
        return code
    import trio

    from walrus_p2p.client.service import open_client

    configure_logging(arguments.log_level)
    genesis, owner = genesis_and_owner(arguments, pays=pays)

    async def main_task() -> int:
        async with open_client(genesis, owner) as client:
            return await work(client)

    result: int = trio.run(main_task)
    return result


def genesis_and_owner(arguments: argparse.Namespace, *, pays: bool) -> tuple[Genesis, Identity]:
    """The network and the key a client command works with: the wallet's on a network with an
    economy when the command pays, else the key directory's."""
    from walrus_p2p.client.wallet import load_wallet
    from walrus_p2p.node.config import ensure_identity, load_genesis

    genesis = load_genesis(genesis_path(arguments))
    if pays and genesis.economy is not None:
        return genesis, load_wallet(wallet_path(arguments))
    owner, _ = ensure_identity(key_directory(arguments))
    return genesis, owner


def integer(text: str, minimum: int, what: str, maximum: int | None = None) -> int:
    """An integer flag's value in [minimum, maximum]; ``argparse.ArgumentTypeError`` naming
    ``what`` otherwise (argparse turns it into a usage error)."""
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from error
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise argparse.ArgumentTypeError(f"{what} must be {bound}, got {value}")
    return value


def shard_count(text: str) -> int:
    return integer(text, 4, "shards", 256)


def client_options(command: argparse.ArgumentParser) -> None:
    """The options of every command that talks to a network as a light client."""
    command.add_argument("--genesis", metavar="FILE", help="network genesis (or WALRUS_GENESIS)")
    command.add_argument(
        "--key-dir",
        metavar="DIR",
        help=f"owner key directory (or WALRUS_KEY_DIR; default {DEFAULT_KEY_DIR})",
    )
    command.add_argument(
        "--wallet",
        metavar="PATH",
        help="on a network with an economy: the wallet that pays for storage and owns the "
        f"blobs (or WALRUS_WALLET; default {DEFAULT_WALLET})",
    )
    command.add_argument("--json", action="store_true", help="print JSON for scripts")
    command.add_argument(
        "--no-agent",
        action="store_true",
        help="run in this process even if `walrus-peer agent` runs for the network "
        "(or WALRUS_AGENT=off)",
    )
    add_log_level(command, "warning")
