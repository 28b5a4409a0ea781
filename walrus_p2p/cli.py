"""The `walrus-peer` console script: argument parsing -> config -> work.

Every command prints one-line errors (``error: ...``) instead of tracebacks and returns an exit code
a script can rely on:

====  ==========================================================
0     success
1     the operation failed (a `WalrusError`, e.g. not enough peers)
2     bad usage or bad input (arguments, files, config)
====  ==========================================================
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
from collections.abc import Callable, Sequence

from walrus_p2p import __version__
from walrus_p2p.errors import ConfigError, WalrusError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


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


def _command_blob_id(arguments: argparse.Namespace) -> int:
    from walrus_p2p.core.encoding import EncodingConfig
    from walrus_p2p.core.metadata import compute_blob_id_from_bytes
    from walrus_p2p.types import blob_id_to_text

    config = EncodingConfig.for_shards(arguments.shards)
    data, size = _read_file_bytes(arguments.file)
    try:
        blob_id = compute_blob_id_from_bytes(data, config)
    finally:
        if isinstance(data, mmap.mmap):
            data.close()
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = arguments.handler
    try:
        return handler(arguments)
    except (UsageError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except WalrusError as error:
        print(f"error: {error} ({error.reason})", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
