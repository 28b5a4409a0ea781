"""Quilt commands (docs/quilts.md): ``store-quilt``, ``read-quilt``, ``list-patches-in-quilt``,
with Walrus's names and options."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from walrus_p2p.cli._common import (
    EXIT_OK,
    UsageError,
    client_options,
    key_directory,
    print_json,
    run_client,
)
from walrus_p2p.cli.lifetime import add_lifetime_options

if TYPE_CHECKING:
    from walrus_p2p.client.quilt import QuiltFile
    from walrus_p2p.client.service import WalrusClient


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise UsageError(f"{path}: cannot read ({error.strerror})") from error


def quilt_files(arguments: argparse.Namespace) -> list[QuiltFile]:
    """The files of ``store-quilt``: ``--paths`` (a file's identifier is its name; a directory
    gives every file under it, named by its path inside the directory with ``/``) or
    ``--blobs`` (JSON objects ``{"path", "identifier"?, "tags"?}``)."""
    from walrus_p2p.client.quilt import QuiltFile

    files: list[QuiltFile] = []
    if arguments.paths:
        for text in arguments.paths:
            path = Path(text)
            if path.is_dir():
                found = sorted(item for item in path.rglob("*") if item.is_file())
                if not found:
                    raise UsageError(f"{path}: no files in this directory")
                for item in found:
                    name = item.relative_to(path).as_posix()
                    files.append(QuiltFile(name, _read(item)))
            else:
                files.append(QuiltFile(path.name, _read(path)))
        return files
    for text in arguments.blobs:
        try:
            entry = json.loads(text)
        except ValueError as error:
            raise UsageError(f"--blobs {text[:60]!r}: not JSON ({error})") from error
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise UsageError(f'--blobs {text[:60]!r}: expected {{"path": ..., ...}}')
        path = Path(entry["path"])
        identifier = entry.get("identifier", path.name)
        tags = entry.get("tags", {})
        files.append(QuiltFile(identifier, _read(path), tags))
    return files


def _command_store_quilt(arguments: argparse.Namespace) -> int:
    from walrus_p2p.api import store_outcome_json
    from walrus_p2p.cli.client import record_stored
    from walrus_p2p.client.quilt import build_quilt, patch_ids_json, store_quilt

    files = quilt_files(arguments)
    build_quilt(files)  # bad identifiers, tags or counts fail before joining the network

    async def work(client: WalrusClient) -> int:
        from walrus_p2p.cli.lifetime import expiry_warning, lifetime_of

        lifetime = lifetime_of(arguments, client.genesis, client.light.epoch)
        stored = await store_quilt(
            client, files, epochs=lifetime.epochs, permanent=arguments.permanent
        )
        result: dict[str, Any] = {
            "blobStoreResult": store_outcome_json(stored.outcome),
            "storedQuiltBlobs": patch_ids_json(stored.quilt_id, stored.patches),
        }
        record_stored(
            key_directory(arguments),
            {"path": f"quilt of {len(files)} files", **result["blobStoreResult"]},
        )
        warning = expiry_warning(
            client.genesis,
            client.light.epoch,
            stored.outcome.end_epoch,
            arguments.expiry_warning_epochs,
        )
        if warning is not None:
            result["warning"] = warning
        if arguments.json:
            print_json(result)
            return EXIT_OK
        from walrus_p2p.types import blob_id_to_text

        print(
            f"stored a quilt of {len(files)} files: quilt id {blob_id_to_text(stored.quilt_id)} "
            f"until epoch {stored.outcome.end_epoch}"
        )
        for patch in result["storedQuiltBlobs"]:
            print(f"  {patch['quiltPatchId']}  {patch['identifier']}")
        if warning is not None:
            print(f"warning: {warning}", file=sys.stderr)
        return EXIT_OK

    return run_client(arguments, work, pays=True)


def safe_output_path(directory: Path, identifier: str) -> Path:
    """Where ``read-quilt`` writes a patch: its identifier as a relative path inside
    ``directory``; one that would leave it (absolute, ``..``) is refused."""
    relative = PurePosixPath(identifier)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise UsageError(f"identifier {identifier!r} is not a relative path; not written")
    return directory.joinpath(*relative.parts)


def _command_read_quilt(arguments: argparse.Namespace) -> int:
    from walrus_p2p.cli.client import write_atomically
    from walrus_p2p.client.quilt import read_index, read_patch
    from walrus_p2p.types import blob_id_from_text

    if arguments.quilt_patch_ids is None and arguments.quilt_id is None:
        raise UsageError("--quilt-id is required with --identifiers or --tag")
    out = Path(arguments.out)
    quilt_id = blob_id_from_text(arguments.quilt_id) if arguments.quilt_id else None

    async def work(client: WalrusClient) -> int:
        patch_ids: list[str] = list(arguments.quilt_patch_ids or [])
        if quilt_id is not None and not patch_ids:
            entries = await read_index(client, quilt_id)
            if arguments.identifiers:
                by_name = {entry.identifier: entry for entry in entries}
                missing = [name for name in arguments.identifiers if name not in by_name]
                if missing:
                    from walrus_p2p.errors import NotFoundError

                    raise NotFoundError(f"no patch named {', '.join(map(repr, missing))}")
                chosen = [by_name[name] for name in arguments.identifiers]
            else:
                key, value = arguments.tag
                chosen = [entry for entry in entries if entry.tags.get(key) == value]
            patch_ids = [entry.patch_id(quilt_id) for entry in chosen]
        written = []
        for patch_id in patch_ids:
            patch = await read_patch(client, patch_id)
            target = safe_output_path(out, patch.identifier)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(str(target), patch.data)
            written.append(
                {
                    "identifier": patch.identifier,
                    "quiltPatchId": patch_id,
                    "tags": dict(patch.tags),
                    "path": str(target),
                    "size": len(patch.data),
                }
            )
        if arguments.json:
            print_json(written)
        else:
            for item in written:
                print(f"{item['path']} ({item['size']} bytes) from {item['quiltPatchId']}")
            if not written:
                print("no patch matched", file=sys.stderr)
        return EXIT_OK

    out.mkdir(parents=True, exist_ok=True)
    return run_client(arguments, work)


def _command_list_patches(arguments: argparse.Namespace) -> int:
    from walrus_p2p.client.quilt import patch_ids_json, read_index
    from walrus_p2p.types import blob_id_from_text

    quilt_id = blob_id_from_text(arguments.quilt_id)

    async def work(client: WalrusClient) -> int:
        entries = await read_index(client, quilt_id)
        listing = patch_ids_json(quilt_id, entries)
        if arguments.json:
            print_json(listing)
            return EXIT_OK
        for entry, item in zip(entries, listing, strict=True):
            data_size = entry.length  # header included; close enough for a listing
            tags = " ".join(f"{key}={value}" for key, value in sorted(entry.tags.items()))
            print(
                f"{item['quiltPatchId']}  {entry.identifier}  ~{data_size} bytes  {tags}".rstrip()
            )
        return EXIT_OK

    return run_client(arguments, work)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    store = commands.add_parser(
        "store-quilt", help="store many small files as one blob, each readable alone"
    )
    sources = store.add_mutually_exclusive_group(required=True)
    sources.add_argument(
        "--paths",
        nargs="+",
        metavar="PATH",
        help="files (named by their file name) or directories (every file under it, named by "
        "its path inside the directory)",
    )
    sources.add_argument(
        "--blobs",
        nargs="+",
        metavar="JSON",
        help='one JSON object per file: {"path": "a.png", "identifier": "a", "tags": {"k": "v"}}',
    )
    add_lifetime_options(store)
    store.add_argument("--permanent", action="store_true", help="cannot be deleted before its end")
    client_options(store)
    store.set_defaults(handler=_command_store_quilt)

    read = commands.add_parser("read-quilt", help="read files of a quilt into a directory")
    read.add_argument("--quilt-id", metavar="QUILT_ID")
    chosen = read.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--identifiers", nargs="+", metavar="IDENTIFIER")
    chosen.add_argument("--tag", nargs=2, metavar=("KEY", "VALUE"))
    chosen.add_argument("--quilt-patch-ids", nargs="+", metavar="PATCH_ID")
    read.add_argument("--out", required=True, metavar="DIR", help="where the files are written")
    client_options(read)
    read.set_defaults(handler=_command_read_quilt)

    listing = commands.add_parser("list-patches-in-quilt", help="the files of a quilt")
    listing.add_argument("quilt_id", metavar="QUILT_ID")
    client_options(listing)
    listing.set_defaults(handler=_command_list_patches)


__all__ = ["add_commands", "quilt_files", "safe_output_path"]
